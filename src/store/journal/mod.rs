//! The replication journal (DESIGN §6; docs/JOURNAL.md draws the tables and the wire format).
//!
//! **Outbound** (`outbound.rs`): one local log and a cursor per peer. Every local write
//! appends, in its own transaction, one [`JournalRecord`] per mailbox it touched: *which* keys
//! changed, not their values. A shipper asks for a [`JournalBatch`] after a peer's cursor; the
//! batch carries the **current** state of those keys (mailbox record or tombstone, messages or
//! tombstones at the UIDs, bodies of live messages), read in one snapshot, so an entry never
//! carries a stale body and a later expunge never leaves a body missing. A peer that lags more
//! than the bound overflows: its cursor jumps to the head and a Merkle session must cover what
//! it missed.
//!
//! **Inbound** (`inbound.rs`): a received batch is stored durably (JOURNAL_INBOUND, bodies kept
//! with each entry) before it is acknowledged; entries are applied later, one transaction each
//! (apply and removal together), as `model::decide_entry` decides with the clash rules
//! reconciliation uses. What cannot be decided from one entry is dropped and the sender is
//! owed a Merkle session. Applied entries are never journaled again (no echo).
//!
//! The batch and entry types are the model's ([`JournalBatch`], [`ShippedEntry`]); their
//! codec is `sync::journal_wire`'s.
//!
//! [`JournalBatch`]: crate::model::JournalBatch
//! [`ShippedEntry`]: crate::model::ShippedEntry

mod inbound;
mod outbound;

pub use inbound::{InboundApplied, InboundStats, APPLY_GROUP};

use super::error::StoreError;
use super::tx::decode;
use crate::model::MailboxGuid;
use redb::{ReadableTable, Table};
use serde::{Deserialize, Serialize};

/// How many entries a peer may lag before it overflows, until `journal_register_peers` says.
pub const DEFAULT_JOURNAL_BOUND: u64 = 100_000;

const HEAD_KEY: &str = "journal_head";
const BOUND_KEY: &str = "journal_bound";

type Bytes = &'static [u8];

/// One local write's footprint in one mailbox: the keys it changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// When the write committed (ms since the epoch): the age of unshipped changes.
    pub at_ms: u64,
    pub user: String,
    pub guid: MailboxGuid,
    /// The mailbox record or tombstone changed.
    pub mailbox: bool,
    /// UIDs whose message or tombstone changed, sorted, deduplicated (empty for a deletion:
    /// the mailbox tombstone stands for them).
    pub uids: Vec<u32>,
}

/// A peer's place in the local journal (table JOURNAL_PEERS).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PeerState {
    /// The last seq the peer acknowledged (or that an overflow or a Merkle session covered).
    cursor: u64,
    /// The peer missed entries: a Merkle session must cover them.
    overflowed: bool,
    /// The head when it last overflowed.
    overflowed_at: u64,
    /// How often it overflowed (for metrics).
    overflows: u64,
}

/// A peer's journal position, for /status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerJournal {
    /// The last seq the peer acknowledged.
    pub cursor: u64,
    /// The last seq handed out.
    pub head: u64,
    /// Entries not yet acknowledged (`head - cursor`).
    pub depth: u64,
    /// When the oldest unacknowledged change was written (ms since the epoch).
    pub oldest_unshipped_ms: Option<u64>,
    /// The peer overflowed and no Merkle session has covered it since.
    pub overflowed: bool,
    /// How many times the peer overflowed.
    pub overflows: u64,
}

/// What a sender has shipped here (table JOURNAL_SENDERS).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SenderState {
    /// The last seq received (and acknowledged).
    received: u64,
    /// Batches that began past `received + 1`.
    gaps: u64,
    /// A Merkle session with the sender is owed (a gap, or an entry that could not be applied).
    needs_check: bool,
    last_receive_ms: u64,
}

/// A sender's inbound journal, for /status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SenderJournal {
    pub received: u64,
    /// Entries stored and not applied yet.
    pub pending: u64,
    pub gaps: u64,
    pub last_receive_ms: u64,
}

fn meta_u64(
    meta: &impl ReadableTable<&'static str, Bytes>,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    Ok(meta
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map(u64::from_be_bytes))
}

fn peer_states(
    table: &impl ReadableTable<&'static str, Bytes>,
) -> Result<Vec<(String, PeerState)>, StoreError> {
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        out.push((k.value().to_string(), decode(v.value(), "a journal peer")?));
    }
    Ok(out)
}

fn peer_state(
    table: &impl ReadableTable<&'static str, Bytes>,
    peer: &str,
) -> Result<PeerState, StoreError> {
    match table.get(peer)? {
        Some(v) => decode(v.value(), "a journal peer"),
        None => Err(StoreError::Invalid(format!(
            "{peer:?} is not a registered journal peer"
        ))),
    }
}

/// Drops the entries every peer has (or no longer needs): those at or below the smallest
/// cursor; with no peer, all of them.
fn trim(
    journal: &mut Table<'_, u64, Bytes>,
    peers: &[(String, PeerState)],
) -> Result<(), StoreError> {
    let floor = peers
        .iter()
        .map(|(_, s)| s.cursor)
        .min()
        .unwrap_or(u64::MAX);
    journal.retain_in(..=floor, |_, _| false)?;
    Ok(())
}

/// JOURNAL_INBOUND key: sender 00 seq:u64be (node ids hold no 00 byte).
fn inbound_key(sender: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(sender.len() + 9);
    k.extend_from_slice(sender.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn split_inbound(key: &[u8]) -> Option<(String, u64)> {
    let nul = key.iter().position(|&b| b == 0)?;
    let sender = std::str::from_utf8(&key[..nul]).ok()?.to_string();
    let seq = u64::from_be_bytes(key.get(nul + 1..)?.try_into().ok()?);
    Some((sender, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_keys_sort_by_sender_then_seq_and_split_back() {
        let a = inbound_key("a", 2);
        let b = inbound_key("a", 10);
        let c = inbound_key("a.b", 1);
        assert!(a < b && b < c);
        assert_eq!(split_inbound(&b), Some(("a".to_string(), 10)));
        assert_eq!(split_inbound(b"no-nul"), None);
    }
}
