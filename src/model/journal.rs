//! What the replication journal ships: entries holding the current state of the keys a
//! peer's writes touched, grouped in batches, with their limits and the checks every
//! received batch must pass. Pure data; the postcard codec is `sync::journal_wire`'s, and
//! the same `ShippedEntry` encoding is what the store keeps in its inbound queue
//! (docs/JOURNAL.md draws both).

use super::{
    is_node_id, validate_user, MailboxGuid, MailboxRecord, MailboxSide, MailboxTombstone,
    MessageRecord, Tombstone,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// The first byte of every encoded batch; another version is refused.
pub const JOURNAL_WIRE_VERSION: u8 = 2;
/// At most this many entries in one batch (a decoder refuses more).
pub const MAX_BATCH_ENTRIES: usize = 100_000;
/// At most this many messages, tombstones and bodies in one entry.
pub const MAX_ENTRY_ITEMS: usize = 1_000_000;
/// At most this many bodies in one batch.
pub const MAX_BATCH_BODIES: usize = 1_000_000;

/// One shipped mailbox: the current state of the keys one or more journal records named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippedEntry {
    /// The largest seq of the records it stands for (records of one mailbox in one batch are
    /// shipped together).
    pub seq: u64,
    /// When the first of those records was written.
    pub at_ms: u64,
    pub user: String,
    pub guid: MailboxGuid,
    pub record: Option<MailboxRecord>,
    pub tombstone: Option<MailboxTombstone>,
    /// Live messages at the touched UIDs.
    pub messages: BTreeMap<u32, MessageRecord>,
    /// Expunge tombstones at the touched UIDs.
    pub expunged: BTreeMap<u32, Vec<Tombstone>>,
    /// Bodies of live messages: each body once per batch, in some entry of the batch.
    pub bodies: Vec<Vec<u8>>,
}

impl ShippedEntry {
    /// The UIDs the entry says something about (a live message or an expunge).
    pub fn touched_uids(&self) -> BTreeSet<u32> {
        self.messages
            .keys()
            .chain(self.expunged.keys())
            .copied()
            .collect()
    }

    /// The sender's side of the mailbox, as far as the entry shows it.
    pub fn side(&self) -> MailboxSide {
        MailboxSide {
            record: self.record.clone(),
            tombstone: self.tombstone.clone(),
            messages: self.messages.clone(),
            expunged: self.expunged.clone(),
        }
    }
}

/// What a shipper sends a peer: the entries after the peer's cursor, up to `last_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalBatch {
    /// [`JOURNAL_WIRE_VERSION`].
    pub version: u8,
    /// The sender's node id.
    pub from: String,
    /// The peer's cursor + 1. More than the receiver's last seq + 1 means entries were lost
    /// to an overflow (the receiver notes a gap).
    pub first_seq: u64,
    /// Acknowledging the batch acknowledges every seq up to here (`first_seq - 1` when empty).
    pub last_seq: u64,
    /// In seq order.
    pub entries: Vec<ShippedEntry>,
}

/// Why a batch breaks the rules. The messages are the wire decoder's, which reports these
/// same cases (`sync::journal_wire::JournalWireError`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("journal wire version {0} is not supported (this merkmail speaks version {JOURNAL_WIRE_VERSION})")]
    Version(u8),
    #[error("too many items in a journal batch: {0}")]
    TooMany(String),
    #[error("invalid journal batch: {0}")]
    Invalid(String),
}

impl JournalBatch {
    /// Checks what decoding alone cannot: version, sizes, seq order, names. The decoder runs
    /// it, and the store again before it stores anything.
    pub fn check(&self) -> Result<(), BatchError> {
        let invalid = |m: String| Err(BatchError::Invalid(m));
        if self.version != JOURNAL_WIRE_VERSION {
            return Err(BatchError::Version(self.version));
        }
        if !is_node_id(&self.from) {
            return invalid(format!("sender {:?} is not a node id", self.from));
        }
        if self.first_seq == 0 || self.last_seq < self.first_seq - 1 {
            return invalid(format!(
                "seqs {}..={} are not a range after 0",
                self.first_seq, self.last_seq
            ));
        }
        if self.entries.len() > MAX_BATCH_ENTRIES {
            return Err(BatchError::TooMany(format!(
                "{} entries (at most {MAX_BATCH_ENTRIES})",
                self.entries.len()
            )));
        }
        let mut previous = self.first_seq - 1;
        let mut bodies = 0usize;
        for e in &self.entries {
            if e.seq <= previous || e.seq > self.last_seq {
                return invalid(format!(
                    "entry seq {} out of order or outside {}..={}",
                    e.seq, self.first_seq, self.last_seq
                ));
            }
            previous = e.seq;
            let items = e.messages.len()
                + e.expunged.values().map(Vec::len).sum::<usize>()
                + e.bodies.len();
            if items > MAX_ENTRY_ITEMS {
                return Err(BatchError::TooMany(format!(
                    "{items} items in entry {} (at most {MAX_ENTRY_ITEMS})",
                    e.seq
                )));
            }
            bodies += e.bodies.len();
            if validate_user(&e.user).is_err() {
                return invalid(format!("entry {}: user {:?} is invalid", e.seq, e.user));
            }
            if e.record.as_ref().is_some_and(|r| r.guid != e.guid)
                || e.tombstone.as_ref().is_some_and(|t| t.guid != e.guid)
            {
                return invalid(format!(
                    "entry {}: a record under another GUID than {}",
                    e.seq, e.guid
                ));
            }
            if e.messages.contains_key(&0) || e.expunged.contains_key(&0) {
                return invalid(format!("entry {}: UID 0", e.seq));
            }
        }
        if bodies > MAX_BATCH_BODIES {
            return Err(BatchError::TooMany(format!(
                "{bodies} bodies (at most {MAX_BATCH_BODIES})"
            )));
        }
        Ok(())
    }
}
