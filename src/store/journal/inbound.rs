//! The journal's inbound side: batches from peers stored durably before they are
//! acknowledged, then applied entry by entry as `model::decide_entry` decides, with what
//! could not be applied left to a Merkle session with the sender.

use super::{inbound_key, split_inbound, Bytes, SenderJournal, SenderState};
use crate::model::{
    decide_entry, validate_user, ChangeCounts, Digest, EntryClash, EntryDecision, JournalBatch,
    MailboxGuid, MailboxSide, ShippedEntry,
};
use crate::store::error::StoreError;
use crate::store::read::{side_in, uid_ranges};
use crate::store::tables::{JOURNAL_INBOUND, JOURNAL_SENDERS};
use crate::store::tx::{decode, encode, Tx};
use crate::store::Store;
use redb::{ReadableTable, ReadableTableMetadata};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Inbound entries applied per transaction (one commit for the group). Each entry touches a
/// few pages of records and tree; a commit writes them all, plus the B-tree and tree levels
/// above them, which a larger group shares. 512 (was 64) is not measured against 64 on its
/// own; with 512, applying 4 000 scattered flag entries took 2.1–3.5 s here
/// (docs/PERFORMANCE.md, "Daemon", session 3).
pub const APPLY_GROUP: usize = 512;

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
    /// another GUID, a deleted mailbox brought back, an outcome the sender must adopt too),
    /// and entries carrying a stamp too far ahead of this node's clock.
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

impl Tx<'_> {
    /// The local side of a mailbox at some UIDs, read inside this transaction.
    fn side_at(
        &self,
        user: &str,
        guid: MailboxGuid,
        uids: &BTreeSet<u32>,
    ) -> Result<MailboxSide, StoreError> {
        side_in(
            &self.mailboxes,
            &self.mailbox_tombstones,
            &self.messages,
            &self.tombstones,
            (user, guid),
            &uid_ranges(Some(uids)),
        )
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

    /// Decides one entry (`model::decide_entry`) against this store's side of its mailbox;
    /// the one question the rules cannot answer from the entry, whether another mailbox here
    /// holds the outcome's name, is answered from the user's mailboxes and the queue.
    fn decide(
        &self,
        inbound: &impl ReadableTable<Bytes, Bytes>,
        sender: &str,
        entry: &ShippedEntry,
    ) -> Result<EntryDecision, StoreError> {
        let local = self.side_at(&entry.user, entry.guid, &entry.touched_uids())?;
        let decision = decide_entry(&local, entry, |name| -> Result<bool, StoreError> {
            for m in self.user_mailboxes(&entry.user)? {
                if m.guid != entry.guid
                    && m.name == name
                    && !pending_for(inbound, sender, &entry.user, m.guid)?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        if matches!(decision, EntryDecision::Clash(EntryClash::SenderChanges))
            && tracing::enabled!(tracing::Level::DEBUG)
        {
            log_disagreement(&local, entry);
        }
        Ok(decision)
    }
}

/// At debug level, where this replica's side of an entry's mailbox differs from the entry:
/// what an operator needs to tell why an entry was left to a Merkle session.
fn log_disagreement(local: &MailboxSide, entry: &ShippedEntry) {
    let incoming = entry.side();
    let uidnexts = (
        local.record.as_ref().map(|r| r.uidnext),
        incoming.record.as_ref().map(|r| r.uidnext),
    );
    for uid in entry.touched_uids() {
        let here = local.messages.get(&uid);
        let there = incoming.messages.get(&uid);
        let same = match (here, there) {
            (Some(a), Some(b)) => a.digest == b.digest && a.flags == b.flags,
            (None, None) => true,
            _ => false,
        };
        if !same || local.expunged.contains_key(&uid) != incoming.expunged.contains_key(&uid) {
            tracing::debug!(
                user = %entry.user,
                guid = %entry.guid,
                uid,
                here = ?here.map(|m| (m.digest, &m.flags)),
                there = ?there.map(|m| (m.digest, &m.flags)),
                tombstones_here = ?local.expunged.get(&uid),
                tombstones_there = ?incoming.expunged.get(&uid),
                ?uidnexts,
                "entry and this replica differ at a UID"
            );
        }
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
    Applied(ChangeCounts),
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
            EntryDecision::Apply(changes, counts) => {
                if let Some(ahead) = tx.ahead(&changes) {
                    // A stamp from a clock far ahead of ours: left to a session, which
                    // applies it once our clock is within the skew of it; the clock stays.
                    tracing::warn!(sender = %sender, user = %entry.user, guid = %entry.guid, stamp = %ahead.stamp, ahead_ms = ahead.ahead_ms(), max_clock_skew_ms = ahead.max_skew_ms, "journal entry carries a stamp too far ahead of this node's clock: not applied, left to a Merkle session (the sender's clock, or this node's, is wrong)");
                    tx.owe_check(&sender)?;
                    verdicts.push(Verdict::Clash);
                    continue;
                }
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
            EntryDecision::Clash(why) => {
                tracing::info!(sender = %sender, user = %entry.user, guid = %entry.guid, why = %why, "journal entry left to a Merkle session");
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
        batch
            .check()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
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
    use std::collections::BTreeMap;

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
