//! The closed sets of words the status snapshot uses: a run's [`Outcome`], what [`Trigger`]ed a
//! check or session, which [`Direction`] a session runs and the replication [`Mode`]. Each
//! serializes as the lower-case word `/status` has always shown, so callers match variants
//! while the JSON stays the same.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a check or reconciliation run found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The roots matched: one round trip, nothing to do.
    Equal,
    /// Differences were found and repaired (bodies that had rotted here count too).
    Repaired,
    /// A side changed during the session; the next run picks it up.
    Unequal,
    /// The peer was in a session with this node, which covers this run's purpose.
    Skipped,
    /// The run failed; `RunView::error` says why. The default, so that a run nobody
    /// classified never reads as healthy.
    #[default]
    Error,
}

impl Outcome {
    /// The word `/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Equal => "equal",
            Outcome::Repaired => "repaired",
            Outcome::Unequal => "unequal",
            Outcome::Skipped => "skipped",
            Outcome::Error => "error",
        }
    }
}

/// Why a check or a session ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// The first check after the daemon started.
    Startup,
    /// The regular background check.
    #[default]
    Interval,
    /// A peer that was unreachable answered again.
    PeerBack,
    /// Its journal overflowed (or an entry needed the clash rules on both sides).
    Journal,
    /// Retrying after a failure.
    Retry,
    /// An operator asked for it. The daemon records none today (`POST /v1/sync/start` runs
    /// outside the checker); the word is kept so a snapshot that carries it still reads.
    Manual,
    /// The other node started the session (an incoming session).
    Peer,
}

impl Trigger {
    /// The word `/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Interval => "interval",
            Trigger::PeerBack => "peer-back",
            Trigger::Journal => "journal",
            Trigger::Retry => "retry",
            Trigger::Manual => "manual",
            Trigger::Peer => "peer",
        }
    }
}

/// Which node started a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This node started it.
    #[default]
    Outgoing,
    /// The peer started it.
    Incoming,
}

impl Direction {
    /// The word `/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outgoing => "outgoing",
            Direction::Incoming => "incoming",
        }
    }
}

/// How a write is acknowledged (DESIGN §6). Also the configuration's `mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Acknowledge the writer at once; the journal ships the change in the background.
    #[default]
    Async,
    /// Hold the writer until at least one peer has stored the change durably, or until
    /// `sync_timeout_ms` passes (then fall back to async and say so in /status).
    Sync,
}

impl Mode {
    /// The word `/status` shows and the configuration and `--mode` accept.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::Sync => "sync",
        }
    }

    /// The mode a configuration word names, if any.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "async" => Some(Mode::Async),
            "sync" => Some(Mode::Sync),
            _ => None,
        }
    }
}

/// Writes [`as_str`](Outcome::as_str) for each kind, so the renderings and log lines show the
/// same word as the JSON.
macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Outcome, Trigger, Direction, Mode);

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind's serde word is its `as_str`, and reads back to the same variant.
    fn round_trips<T>(all: &[T], word: impl Fn(T) -> &'static str)
    where
        T: Copy + fmt::Debug + PartialEq + Serialize + serde::de::DeserializeOwned,
    {
        for &v in all {
            let json = serde_json::to_string(&v).expect("serialize");
            assert_eq!(json, format!("\"{}\"", word(v)), "{v:?}");
            assert_eq!(serde_json::from_str::<T>(&json).expect("parse"), v);
        }
    }

    #[test]
    fn every_kind_serializes_as_its_word() {
        use Outcome::*;
        round_trips(&[Equal, Repaired, Unequal, Skipped, Error], Outcome::as_str);
        use Trigger::*;
        round_trips(
            &[Startup, Interval, PeerBack, Journal, Retry, Manual, Peer],
            Trigger::as_str,
        );
        round_trips(
            &[Direction::Outgoing, Direction::Incoming],
            Direction::as_str,
        );
        round_trips(&[Mode::Async, Mode::Sync], Mode::as_str);
    }

    #[test]
    fn modes_parse_their_words_only() {
        assert_eq!(Mode::parse("async"), Some(Mode::Async));
        assert_eq!(Mode::parse("sync"), Some(Mode::Sync));
        assert_eq!(Mode::parse("Sync"), None);
        assert_eq!(Trigger::PeerBack.to_string(), "peer-back");
    }

    #[test]
    fn an_unknown_word_is_refused() {
        assert!(serde_json::from_str::<Outcome>("\"fine\"").is_err());
    }
}
