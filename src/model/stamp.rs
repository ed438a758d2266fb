//! Hybrid logical clock stamps: the order every replica agrees on for last-writer-wins.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A change stamp: (milliseconds since the epoch, counter, node tag), compared in that order.
///
/// The node tag breaks ties between stamps minted on different servers in the same
/// millisecond, so every replica picks the same winner without talking to the others.
///
/// Decoding refuses a stamp past [`Stamp::MAX_MS`]: [`Stamp::to_bytes`] (hashes, index keys)
/// would saturate it while postcard keeps all 64 bits, so one stamp would be two (the fuzz
/// target `wire_request` found a peer's expunge whose origin indexed one way and was stored
/// another, docs/RELIABILITY.md §3). Stamps minted here never pass it (the clock clamps).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "RawStamp")]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, at most [`Stamp::MAX_MS`] (48 bits).
    pub ms: u64,
    pub counter: u16,
    pub node: u32,
}

/// A stamp as encoded, before [`Stamp`]'s bound is checked.
#[derive(Deserialize)]
struct RawStamp {
    ms: u64,
    counter: u16,
    node: u32,
}

impl TryFrom<RawStamp> for Stamp {
    type Error = String;

    fn try_from(raw: RawStamp) -> Result<Stamp, String> {
        if raw.ms > Stamp::MAX_MS {
            return Err(format!(
                "a stamp's milliseconds {} exceed 48 bits ({})",
                raw.ms,
                Stamp::MAX_MS
            ));
        }
        Ok(Stamp {
            ms: raw.ms,
            counter: raw.counter,
            node: raw.node,
        })
    }
}

impl Stamp {
    /// The largest millisecond value a stamp can carry (48 bits).
    pub const MAX_MS: u64 = (1 << 48) - 1;
    pub const ZERO: Stamp = Stamp {
        ms: 0,
        counter: 0,
        node: 0,
    };

    /// The 12-byte big-endian encoding used inside hashes and on the wire; byte order equals stamp order.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..6].copy_from_slice(&self.ms.min(Self::MAX_MS).to_be_bytes()[2..]);
        out[6..8].copy_from_slice(&self.counter.to_be_bytes());
        out[8..].copy_from_slice(&self.node.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: [u8; 12]) -> Stamp {
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&bytes[..6]);
        Stamp {
            ms: u64::from_be_bytes(ms),
            counter: u16::from_be_bytes([bytes[6], bytes[7]]),
            node: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{:08x}", self.ms, self.counter, self.node)
    }
}

/// How far ahead of this node's clock a peer's stamp may be, by default (`max_clock_skew`,
/// docs/CONFIG.md): ten minutes, far more than clocks kept by NTP drift apart, far less than
/// a clock set wrong by hand (a day, a year) or a hostile peer's (up to [`Stamp::MAX_MS`]).
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

/// A peer's stamp further ahead of this node's clock than the allowed skew: the change that
/// carries it is not applied, and the clock does not move (docs/PROTOCOL.md, "Clocks").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StampAhead {
    pub stamp: Stamp,
    /// This node's clock, ms since the epoch, when the stamp was met.
    pub now_ms: u64,
    pub max_skew_ms: u64,
}

impl StampAhead {
    /// How far ahead of this node's clock the stamp is, ms.
    pub fn ahead_ms(&self) -> u64 {
        self.stamp.ms.saturating_sub(self.now_ms)
    }
}

impl fmt::Display for StampAhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stamp {} is {} ms ahead of this node's clock (max_clock_skew {} ms)",
            self.stamp,
            self.ahead_ms(),
            self.max_skew_ms
        )
    }
}

/// The first of `stamps` more than `max_skew_ms` ahead of `now_ms`, if any. A stamp exactly
/// `max_skew_ms` ahead is allowed.
pub fn first_ahead(
    stamps: impl IntoIterator<Item = Stamp>,
    now_ms: u64,
    max_skew_ms: u64,
) -> Option<StampAhead> {
    let limit = now_ms.saturating_add(max_skew_ms);
    stamps
        .into_iter()
        .find(|s| s.ms > limit)
        .map(|stamp| StampAhead {
            stamp,
            now_ms,
            max_skew_ms,
        })
}

/// A hybrid logical clock. It never reads the wall clock itself: callers pass `now_ms`,
/// which keeps this module pure and lets tests drive time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hlc {
    last: Stamp,
    node: u32,
}

impl Hlc {
    pub fn new(node: u32, last: Stamp) -> Hlc {
        Hlc { last, node }
    }

    pub fn node(&self) -> u32 {
        self.node
    }

    /// The last stamp issued or observed; persisted so that a restart never goes backwards.
    pub fn last(&self) -> Stamp {
        self.last
    }

    /// A new stamp, strictly greater than every stamp issued or observed before — except at
    /// the very end of the 48-bit range ([`Stamp::MAX_MS`] with the counter spent, which only
    /// a peer's stamp can bring the clock to), where it stays: a stamp past it could not be
    /// decoded again.
    pub fn tick(&mut self, now_ms: u64) -> Stamp {
        let now_ms = now_ms.min(Stamp::MAX_MS);
        let (ms, counter) = if now_ms > self.last.ms {
            (now_ms, 0)
        } else if self.last.counter == u16::MAX && self.last.ms >= Stamp::MAX_MS {
            (Stamp::MAX_MS, u16::MAX)
        } else if self.last.counter == u16::MAX {
            // The counter is spent for this millisecond: borrow the next one.
            (self.last.ms + 1, 0)
        } else {
            (self.last.ms, self.last.counter + 1)
        };
        self.last = Stamp {
            ms,
            counter,
            node: self.node,
        };
        self.last
    }

    /// Moves the clock past a stamp received from a peer, so later local changes win over it.
    pub fn observe(&mut self, seen: Stamp) {
        if (seen.ms, seen.counter) > (self.last.ms, self.last.counter) {
            self.last = Stamp {
                ms: seen.ms.min(Stamp::MAX_MS),
                counter: seen.counter,
                node: self.node,
            };
        }
    }
}

/// A stamp at `ms` from node 1: the model's unit tests build their histories from these.
#[cfg(test)]
pub(crate) fn test_stamp(ms: u64) -> Stamp {
    Stamp {
        ms,
        counter: 0,
        node: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tick_is_strictly_increasing_even_when_the_clock_stalls_or_goes_back() {
        let mut hlc = Hlc::new(7, Stamp::ZERO);
        let a = hlc.tick(1000);
        let b = hlc.tick(1000);
        let c = hlc.tick(500);
        let d = hlc.tick(2000);
        assert!(a < b && b < c && c < d);
        assert_eq!(
            d,
            Stamp {
                ms: 2000,
                counter: 0,
                node: 7
            }
        );
    }

    #[test]
    fn observe_moves_past_a_remote_stamp() {
        let mut hlc = Hlc::new(1, Stamp::ZERO);
        hlc.observe(Stamp {
            ms: 5000,
            counter: 3,
            node: 9,
        });
        let next = hlc.tick(10);
        assert!(
            next > Stamp {
                ms: 5000,
                counter: 3,
                node: 9
            }
        );
    }

    #[test]
    fn counter_overflow_borrows_the_next_millisecond() {
        let mut hlc = Hlc::new(
            1,
            Stamp {
                ms: 10,
                counter: u16::MAX,
                node: 1,
            },
        );
        assert_eq!(
            hlc.tick(10),
            Stamp {
                ms: 11,
                counter: 0,
                node: 1
            }
        );
    }

    #[test]
    fn a_stamp_past_48_bits_does_not_decode_and_the_clock_never_mints_one() {
        let at = |ms| Stamp {
            ms,
            counter: 7,
            node: 3,
        };
        let last = postcard::to_allocvec(&at(Stamp::MAX_MS)).expect("encode");
        assert_eq!(
            postcard::from_bytes::<Stamp>(&last).expect("decodes"),
            at(Stamp::MAX_MS)
        );
        for ms in [Stamp::MAX_MS + 1, u64::MAX] {
            let bytes = postcard::to_allocvec(&at(ms)).expect("encode");
            assert!(postcard::from_bytes::<Stamp>(&bytes).is_err(), "{ms}");
        }
        let mut hlc = Hlc::new(1, Stamp::ZERO);
        hlc.observe(Stamp {
            ms: u64::MAX,
            counter: u16::MAX,
            node: 9,
        });
        for _ in 0..3 {
            assert!(hlc.tick(u64::MAX).ms <= Stamp::MAX_MS);
        }
    }

    #[test]
    fn a_stamp_may_be_ahead_by_the_skew_and_no_more() {
        let at = |ms| Stamp {
            ms,
            counter: 0,
            node: 2,
        };
        let (now, max) = (1_000_000, 600_000);
        let past = [at(0), at(now), at(now + max)];
        assert_eq!(
            first_ahead(past, now, max),
            None,
            "behind, now, exactly at the bound"
        );
        let ahead = first_ahead([at(5), at(now + max + 1), at(Stamp::MAX_MS)], now, max)
            .expect("one past the bound");
        assert_eq!(ahead.stamp, at(now + max + 1), "the first one past it");
        assert_eq!(ahead.ahead_ms(), max + 1);
        let poisoned = first_ahead([at(Stamp::MAX_MS)], now, max).expect("year 10889");
        assert_eq!(poisoned.ahead_ms(), Stamp::MAX_MS - now);
        assert!(poisoned.to_string().contains("max_clock_skew 600000 ms"));
        // A clock near the end of time saturates rather than wrapping.
        assert_eq!(first_ahead([at(Stamp::MAX_MS)], u64::MAX, max), None);
    }

    proptest! {
        #[test]
        fn byte_order_equals_stamp_order(a in (0..Stamp::MAX_MS, any::<u16>(), any::<u32>()),
                                         b in (0..Stamp::MAX_MS, any::<u16>(), any::<u32>())) {
            let a = Stamp { ms: a.0, counter: a.1, node: a.2 };
            let b = Stamp { ms: b.0, counter: b.1, node: b.2 };
            prop_assert_eq!(a.cmp(&b), a.to_bytes().cmp(&b.to_bytes()));
            prop_assert_eq!(Stamp::from_bytes(a.to_bytes()), a);
        }
    }
}
