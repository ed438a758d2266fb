//! The replication journal (DESIGN §6; docs/JOURNAL.md draws the tables and the wire format).
//!
//! **Outbound**: one local log and a cursor per peer. Every local write appends, in its own
//! transaction, one [`JournalRecord`] per mailbox it touched: *which* keys changed, not their
//! values. A shipper asks for a [`JournalBatch`] after a peer's cursor; the batch carries the
//! **current** state of those keys (mailbox record or tombstone, messages or tombstones at the
//! UIDs, bodies of live messages), read in one snapshot, so an entry never carries a stale body
//! and a later expunge never leaves a body missing. A peer that lags more than the bound
//! overflows: its cursor jumps to the head and a Merkle session must cover what it missed.
//!
//! **Inbound**: a received batch is stored durably (JOURNAL_INBOUND, bodies kept with each
//! entry) before it is acknowledged; entries are applied later, one transaction each (apply
//! and removal together), with the clash rules reconciliation uses (`model::merge_mailbox`,
//! `sync::plan::changes_for`). What cannot be decided from one entry is dropped and the sender
//! is owed a Merkle session. Applied entries are never journaled again (no echo).

use super::error::StoreError;
use super::keys;
use super::tables::{
    JOURNAL, JOURNAL_INBOUND, JOURNAL_PEERS, JOURNAL_SENDERS, MAILBOXES, MAILBOX_TOMBSTONES,
    MESSAGES, META, TOMBSTONES,
};
use super::tx::{decode, decode_message, encode, Tx};
use super::{validate_node_id, Store};
use crate::model::{
    merge_mailbox, validate_user, Digest, MailboxGuid, MailboxOutcome, MailboxRecord, MailboxSide,
    MailboxTombstone, MessageRecord, Tombstone,
};
use crate::sync::plan::changes_for;
use redb::{ReadableTable, ReadableTableMetadata, Table};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// The first byte of every encoded batch; another version is refused.
pub const JOURNAL_WIRE_VERSION: u8 = 2;
/// How many entries a peer may lag before it overflows, until `journal_register_peers` says.
pub const DEFAULT_JOURNAL_BOUND: u64 = 100_000;
/// At most this many entries in one batch (a decoder refuses more).
pub const MAX_BATCH_ENTRIES: usize = 100_000;
/// At most this many messages, tombstones and bodies in one entry.
pub const MAX_ENTRY_ITEMS: usize = 1_000_000;
/// At most this many bodies in one batch.
pub const MAX_BATCH_BODIES: usize = 1_000_000;
/// Inbound entries applied per transaction (one commit for the group). Each entry touches a
/// few pages of records and tree; a commit writes them all, plus the B-tree and tree levels
/// above them, which a larger group shares. 512 (was 64) is not measured against 64 on its
/// own; with 512, applying 4 000 scattered flag entries took 2.1–3.5 s here
/// (docs/PERFORMANCE.md, "Daemon", session 3).
pub const APPLY_GROUP: usize = 512;

const HEAD_KEY: &str = "journal_head";
const BOUND_KEY: &str = "journal_bound";
/// Rough encoded sizes, for the batch's byte budget (bodies are counted exactly).
const ENTRY_COST: usize = 160;
const MESSAGE_COST: usize = 140;
const TOMBSTONE_COST: usize = 50;

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

/// Counts of what applying inbound entries did (for /status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboundStats {
    /// Messages added (copied) here.
    pub copied: u64,
    /// Live messages expunged here.
    pub expunged: u64,
    pub flag_updates: u64,
    /// Mailboxes created, renamed, resubscribed, deleted, or whose UIDNEXT moved.
    pub mailboxes_changed: u64,
    /// Entries the clash rules could not settle alone (UIDVALIDITY differs, a name held by
    /// another GUID, a deleted mailbox brought back, an outcome the sender must adopt too).
    pub clashes: u64,
    /// Entries that could not be applied at all (malformed, a body missing or wrong).
    pub invalid: u64,
}

/// What one call of [`Store::journal_apply_inbound`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboundApplied {
    /// Entries applied.
    pub applied: u64,
    /// Entries dropped (counted in `stats.clashes` or `stats.invalid`).
    pub dropped: u64,
    /// Entries still waiting.
    pub remaining: u64,
    /// Senders that need a Merkle session (each reported once).
    pub check_with: BTreeSet<String>,
    pub stats: InboundStats,
}

/// Why a batch could not be decoded. The receiver answers 400 and stores nothing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JournalWireError {
    #[error("malformed journal batch: {0}")]
    Malformed(String),
    #[error("journal wire version {0} is not supported (this merkmail speaks version {JOURNAL_WIRE_VERSION})")]
    Version(u8),
    #[error("too many items in a journal batch: {0}")]
    TooMany(String),
    #[error("invalid journal batch: {0}")]
    Invalid(String),
}

pub fn encode_batch(batch: &JournalBatch) -> Vec<u8> {
    // Serialising plain data cannot fail; an empty body would be refused loudly.
    postcard::to_allocvec(batch).unwrap_or_default()
}

/// Decodes and checks a batch: version, sizes, seq order, names. Never panics on any input;
/// allocation follows the bytes actually present (postcard reads lengths cautiously).
pub fn decode_batch(bytes: &[u8]) -> Result<JournalBatch, JournalWireError> {
    match bytes.first() {
        None => return Err(JournalWireError::Malformed("empty body".into())),
        Some(&v) if v != JOURNAL_WIRE_VERSION => return Err(JournalWireError::Version(v)),
        Some(_) => {}
    }
    let (batch, rest): (JournalBatch, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| JournalWireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(JournalWireError::Malformed(format!(
            "{} bytes after the batch",
            rest.len()
        )));
    }
    check_batch(&batch)?;
    Ok(batch)
}

fn check_batch(batch: &JournalBatch) -> Result<(), JournalWireError> {
    let invalid = |m: String| Err(JournalWireError::Invalid(m));
    if batch.version != JOURNAL_WIRE_VERSION {
        return Err(JournalWireError::Version(batch.version));
    }
    if validate_node_id(&batch.from).is_err() {
        return invalid(format!("sender {:?} is not a node id", batch.from));
    }
    if batch.first_seq == 0 || batch.last_seq < batch.first_seq - 1 {
        return invalid(format!(
            "seqs {}..={} are not a range after 0",
            batch.first_seq, batch.last_seq
        ));
    }
    if batch.entries.len() > MAX_BATCH_ENTRIES {
        return Err(JournalWireError::TooMany(format!(
            "{} entries (at most {MAX_BATCH_ENTRIES})",
            batch.entries.len()
        )));
    }
    let mut previous = batch.first_seq - 1;
    let mut bodies = 0usize;
    for e in &batch.entries {
        if e.seq <= previous || e.seq > batch.last_seq {
            return invalid(format!(
                "entry seq {} out of order or outside {}..={}",
                e.seq, batch.first_seq, batch.last_seq
            ));
        }
        previous = e.seq;
        let items =
            e.messages.len() + e.expunged.values().map(Vec::len).sum::<usize>() + e.bodies.len();
        if items > MAX_ENTRY_ITEMS {
            return Err(JournalWireError::TooMany(format!(
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
        return Err(JournalWireError::TooMany(format!(
            "{bodies} bodies (at most {MAX_BATCH_BODIES})"
        )));
    }
    Ok(())
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

/// Reads a mailbox's record and tombstone into `side`.
fn read_mailbox(
    mailboxes: &impl ReadableTable<Bytes, Bytes>,
    tombstones: &impl ReadableTable<Bytes, Bytes>,
    user: &str,
    guid: MailboxGuid,
    side: &mut MailboxSide,
) -> Result<(), StoreError> {
    let key = keys::mailbox(user, guid);
    if let Some(v) = mailboxes.get(key.as_slice())? {
        side.record = Some(decode(v.value(), "a mailbox")?);
    }
    if let Some(v) = tombstones.get(key.as_slice())? {
        side.tombstone = Some(decode(v.value(), "a mailbox tombstone")?);
    }
    Ok(())
}

/// Reads the message and the expunge tombstones at one UID into `side`.
fn read_uid(
    messages: &impl ReadableTable<Bytes, Bytes>,
    tombstones: &impl ReadableTable<Bytes, Bytes>,
    user: &str,
    guid: MailboxGuid,
    uid: u32,
    side: &mut MailboxSide,
) -> Result<(), StoreError> {
    if let Some(v) = messages.get(keys::message(user, guid, uid).as_slice())? {
        side.messages.insert(uid, decode_message(v.value())?.1);
    }
    let (start, end) = keys::tombstone_range(user, guid, uid, uid);
    for item in tombstones.range(start.as_slice()..=end.as_slice())? {
        let (_, v) = item?;
        side.expunged
            .entry(uid)
            .or_default()
            .push(decode(v.value(), "a tombstone")?);
    }
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

/// Whether the two agree on everything the tree hashes (not `last_change`, not tombstones,
/// not a message's unhashed metadata).
fn agrees(outcome: &MailboxOutcome, incoming: &MailboxSide) -> bool {
    let same_record = match (&outcome.record, &incoming.record) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            (
                a.guid,
                &a.name,
                a.uidvalidity,
                a.uidnext,
                a.subscribed,
                a.name_stamp,
                a.subscribed_stamp,
            ) == (
                b.guid,
                &b.name,
                b.uidvalidity,
                b.uidnext,
                b.subscribed,
                b.name_stamp,
                b.subscribed_stamp,
            )
        }
        _ => false,
    };
    same_record
        && outcome.messages.len() == incoming.messages.len()
        && outcome.messages.iter().all(|(uid, m)| {
            incoming
                .messages
                .get(uid)
                .is_some_and(|x| x.digest == m.digest && x.flags == m.flags)
        })
}

/// What to do with one inbound entry.
enum Decision {
    Apply(Vec<super::Change>, crate::sync::plan::ChangeCounts),
    /// The sender needs a Merkle session; the entry is dropped.
    Clash(&'static str),
}

impl Tx<'_> {
    /// Appends one record per touched mailbox (a local write's transaction, at its end).
    /// Peers that would lag past the bound overflow; with no peer, nothing is written.
    pub(crate) fn write_journal(&mut self) -> Result<(), StoreError> {
        if !self.journal || self.touched.is_empty() {
            return Ok(());
        }
        let touched = std::mem::take(&mut self.touched);
        let txn = self.txn;
        let mut peers = txn.open_table(JOURNAL_PEERS)?;
        let mut states = peer_states(&peers)?;
        if states.is_empty() {
            return Ok(());
        }
        let mut head = meta_u64(&self.meta, HEAD_KEY)?.unwrap_or(0);
        let bound = meta_u64(&self.meta, BOUND_KEY)?
            .unwrap_or(DEFAULT_JOURNAL_BOUND)
            .max(1);
        let mut journal = txn.open_table(JOURNAL)?;
        let at_ms = self.now_ms();
        for ((user, guid), t) in touched {
            head += 1;
            let record = JournalRecord {
                at_ms,
                user,
                guid,
                mailbox: t.mailbox,
                uids: t.uids.into_iter().collect(),
            };
            journal.insert(head, encode(&record)?.as_slice())?;
        }
        self.meta.insert(HEAD_KEY, head.to_be_bytes().as_slice())?;
        let mut moved = false;
        for (name, st) in &mut states {
            if head.saturating_sub(st.cursor) > bound {
                // Said once per overflow; while the peer stays away it overflows again every
                // `bound` writes, which is only worth a debug line.
                if st.overflowed {
                    tracing::debug!(peer = %name, head, "journal overflowed its bound again");
                } else {
                    tracing::warn!(peer = %name, head, "journal overflowed its bound; a Merkle session must cover it");
                }
                st.overflowed = true;
                st.overflowed_at = head;
                st.overflows += 1;
                st.cursor = head;
                peers.insert(name.as_str(), encode(st)?.as_slice())?;
                moved = true;
            }
        }
        if moved {
            trim(&mut journal, &states)?;
        }
        Ok(())
    }

    /// The local side of a mailbox at some UIDs, read inside this transaction.
    fn side_at(
        &self,
        user: &str,
        guid: MailboxGuid,
        uids: &BTreeSet<u32>,
    ) -> Result<MailboxSide, StoreError> {
        let mut side = MailboxSide::default();
        read_mailbox(
            &self.mailboxes,
            &self.mailbox_tombstones,
            user,
            guid,
            &mut side,
        )?;
        for uid in uids {
            read_uid(
                &self.messages,
                &self.tombstones,
                user,
                guid,
                *uid,
                &mut side,
            )?;
        }
        Ok(side)
    }

    /// Marks a sender as owed a Merkle session.
    fn owe_check(&mut self, sender: &str) -> Result<(), StoreError> {
        let mut senders = self.txn.open_table(JOURNAL_SENDERS)?;
        let mut st: SenderState = match senders.get(sender)? {
            Some(v) => decode(v.value(), "a journal sender")?,
            None => SenderState::default(),
        };
        st.needs_check = true;
        senders.insert(sender, encode(&st)?.as_slice())?;
        Ok(())
    }

    /// Decides one entry with the clash rules: the changes that take this store to the merge
    /// of its state and the sender's, or why the sender needs a Merkle session instead.
    fn decide(
        &self,
        inbound: &impl ReadableTable<Bytes, Bytes>,
        sender: &str,
        entry: &ShippedEntry,
    ) -> Result<Decision, StoreError> {
        let uids: BTreeSet<u32> = entry
            .messages
            .keys()
            .chain(entry.expunged.keys())
            .copied()
            .collect();
        let local = self.side_at(&entry.user, entry.guid, &uids)?;
        let incoming = MailboxSide {
            record: entry.record.clone(),
            tombstone: entry.tombstone.clone(),
            messages: entry.messages.clone(),
            expunged: entry.expunged.clone(),
        };
        if let (Some(l), Some(r)) = (&local.record, &incoming.record) {
            if l.uidvalidity != r.uidvalidity {
                // The rule needs both whole mailboxes.
                return Ok(Decision::Clash("UIDVALIDITY differs"));
            }
        }
        if local.record.is_none() && local.tombstone.is_some() && incoming.record.is_some() {
            // Deleted here, live there: either the delete wins (the sender must change) or the
            // mailbox comes back, which needs it whole.
            return Ok(Decision::Clash(
                "a mailbox deleted here is live on the sender",
            ));
        }
        let outcome = merge_mailbox(&local, &incoming);
        if outcome.forward.is_some() {
            // Merged into another mailbox: its messages move there, which needs both whole.
            return Ok(Decision::Clash(
                "a mailbox merged into another is live here",
            ));
        }
        let moved_away = local.messages.iter().any(|(uid, m)| {
            !outcome.messages.contains_key(uid)
                && incoming.expunged.get(uid).is_some_and(|ts| {
                    ts.iter()
                        .any(|t| t.digest == m.digest && t.origin.is_none())
                })
        });
        if moved_away {
            // A clash moved the message up on the sender; where to, this entry does not say.
            return Ok(Decision::Clash("a message moved away on the sender"));
        }
        if !agrees(&outcome, &incoming) {
            return Ok(Decision::Clash("the merge changes the sender's state too"));
        }
        if let Some(r) = &outcome.record {
            for m in self.user_mailboxes(&entry.user)? {
                if m.guid != entry.guid
                    && m.name == r.name
                    && !pending_for(inbound, sender, &entry.user, m.guid)?
                {
                    // Unless an entry still queued from the same sender moves the other
                    // mailbox away (a swap of names shipped as current states), two GUIDs
                    // share a name: the merge rule needs both mailboxes whole.
                    return Ok(Decision::Clash("another mailbox holds the name"));
                }
            }
        }
        let bodies: BTreeMap<Digest, &Vec<u8>> =
            entry.bodies.iter().map(|b| (Digest::of(b), b)).collect();
        let (changes, counts) = changes_for(&entry.user, &local, &outcome, |m| {
            bodies.get(&m.digest).map(|b| (*b).clone())
        });
        Ok(Decision::Apply(changes, counts))
    }
}

/// Whether an entry from `sender` about (user, guid) is still queued.
fn pending_for(
    inbound: &impl ReadableTable<Bytes, Bytes>,
    sender: &str,
    user: &str,
    guid: MailboxGuid,
) -> Result<bool, StoreError> {
    let (start, end) = (inbound_key(sender, 0), inbound_key(sender, u64::MAX));
    for item in inbound.range(start.as_slice()..=end.as_slice())? {
        let (_, v) = item?;
        // The fields up to the GUID, without decoding the rest (bodies).
        if let Ok(((_, _, u, g), _)) =
            postcard::take_from_bytes::<(u64, u64, String, MailboxGuid)>(v.value())
        {
            if u == user && g == guid {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// What became of one queued entry.
enum Verdict {
    /// Someone else took it meanwhile.
    Gone,
    Applied(crate::sync::plan::ChangeCounts),
    /// Left to a Merkle session with the sender.
    Clash,
}

/// Applies (or drops, for a Merkle session) the queued entries under `keys`, in order, each
/// removed from the queue in this same transaction. Any error aborts them all.
fn apply_keys(tx: &mut Tx<'_>, keys: &[Vec<u8>]) -> Result<Vec<Verdict>, StoreError> {
    let txn = tx.txn;
    let mut inbound = txn.open_table(JOURNAL_INBOUND)?;
    let mut verdicts = Vec::with_capacity(keys.len());
    for key in keys {
        let sender = split_inbound(key).map(|(s, _)| s).unwrap_or_default();
        let entry: Option<ShippedEntry> = match inbound.remove(key.as_slice())? {
            Some(v) => Some(decode(v.value(), "a journal entry")?),
            None => None,
        };
        let Some(entry) = entry else {
            verdicts.push(Verdict::Gone);
            continue;
        };
        validate_user(&entry.user)?;
        match tx.decide(&inbound, &sender, &entry)? {
            Decision::Apply(changes, counts) => {
                let before = tx.fixes;
                for change in &changes {
                    tx.apply_change(change)?;
                }
                if tx.fixes != before {
                    // A copy a writer expunged, or one held at another UID: the sender holds
                    // it still, and only a Merkle session tells it.
                    tracing::info!(sender = %sender, user = %entry.user, guid = %entry.guid, "journal entry held a message this node knows expunged or elsewhere");
                    tx.owe_check(&sender)?;
                }
                verdicts.push(Verdict::Applied(counts));
            }
            Decision::Clash(why) => {
                tracing::info!(sender = %sender, user = %entry.user, guid = %entry.guid, why, "journal entry left to a Merkle session");
                tx.owe_check(&sender)?;
                verdicts.push(Verdict::Clash);
            }
        }
    }
    Ok(verdicts)
}

fn tally(out: &mut InboundApplied, verdicts: &[Verdict]) {
    for v in verdicts {
        match v {
            Verdict::Gone => {}
            Verdict::Applied(counts) => {
                out.applied += 1;
                out.stats.copied += counts.added;
                out.stats.expunged += counts.expunged;
                out.stats.flag_updates += counts.flag_updates;
                out.stats.mailboxes_changed += u64::from(counts.mailbox_changed);
            }
            Verdict::Clash => {
                out.dropped += 1;
                out.stats.clashes += 1;
            }
        }
    }
}

/// Errors that come from an entry rather than from storage: the entry is dropped.
fn is_entry_error(e: &StoreError) -> bool {
    !matches!(
        e,
        StoreError::Db(_) | StoreError::Io { .. } | StoreError::Locked(_)
    )
}

impl Store {
    /// Sets the peers the journal ships to and the bound. A new peer starts at the head (it
    /// begins with a Merkle check anyway); a peer no longer named is forgotten, and entries no
    /// peer still needs are dropped.
    pub fn journal_register_peers(&self, peers: &[String], bound: u64) -> Result<(), StoreError> {
        if let Some(bad) = peers.iter().find(|p| p.is_empty() || p.len() > 2048) {
            return Err(StoreError::Invalid(format!(
                "journal peer name {bad:?} must be 1 to 2048 bytes"
            )));
        }
        self.write_replicated(|tx| {
            let txn = tx.txn;
            tx.meta
                .insert(BOUND_KEY, bound.max(1).to_be_bytes().as_slice())?;
            let head = meta_u64(&tx.meta, HEAD_KEY)?.unwrap_or(0);
            let mut table = txn.open_table(JOURNAL_PEERS)?;
            let wanted: BTreeSet<&str> = peers.iter().map(String::as_str).collect();
            for (name, _) in peer_states(&table)? {
                if !wanted.contains(name.as_str()) {
                    table.remove(name.as_str())?;
                }
            }
            for name in wanted {
                if table.get(name)?.is_none() {
                    let st = PeerState {
                        cursor: head,
                        ..Default::default()
                    };
                    table.insert(name, encode(&st)?.as_slice())?;
                }
            }
            let states = peer_states(&table)?;
            trim(&mut txn.open_table(JOURNAL)?, &states)
        })
    }

    /// The last seq handed out (0 before the first journaled write).
    pub fn journal_head(&self) -> Result<u64, StoreError> {
        let txn = self.read_txn()?;
        Ok(meta_u64(&txn.open_table(META)?, HEAD_KEY)?.unwrap_or(0))
    }

    /// The entries after `peer`'s cursor, with the current state of the keys they name, read
    /// in one snapshot: up to `max_entries` journal records (and `MAX_BATCH_ENTRIES`), and no
    /// more once the batch passes about `max_bytes` (always at least one record). Records of
    /// one mailbox are shipped as one entry. Nothing changes until [`Store::journal_ack`].
    pub fn journal_batch(
        &self,
        peer: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<JournalBatch, StoreError> {
        let txn = self.read_txn()?;
        let state = peer_state(&txn.open_table(JOURNAL_PEERS)?, peer)?;
        let journal = txn.open_table(JOURNAL)?;
        let mailboxes = txn.open_table(MAILBOXES)?;
        let mailbox_tombstones = txn.open_table(MAILBOX_TOMBSTONES)?;
        let messages = txn.open_table(MESSAGES)?;
        let tombstones = txn.open_table(TOMBSTONES)?;
        let max_entries = max_entries.clamp(1, MAX_BATCH_ENTRIES);
        let mut entries: Vec<ShippedEntry> = Vec::new();
        let mut index: BTreeMap<(String, MailboxGuid), (usize, BTreeSet<u32>)> = BTreeMap::new();
        let mut shipped: BTreeSet<Digest> = BTreeSet::new();
        let (mut bytes, mut records, mut last) = (0usize, 0usize, state.cursor);
        for item in journal.range(state.cursor.saturating_add(1)..)? {
            if records >= max_entries || (records > 0 && bytes >= max_bytes) {
                break;
            }
            let (k, v) = item?;
            let seq = k.value();
            let rec: JournalRecord = decode(v.value(), "a journal record")?;
            let key = (rec.user.clone(), rec.guid);
            if !index.contains_key(&key) {
                let mut side = MailboxSide::default();
                read_mailbox(
                    &mailboxes,
                    &mailbox_tombstones,
                    &rec.user,
                    rec.guid,
                    &mut side,
                )?;
                bytes += ENTRY_COST + rec.user.len();
                index.insert(key.clone(), (entries.len(), BTreeSet::new()));
                entries.push(ShippedEntry {
                    seq,
                    at_ms: rec.at_ms,
                    user: rec.user.clone(),
                    guid: rec.guid,
                    record: side.record,
                    tombstone: side.tombstone,
                    messages: BTreeMap::new(),
                    expunged: BTreeMap::new(),
                    bodies: Vec::new(),
                });
            }
            let Some((i, covered)) = index.get_mut(&key) else {
                continue;
            };
            let entry = &mut entries[*i];
            entry.seq = seq;
            for uid in rec.uids {
                if !covered.insert(uid) {
                    continue;
                }
                let mut side = MailboxSide::default();
                read_uid(&messages, &tombstones, &rec.user, rec.guid, uid, &mut side)?;
                for (uid, m) in side.messages {
                    if shipped.insert(m.digest) {
                        let body = self.bodies.read(&txn, &m.digest)?.ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "body {} is referenced but not stored",
                                m.digest
                            ))
                        })?;
                        bytes += body.len();
                        entry.bodies.push(body);
                    }
                    bytes += MESSAGE_COST;
                    entry.messages.insert(uid, m);
                }
                for (uid, ts) in side.expunged {
                    bytes += TOMBSTONE_COST * ts.len();
                    entry.expunged.insert(uid, ts);
                }
            }
            records += 1;
            last = seq;
        }
        entries.sort_by_key(|e| e.seq);
        Ok(JournalBatch {
            version: JOURNAL_WIRE_VERSION,
            from: self.node_id.clone(),
            first_seq: state.cursor.saturating_add(1),
            last_seq: last,
            entries,
        })
    }

    /// The peer durably stored everything up to `upto`: its cursor moves there (never back,
    /// never past the head) and entries no peer needs are dropped.
    pub fn journal_ack(&self, peer: &str, upto: u64) -> Result<(), StoreError> {
        self.write_replicated(|tx| {
            let txn = tx.txn;
            let head = meta_u64(&tx.meta, HEAD_KEY)?.unwrap_or(0);
            let mut table = txn.open_table(JOURNAL_PEERS)?;
            let mut st = peer_state(&table, peer)?;
            let upto = upto.min(head);
            if upto <= st.cursor {
                return Ok(());
            }
            st.cursor = upto;
            table.insert(peer, encode(&st)?.as_slice())?;
            let states = peer_states(&table)?;
            trim(&mut txn.open_table(JOURNAL)?, &states)
        })
    }

    /// A Merkle session with `peer` that started when the head was `head_at_start` succeeded:
    /// it covered every change up to there. The cursor moves up to it, and the overflow flag
    /// clears unless the peer overflowed again after the session started.
    pub fn journal_merkle_done(&self, peer: &str, head_at_start: u64) -> Result<(), StoreError> {
        self.write_replicated(|tx| {
            let txn = tx.txn;
            let head = meta_u64(&tx.meta, HEAD_KEY)?.unwrap_or(0);
            let mut table = txn.open_table(JOURNAL_PEERS)?;
            let mut st = peer_state(&table, peer)?;
            st.cursor = st.cursor.max(head_at_start.min(head));
            if st.overflowed && st.overflowed_at <= head_at_start {
                st.overflowed = false;
            }
            table.insert(peer, encode(&st)?.as_slice())?;
            let states = peer_states(&table)?;
            trim(&mut txn.open_table(JOURNAL)?, &states)
        })
    }

    /// A peer's journal position.
    pub fn journal_peer(&self, peer: &str) -> Result<PeerJournal, StoreError> {
        let txn = self.read_txn()?;
        let st = peer_state(&txn.open_table(JOURNAL_PEERS)?, peer)?;
        let head = meta_u64(&txn.open_table(META)?, HEAD_KEY)?.unwrap_or(0);
        let journal = txn.open_table(JOURNAL)?;
        let oldest = match journal.range(st.cursor.saturating_add(1)..)?.next() {
            Some(item) => {
                let (_, v) = item?;
                Some(decode::<JournalRecord>(v.value(), "a journal record")?.at_ms)
            }
            None => None,
        };
        Ok(PeerJournal {
            cursor: st.cursor,
            head,
            depth: head.saturating_sub(st.cursor),
            oldest_unshipped_ms: oldest,
            overflowed: st.overflowed,
            overflows: st.overflows,
        })
    }

    /// Up to `max` journal records after `after`, in seq order (inspection and tests).
    pub fn journal_records(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, JournalRecord)>, StoreError> {
        let txn = self.read_txn()?;
        let journal = txn.open_table(JOURNAL)?;
        let mut out = Vec::new();
        for item in journal.range(after.saturating_add(1)..)?.take(max) {
            let (k, v) = item?;
            out.push((k.value(), decode(v.value(), "a journal record")?));
        }
        Ok(out)
    }

    /// Every registered peer's position, in name order.
    pub fn journal_peers(&self) -> Result<Vec<(String, PeerJournal)>, StoreError> {
        let names: Vec<String> = {
            let txn = self.read_txn()?;
            let table = txn.open_table(JOURNAL_PEERS)?;
            peer_states(&table)?.into_iter().map(|(n, _)| n).collect()
        };
        names
            .into_iter()
            .map(|n| self.journal_peer(&n).map(|p| (n, p)))
            .collect()
    }

    /// Every sender that shipped here, with what it shipped and what waits to be applied.
    pub fn journal_senders(&self) -> Result<Vec<(String, SenderJournal)>, StoreError> {
        let txn = self.read_txn()?;
        let senders = txn.open_table(JOURNAL_SENDERS)?;
        let inbound = txn.open_table(JOURNAL_INBOUND)?;
        let mut out = Vec::new();
        for item in senders.iter()? {
            let (k, v) = item?;
            let name = k.value().to_string();
            let st: SenderState = decode(v.value(), "a journal sender")?;
            let (start, end) = (inbound_key(&name, 0), inbound_key(&name, u64::MAX));
            let pending = inbound.range(start.as_slice()..=end.as_slice())?.count() as u64;
            out.push((
                name,
                SenderJournal {
                    received: st.received,
                    pending,
                    gaps: st.gaps,
                    last_receive_ms: st.last_receive_ms,
                },
            ));
        }
        Ok(out)
    }

    /// Stores a batch durably (committed before this returns) and returns the seq to
    /// acknowledge. Entries at or below what was already received from the sender are ignored,
    /// so duplicates and retries are harmless. A batch that starts past the next expected seq
    /// is accepted, and the gap noted: the sender is owed a Merkle session.
    pub fn journal_receive(&self, batch: &JournalBatch) -> Result<u64, StoreError> {
        check_batch(batch).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if batch.from == self.node_id {
            return Err(StoreError::Invalid(format!(
                "a journal batch from this node ({:?}) itself",
                batch.from
            )));
        }
        let pool: BTreeMap<Digest, &Vec<u8>> = batch
            .entries
            .iter()
            .flat_map(|e| &e.bodies)
            .map(|b| (Digest::of(b), b))
            .collect();
        self.write_replicated(|tx| {
            let txn = tx.txn;
            let mut senders = txn.open_table(JOURNAL_SENDERS)?;
            let mut st: SenderState = match senders.get(batch.from.as_str())? {
                Some(v) => decode(v.value(), "a journal sender")?,
                None => SenderState::default(),
            };
            if batch.last_seq <= st.received {
                return Ok(st.received);
            }
            if batch.first_seq > st.received + 1 {
                st.gaps += 1;
                st.needs_check = true;
                tracing::info!(sender = %batch.from, expected = st.received + 1, got = batch.first_seq, "journal gap: a Merkle session must cover it");
            }
            let mut inbound = txn.open_table(JOURNAL_INBOUND)?;
            for e in batch.entries.iter().filter(|e| e.seq > st.received) {
                // Each stored entry keeps the bodies its own live messages need, so it can be
                // applied alone, whatever happens to the others.
                let mut bodies = Vec::new();
                let mut seen = BTreeSet::new();
                for m in e.messages.values() {
                    if seen.insert(m.digest) {
                        if let Some(b) = pool.get(&m.digest) {
                            bodies.push((*b).clone());
                        }
                    }
                }
                let stored = ShippedEntry {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    user: e.user.clone(),
                    guid: e.guid,
                    record: e.record.clone(),
                    tombstone: e.tombstone.clone(),
                    messages: e.messages.clone(),
                    expunged: e.expunged.clone(),
                    bodies,
                };
                inbound.insert(
                    inbound_key(&batch.from, e.seq).as_slice(),
                    encode(&stored)?.as_slice(),
                )?;
            }
            st.received = batch.last_seq;
            st.last_receive_ms = tx.now_ms();
            senders.insert(batch.from.as_str(), encode(&st)?.as_slice())?;
            Ok(st.received)
        })
    }

    /// Applies up to `max_entries` received entries, in seq order per sender, each in the same
    /// transaction as its removal from the queue. Entries are applied [`APPLY_GROUP`] to a
    /// transaction (one commit, one fsync, for the group); a group that fails on a bad entry is
    /// redone one entry per transaction, and the bad entry dropped. Nothing applied is journaled.
    pub fn journal_apply_inbound(&self, max_entries: usize) -> Result<InboundApplied, StoreError> {
        let mut out = InboundApplied::default();
        let mut budget = max_entries;
        while budget > 0 {
            let keys: Vec<Vec<u8>> = {
                let txn = self.read_txn()?;
                let inbound = txn.open_table(JOURNAL_INBOUND)?;
                let mut keys = Vec::new();
                for item in inbound.iter()?.take(budget.min(APPLY_GROUP)) {
                    keys.push(item?.0.value().to_vec());
                }
                keys
            };
            if keys.is_empty() {
                break;
            }
            budget -= keys.len();
            match self.write_replicated(|tx| apply_keys(tx, &keys)) {
                Ok(verdicts) => tally(&mut out, &verdicts),
                Err(e) if is_entry_error(&e) => {
                    for key in &keys {
                        match self.write_replicated(|tx| apply_keys(tx, std::slice::from_ref(key)))
                        {
                            Ok(verdicts) => tally(&mut out, &verdicts),
                            Err(e) if is_entry_error(&e) => {
                                let sender = split_inbound(key).map(|(s, _)| s).unwrap_or_default();
                                tracing::warn!(sender = %sender, error = %e, "journal entry could not be applied; left to a Merkle session");
                                self.write_replicated(|tx| {
                                    tx.txn.open_table(JOURNAL_INBOUND)?.remove(key.as_slice())?;
                                    if !sender.is_empty() {
                                        tx.owe_check(&sender)?;
                                    }
                                    Ok(())
                                })?;
                                out.dropped += 1;
                                out.stats.invalid += 1;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        out.check_with = self.take_owed_checks()?;
        let txn = self.read_txn()?;
        out.remaining = txn.open_table(JOURNAL_INBOUND)?.len()?;
        Ok(out)
    }

    /// The senders owed a Merkle session, cleared as they are reported.
    fn take_owed_checks(&self) -> Result<BTreeSet<String>, StoreError> {
        let owed: Vec<String> = {
            let txn = self.read_txn()?;
            let senders = txn.open_table(JOURNAL_SENDERS)?;
            let mut owed = Vec::new();
            for item in senders.iter()? {
                let (k, v) = item?;
                let st: SenderState = decode(v.value(), "a journal sender")?;
                if st.needs_check {
                    owed.push(k.value().to_string());
                }
            }
            owed
        };
        if owed.is_empty() {
            return Ok(BTreeSet::new());
        }
        self.write_replicated(|tx| {
            let mut senders = tx.txn.open_table(JOURNAL_SENDERS)?;
            let mut out = BTreeSet::new();
            for name in &owed {
                let st: Option<SenderState> = match senders.get(name.as_str())? {
                    Some(v) => Some(decode(v.value(), "a journal sender")?),
                    None => None,
                };
                if let Some(mut st) = st.filter(|s| s.needs_check) {
                    st.needs_check = false;
                    senders.insert(name.as_str(), encode(&st)?.as_slice())?;
                    out.insert(name.clone());
                }
            }
            Ok(out)
        })
    }
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

    #[test]
    fn an_entry_prefix_decodes_without_the_rest() {
        let e = ShippedEntry {
            seq: 7,
            at_ms: 9,
            user: "u".into(),
            guid: MailboxGuid([3; 16]),
            record: None,
            tombstone: None,
            messages: BTreeMap::new(),
            expunged: BTreeMap::new(),
            bodies: vec![vec![1, 2, 3]],
        };
        let bytes = postcard::to_allocvec(&e).expect("encode");
        let ((seq, at, user, guid), _) =
            postcard::take_from_bytes::<(u64, u64, String, MailboxGuid)>(&bytes).expect("prefix");
        assert_eq!(
            (seq, at, user.as_str(), guid),
            (7, 9, "u", MailboxGuid([3; 16]))
        );
    }
}
