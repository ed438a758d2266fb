//! The journal's outbound side: recording each local write's keys, the per-peer cursors and
//! overflow, and the batches of the current state of those keys that a shipper sends.

use super::{
    meta_u64, peer_state, peer_states, trim, JournalRecord, PeerJournal, PeerState, BOUND_KEY,
    DEFAULT_JOURNAL_BOUND, HEAD_KEY,
};
use crate::model::{
    Digest, JournalBatch, MailboxGuid, MailboxSide, ShippedEntry, JOURNAL_WIRE_VERSION,
    MAX_BATCH_ENTRIES,
};
use crate::store::error::StoreError;
use crate::store::read::{read_mailbox, read_ranges};
use crate::store::tables::{
    JOURNAL, JOURNAL_PEERS, MAILBOXES, MAILBOX_TOMBSTONES, MESSAGES, META, TOMBSTONES,
};
use crate::store::tx::{decode, encode, Tx};
use crate::store::Store;
use redb::ReadableTable;
use std::collections::{BTreeMap, BTreeSet};

/// Rough encoded sizes, for the batch's byte budget (bodies are counted exactly).
const ENTRY_COST: usize = 160;
const MESSAGE_COST: usize = 140;
const TOMBSTONE_COST: usize = 50;

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
                let at = (rec.user.as_str(), rec.guid);
                read_mailbox(&mailboxes, &mailbox_tombstones, at, &mut side)?;
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
                let at = (rec.user.as_str(), rec.guid);
                read_ranges(&messages, &tombstones, at, &[(uid, uid)], &mut side)?;
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
        self.journal_move_peer(peer, |st, head| {
            let upto = upto.min(head);
            if upto <= st.cursor {
                return false;
            }
            st.cursor = upto;
            true
        })
    }

    /// A Merkle session with `peer` that started when the head was `head_at_start` succeeded:
    /// it covered every change up to there. The cursor moves up to it, and the overflow flag
    /// clears unless the peer overflowed again after the session started.
    pub fn journal_merkle_done(&self, peer: &str, head_at_start: u64) -> Result<(), StoreError> {
        self.journal_move_peer(peer, |st, head| {
            st.cursor = st.cursor.max(head_at_start.min(head));
            if st.overflowed && st.overflowed_at <= head_at_start {
                st.overflowed = false;
            }
            true
        })
    }

    /// Changes `peer`'s state with `change` (given the head); when it says it changed
    /// something, stores the state and drops the entries no peer needs any more.
    fn journal_move_peer(
        &self,
        peer: &str,
        change: impl FnOnce(&mut PeerState, u64) -> bool,
    ) -> Result<(), StoreError> {
        self.write_replicated(|tx| {
            let txn = tx.txn;
            let head = meta_u64(&tx.meta, HEAD_KEY)?.unwrap_or(0);
            let mut table = txn.open_table(JOURNAL_PEERS)?;
            let mut st = peer_state(&table, peer)?;
            if !change(&mut st, head) {
                return Ok(());
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
}
