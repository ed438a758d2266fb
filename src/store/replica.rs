//! Applying records as they are, stamps included: what reconciliation and the replication
//! journal do with a peer's state once the clash rules have decided, and what the tree's
//! order-independence tests use to build equal stores through different histories.

use super::error::StoreError;
use super::keys;
use super::tx::{encode, Tx};
use super::Store;
use crate::model::{
    validate_user, Change, ChangeGroup, CheckedBody, Digest, MailboxGuid, MailboxName, Md5,
    MessageRecord, UserRecord,
};
use redb::ReadableTable;
use std::collections::BTreeSet;

/// What a STAGED value says: the time the body was staged, and (format 3) the MD5 and size
/// of its bytes, checked when it was staged. The body itself is held with one reference
/// that the mark holds.
pub(super) struct StagedMark {
    pub(super) at_ms: u64,
    /// `None` for a mark written by format 2 (the time only): the change that takes the body
    /// reads it back to check it.
    pub(super) checked: Option<(Md5, u64)>,
}

impl StagedMark {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = self.at_ms.to_be_bytes().to_vec();
        if let Some((md5, size)) = self.checked {
            v.extend_from_slice(&md5.0);
            v.extend_from_slice(&size.to_be_bytes());
        }
        v
    }

    pub(super) fn decode(value: &[u8]) -> Result<StagedMark, StoreError> {
        let word = |b: &[u8]| <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes);
        let malformed = || StoreError::Corrupt("malformed staging mark".into());
        let at_ms = value.get(..8).and_then(word).ok_or_else(malformed)?;
        let checked = match value.len() {
            8 => None,
            32 => {
                let md5 = <[u8; 16]>::try_from(&value[8..24]).map_err(|_| malformed())?;
                let size = word(&value[24..32]).ok_or_else(malformed)?;
                Some((Md5(md5), size))
            }
            _ => return Err(malformed()),
        };
        Ok(StagedMark { at_ms, checked })
    }
}

/// A record's MD5, digest and size are its body's: a change whose body does not match them
/// is refused whole (nothing of it is stored).
fn check_body(
    record: &MessageRecord,
    bytes: &[u8],
    uid: u32,
    guid: MailboxGuid,
) -> Result<(), StoreError> {
    let what = if Digest::of(bytes) != record.digest {
        "digest"
    } else if bytes.len() as u64 != record.size {
        "size"
    } else if Md5::of(bytes) != record.md5 {
        "MD5"
    } else {
        return Ok(());
    };
    Err(StoreError::Invalid(format!(
        "body for UID {uid} of mailbox {guid} does not match its {what} (record digest {})",
        record.digest
    )))
}

impl Tx<'_> {
    /// A record that takes a body held here must agree with it on MD5 and size too. A held
    /// body that rotted (its bytes no longer hash to the digest) says nothing about the
    /// record: it is marked for repair elsewhere, and the record is taken as it is.
    fn check_held(
        &self,
        record: &MessageRecord,
        uid: u32,
        guid: MailboxGuid,
    ) -> Result<(), StoreError> {
        let Some(bytes) = super::body::get_bytes(self.txn, &record.digest)? else {
            return Ok(()); // add_ref says what is wrong
        };
        let bytes = bytes.as_slice();
        // Size and MD5 first: when they agree, the body is the record's (it is held under
        // the record's digest, hashed when it was stored), and no digest is computed again.
        if bytes.len() as u64 == record.size && Md5::of(bytes) == record.md5 {
            return Ok(());
        }
        if Digest::of(bytes) == record.digest {
            check_body(record, bytes, uid, guid)?;
        }
        Ok(())
    }

    fn ensure_user_record(
        &mut self,
        user: &str,
        stamp: crate::model::Stamp,
    ) -> Result<(), StoreError> {
        validate_user(user)?;
        if self.users.get(user)?.is_none() {
            self.users
                .insert(user, encode(&UserRecord { created: stamp })?.as_slice())?;
            self.counters.users += 1;
        }
        Ok(())
    }

    pub(super) fn apply_change(&mut self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::Mailbox { user, record } => {
                MailboxName::parse(&record.name)?;
                self.observe(record.name_stamp);
                self.observe(record.subscribed_stamp);
                self.ensure_user_record(user, record.name_stamp)?;
                if self.get_mailbox(user, record.guid)?.is_none() {
                    self.counters.mailboxes += 1;
                }
                // A mailbox brought back (changed after a delete elsewhere) sheds its tombstone.
                if self
                    .mailbox_tombstones
                    .remove(keys::mailbox(user, record.guid).as_slice())?
                    .is_some()
                {
                    self.counters.mailbox_tombstones -= 1;
                }
                self.put_mailbox(user, record)?;
            }
            Change::Message {
                user,
                guid,
                uid,
                record,
                body,
            } => {
                let Some(mailbox) = self.get_mailbox(user, *guid)? else {
                    return Err(StoreError::Invalid(format!(
                        "message {uid} for unknown mailbox {guid} of {user:?}"
                    )));
                };
                // Every UID lies below UIDNEXT: a change that breaks it is refused (a session
                // always raises UIDNEXT first, in the same group).
                if *uid >= mailbox.uidnext || *uid == 0 {
                    return Err(StoreError::Invalid(format!(
                        "message UID {uid} is not in 1..{} (the UIDNEXT of mailbox {guid} of {user:?})",
                        mailbox.uidnext
                    )));
                }
                for (_, state) in record.flags.entries() {
                    self.observe(state.stamp);
                }
                self.observe(record.appended);
                let old = self.get_message(user, *guid, *uid)?;
                if old.as_ref().map(|m| m.digest) != Some(record.digest) {
                    match body {
                        Some(bytes) => {
                            check_body(record, bytes, *uid, *guid)?;
                            if self.bodies.acquire(self.txn, &record.digest, bytes)? {
                                self.counters.bodies += 1;
                                self.counters.body_bytes += record.size;
                            }
                        }
                        None => {
                            // Sent ahead by the session (staged), or already held here.
                            let staged = self
                                .txn
                                .open_table(super::tables::STAGED)?
                                .remove(record.digest.0.as_slice())?
                                .map(|v| StagedMark::decode(v.value()))
                                .transpose()?;
                            match staged {
                                // The body is held already, and the staging mark's reference
                                // becomes this message's: nothing is written again. Its MD5
                                // and size were taken when it was staged, so it is not read
                                // back either.
                                Some(StagedMark {
                                    checked: Some((md5, size)),
                                    ..
                                }) => {
                                    if size != record.size || md5 != record.md5 {
                                        return Err(StoreError::Invalid(format!(
                                            "body for UID {uid} of mailbox {guid} does not match its size or MD5 (record digest {})",
                                            record.digest
                                        )));
                                    }
                                }
                                // A format 2 mark (the time only): the body is read back.
                                Some(StagedMark { checked: None, .. }) => {
                                    self.check_held(record, *uid, *guid)?;
                                    // An older merkmail's mark of an empty body is 8 bytes
                                    // too, and holds no reference: the body is stored now.
                                    if self.bodies.references_of(self.txn, &record.digest)? == 0 {
                                        check_body(record, &[], *uid, *guid)?;
                                        if self.bodies.acquire(self.txn, &record.digest, &[])? {
                                            self.counters.bodies += 1;
                                        }
                                    }
                                }
                                // Neither sent nor staged: the store must hold it. A plan
                                // made before a writer released the last copy finds none:
                                // a stale plan (found by the simulation), not damage.
                                None => {
                                    self.check_held(record, *uid, *guid)?;
                                    self.bodies.add_ref(self.txn, &record.digest).map_err(
                                        |e| match e {
                                            StoreError::Corrupt(_) => StoreError::Invalid(format!(
                                                "the body {} of UID {uid} of mailbox {guid} was neither sent nor held here (a stale plan)",
                                                record.digest
                                            )),
                                            e => e,
                                        },
                                    )?;
                                }
                            }
                        }
                    }
                    if let Some(old) = &old {
                        self.bodies.release(self.txn, &old.digest)?;
                        self.released.insert(old.digest);
                    }
                }
                match &old {
                    Some(old) => {
                        self.counters.message_bytes =
                            self.counters.message_bytes.saturating_sub(old.size) + record.size;
                    }
                    None => {
                        self.counters.messages += 1;
                        self.counters.message_bytes += record.size;
                    }
                }
                self.put_message(user, *guid, *uid, record)?;
                if old.map(|m| m.identity()) != Some(record.identity()) {
                    self.place_replicated(user, *guid, *uid, record)?;
                }
            }
            Change::Expunge {
                user,
                guid,
                uid,
                tombstone,
            } => {
                self.observe(tombstone.stamp);
                self.bury(user, *guid, *uid, tombstone)?;
                self.kill_elsewhere(user, *guid, tombstone)?;
            }
            Change::Remove { user, guid, uid } => {
                self.remove_message(user, *guid, *uid)?;
            }
            Change::DeleteMailbox { user, tombstone } => {
                self.observe(tombstone.stamp);
                if let Some(into) = tombstone.merged_into.filter(|g| *g != tombstone.guid) {
                    self.inherit_kills(user, tombstone.guid, into)?;
                }
                self.delete_mailbox_records(user, tombstone.guid, tombstone.merged_into.is_some())?;
                let key = keys::mailbox(user, tombstone.guid);
                if self
                    .mailbox_tombstones
                    .insert(key.as_slice(), encode(tombstone)?.as_slice())?
                    .is_none()
                {
                    self.counters.mailbox_tombstones += 1;
                }
            }
        }
        Ok(())
    }
}

impl Tx<'_> {
    /// Every mailbox a record or message of `changes` touched still holds its live messages
    /// below its UIDNEXT (what `verify` checks). A message is refused when it comes at or
    /// above UIDNEXT (`apply_change`), but a record applied after it could lower UIDNEXT
    /// under mail already held: a peer's group whose last `Next` said 1 left INBOX's UIDs
    /// 1–6 above it (found by the `wire_request` fuzz target, session 8). Refused, with the
    /// whole transaction: a session never plans it (`uidnext_above_every_uid`).
    fn uids_below_uidnext(&self, changes: &[Change]) -> Result<(), StoreError> {
        let touched: BTreeSet<(&str, MailboxGuid)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Mailbox { user, record } => Some((user.as_str(), record.guid)),
                Change::Message { user, guid, .. } => Some((user.as_str(), *guid)),
                _ => None,
            })
            .collect();
        for (user, guid) in touched {
            let Some(mailbox) = self.get_mailbox(user, guid)? else {
                continue;
            };
            let (start, end) = keys::uid_range(user, guid, mailbox.uidnext, u32::MAX);
            if let Some(item) = self
                .messages
                .range(start.as_slice()..=end.as_slice())?
                .next()
            {
                let (k, _) = item?;
                let uid = keys::split_message(k.value()).map_or(0, |(_, _, uid)| uid);
                return Err(StoreError::Invalid(format!(
                    "message UID {uid} is not below the UIDNEXT {} of mailbox {guid} of {user:?}",
                    mailbox.uidnext
                )));
            }
        }
        Ok(())
    }

    /// Whether a group's mailbox still has the hash the session saw.
    fn guard_holds(&self, group: &ChangeGroup) -> Result<bool, StoreError> {
        let key = crate::merkle::NodeKey::Mailbox {
            user: group.user.clone(),
            guid: group.guid,
        }
        .encode();
        let current = match self.tree.get(key.as_slice())? {
            Some(v) => {
                crate::merkle::NodeValue::decode(v.value())
                    .ok_or_else(|| StoreError::Corrupt("malformed tree node".into()))?
                    .hash
            }
            None => crate::merkle::NodeHash::EMPTY,
        };
        Ok(current.truncated(group.window) == group.expect)
    }

    /// The winners of same-name merges that must wait, as (user, GUID), read before any
    /// group of the call applies. A merge is two groups: the winner's, which moves the
    /// loser's mail in, and the loser's, which deletes it as `merged_into` the winner. The
    /// second waits while the first is stale (`group_strands_mail`); this is the other way
    /// round: when the loser is live here and its delete is stale (a writer changed it since
    /// the session read it), the winner's group waits too. Applying it alone would leave the
    /// loser's mail in both mailboxes with nothing that says it merged; if the two names then
    /// part (a rename of the winner elsewhere) no merge rule ever folds them (finding 15 of
    /// docs/RELIABILITY.md). Followed along chains within the call (a winner whose own group
    /// deletes it as merged into a third).
    fn merges_held_back<'g>(
        &self,
        groups: &'g [ChangeGroup],
    ) -> Result<BTreeSet<(&'g str, MailboxGuid)>, StoreError> {
        let mut merges = Vec::new();
        for group in groups {
            for change in &group.changes {
                let Change::DeleteMailbox { user, tombstone } = change else {
                    continue;
                };
                let Some(into) = tombstone.merged_into.filter(|g| *g != tombstone.guid) else {
                    continue;
                };
                if *user != group.user || tombstone.guid != group.guid {
                    continue;
                }
                let stale = self.get_mailbox(user, tombstone.guid)?.is_some()
                    && !self.guard_holds(group)?;
                merges.push((group.user.as_str(), group.guid, into, stale));
            }
        }
        let mut held: BTreeSet<(&str, MailboxGuid)> = merges
            .iter()
            .filter(|m| m.3)
            .map(|&(user, _, into, _)| (user, into))
            .collect();
        // A held winner that is itself merged on holds its own winner back (each pass adds
        // at least one, or stops).
        for _ in 0..merges.len() {
            let more: Vec<(&str, MailboxGuid)> = merges
                .iter()
                .filter(|&&(user, guid, into, _)| {
                    held.contains(&(user, guid)) && !held.contains(&(user, into))
                })
                .map(|&(user, _, into, _)| (user, into))
                .collect();
            if more.is_empty() {
                break;
            }
            held.extend(more);
        }
        Ok(held)
    }

    /// Whether a group deletes a mailbox as merged into another while a message in it has
    /// not reached any other mailbox here (`Tx::merged_delete_strands_mail`): such a group is
    /// skipped like a stale one, and the next session moves the message first.
    fn group_strands_mail(&self, group: &ChangeGroup) -> Result<bool, StoreError> {
        for change in &group.changes {
            let Change::DeleteMailbox { user, tombstone } = change else {
                continue;
            };
            if tombstone
                .merged_into
                .is_none_or(|into| into == tombstone.guid)
                || self.get_mailbox(user, tombstone.guid)?.is_none()
            {
                continue;
            }
            let removed: BTreeSet<u32> = group
                .changes
                .iter()
                .filter_map(|c| match c {
                    Change::Expunge {
                        user: u, guid, uid, ..
                    }
                    | Change::Remove { user: u, guid, uid }
                        if u == user && *guid == tombstone.guid =>
                    {
                        Some(*uid)
                    }
                    _ => None,
                })
                .collect();
            if self.merged_delete_strands_mail(user, tombstone.guid, &removed)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Store {
    /// Applies groups of changes in one transaction. A group whose mailbox no longer has the
    /// expected hash is skipped (a stale plan is never half-applied; the next session picks
    /// it up), and so is one that would delete a merged mailbox before its mail moved out,
    /// one that moves a merged mailbox's mail into its winner while that mailbox's delete
    /// (in the same call) is stale here ([`Tx::merges_held_back`]), or that carries a stamp too far ahead of this node's clock ([`Store::set_max_clock_skew`]).
    /// Returns which groups were applied.
    pub fn apply_groups(&self, groups: &[ChangeGroup]) -> Result<Vec<bool>, StoreError> {
        self.write_replicated(|tx| {
            let held = tx.merges_held_back(groups)?;
            let mut applied = Vec::with_capacity(groups.len());
            for group in groups {
                if held.contains(&(group.user.as_str(), group.guid))
                    || !tx.guard_holds(group)?
                    || tx.group_strands_mail(group)?
                {
                    applied.push(false);
                    continue;
                }
                // A stamp from a clock far ahead of ours: skipped like a stale group (the
                // other side may apply its own; the next session merges again), and applied
                // once our clock is within the skew of it. The clock does not move.
                if let Some(ahead) = tx.ahead(&group.changes) {
                    tracing::warn!(user = %group.user, guid = %group.guid, stamp = %ahead.stamp, ahead_ms = ahead.ahead_ms(), max_clock_skew_ms = ahead.max_skew_ms, "a change group carries a stamp too far ahead of this node's clock: not applied (a peer's clock, or this node's, is wrong)");
                    applied.push(false);
                    continue;
                }
                for change in &group.changes {
                    tx.apply_change(change)?;
                }
                tx.uids_below_uidnext(&group.changes)?;
                applied.push(true);
            }
            Ok(applied)
        })
    }

    /// Stages bodies that a session sends ahead of the changes that use them, under the digest
    /// of their bytes; a later change with no body takes its body from here. Staged bodies
    /// nobody took within an hour are dropped (a session that died half-way).
    ///
    /// A staged body is stored once, and its staging mark in STAGED holds one reference to
    /// it; the change that takes it inherits that reference. Writing it to a staging table
    /// and copying it later wrote every replicated body twice, and redb keeps the freed pages
    /// in the file (docs/PERFORMANCE.md, "Replica size"). The mark keeps the body's MD5 and
    /// size, taken here from the bytes at hand, so the change that takes the body checks its
    /// record against them without reading the body back.
    pub fn stage_bodies(&self, bodies: &[CheckedBody<'_>]) -> Result<usize, StoreError> {
        self.stage_bodies_marking(bodies).map(|_| bodies.len())
    }

    /// [`Store::stage_bodies`], returning the digests whose staging mark this call made (not
    /// the ones it only refreshed): what [`Store::unstage_bodies`] takes back if the round
    /// that sent them is refused.
    pub fn stage_bodies_marking(
        &self,
        bodies: &[CheckedBody<'_>],
    ) -> Result<Vec<Digest>, StoreError> {
        const KEEP_MS: u64 = 3_600_000;
        // Not waited for on disk: the change that takes a staged body commits durably, and
        // a crash before then loses only what the next session sends again. A session's
        // body batches were most of its fsyncs (docs/PERFORMANCE.md, "Throughput").
        self.write_replicated_soon(|tx| {
            let now = tx.now_ms();
            let mut staged = tx.txn.open_table(super::tables::STAGED)?;
            let mut expired = Vec::new();
            for item in staged.iter()? {
                let (k, v) = item?;
                let at = StagedMark::decode(v.value()).ok().map(|m| m.at_ms);
                if at.is_none_or(|at| at + KEEP_MS <= now) {
                    expired.push((k.value().to_vec(), at.is_some()));
                }
            }
            for (key, held) in expired {
                staged.remove(key.as_slice())?;
                if let (true, Ok(digest)) = (held, <[u8; 32]>::try_from(key.as_slice())) {
                    // The mark's reference goes; the body is freed at the end of the
                    // transaction unless a message uses it too.
                    let digest = Digest(digest);
                    tx.bodies.release(tx.txn, &digest)?;
                    tx.released.insert(digest);
                }
            }
            let mut marked = Vec::new();
            for body in bodies {
                let (digest, bytes) = (*body.digest(), body.bytes());
                let mark = StagedMark {
                    at_ms: now,
                    checked: Some((Md5::of(bytes), bytes.len() as u64)),
                };
                let previous = staged.insert(digest.0.as_slice(), mark.encode().as_slice())?;
                // Staged again: the mark is refreshed, its reference stays. Otherwise the mark
                // takes a reference (storing the body if it is not held; a held one that
                // rotted gets these good bytes, which hash to the digest by construction).
                if previous.is_none() {
                    marked.push(digest);
                    if tx.bodies.acquire(tx.txn, &digest, bytes)? {
                        tx.counters.bodies += 1;
                        tx.counters.body_bytes += bytes.len() as u64;
                    }
                }
            }
            Ok(marked)
        })
    }

    /// Takes back the staging marks `digests` name (made by [`Store::stage_bodies_marking`]
    /// for a round that was then refused: a refused request changes nothing). A body no
    /// message holds goes with its mark; a mark a change took already is not there.
    pub fn unstage_bodies(&self, digests: &[Digest]) -> Result<(), StoreError> {
        if digests.is_empty() {
            return Ok(());
        }
        self.write_replicated_soon(|tx| {
            let mut staged = tx.txn.open_table(super::tables::STAGED)?;
            for digest in digests {
                if staged.remove(digest.0.as_slice())?.is_some() {
                    tx.bodies.release(tx.txn, digest)?;
                    tx.released.insert(*digest);
                }
            }
            Ok(())
        })
    }

    /// Applies changes verbatim, all in one transaction: all of them or none.
    pub fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        self.write_replicated(|tx| {
            for change in changes {
                tx.apply_change(change)?;
            }
            tx.uids_below_uidnext(changes)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::merkle::NodeHash;
    use crate::model::{Change, ChangeGroup, Stamp};
    use crate::store::{NewMessage, Store};
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    const NOW: u64 = 1_800_000_000_000;
    const DAY: u64 = 86_400_000;

    /// A store whose clock reads `ms`.
    fn store_at(dir: &std::path::Path, node: &str, ms: u64) -> Store {
        let mut store = Store::init(dir, node).expect("init");
        store.simulate_environment(Arc::new(AtomicU64::new(ms)), 1);
        store
    }

    fn clock_of(store: &Store) -> Stamp {
        store.hlc.lock().map(|h| h.last()).expect("clock")
    }

    /// A peer whose clock runs a day ahead (or a hostile one, up to year 10889): its changes
    /// are not applied here, by a session or by the journal, and this node's clock does not
    /// follow it; within the allowed skew the same change applies.
    #[test]
    fn a_change_stamped_past_the_clock_skew_is_not_applied_and_the_clock_stays() {
        let (da, db) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let a = store_at(da.path(), "a", NOW + DAY);
        let b = store_at(db.path(), "b", NOW);
        a.journal_register_peers(&["b".into()], 1_000)
            .expect("register");
        let body = b"Subject: ahead\r\n\r\nfrom tomorrow\r\n".to_vec();
        a.append(
            "u",
            "INBOX",
            vec![NewMessage {
                bytes: body.clone(),
                ..NewMessage::default()
            }],
        )
        .expect("append");
        let (root, clock) = (b.root().expect("root"), clock_of(&b));

        // The journal: the entry is received, then left to a Merkle session with its sender.
        let batch = a.journal_batch("b", 100, 1 << 20).expect("batch");
        assert!(!batch.entries.is_empty());
        b.journal_receive(&batch).expect("receive");
        let out = b.journal_apply_inbound(100).expect("apply");
        assert_eq!((out.applied, out.remaining), (0, 0), "{out:?}");
        assert_eq!(out.stats.clashes, out.dropped, "{out:?}");
        assert!(out.check_with.contains("a"), "{out:?}");
        assert_eq!(b.root().expect("root"), root, "nothing changed");
        assert_eq!(clock_of(&b), clock, "the clock did not move");

        // A session's group: skipped as a stale one would be.
        let record = a.mailbox("u", "INBOX").expect("inbox");
        let message = a.message("u", "INBOX", 1).expect("message").record;
        // The guard: INBOX as B holds it now (absent at first; made by a local write below).
        let expect = || {
            b.node(&crate::merkle::NodeKey::Mailbox {
                user: "u".into(),
                guid: record.guid,
            })
            .expect("node")
            .map_or(NodeHash::EMPTY, |v| v.hash)
            .truncated(0)
        };
        let group = |message: &crate::model::MessageRecord| ChangeGroup {
            user: "u".into(),
            guid: record.guid,
            window: 0,
            expect: expect(),
            changes: vec![
                Change::Mailbox {
                    user: "u".into(),
                    record: record.clone(),
                },
                Change::Message {
                    user: "u".into(),
                    guid: record.guid,
                    uid: 1,
                    record: message.clone(),
                    body: Some(body.clone()),
                },
            ],
        };
        assert_eq!(b.apply_groups(&[group(&message)]).expect("apply"), [false]);
        let mut poisoned = message.clone();
        poisoned.appended.ms = Stamp::MAX_MS;
        assert_eq!(b.apply_groups(&[group(&poisoned)]).expect("apply"), [false]);
        assert_eq!(b.root().expect("root"), root, "nothing changed");
        assert_eq!(clock_of(&b), clock, "the clock did not move");
        // A local change here is stamped by this node's clock, not the peer's.
        b.create_mailbox("u", "Here").expect("create");
        assert!(clock_of(&b).ms < NOW + DAY, "{}", clock_of(&b));

        // Allowed two days of skew, the day-ahead group applies; the poisoned one still not.
        b.set_max_clock_skew(2 * DAY);
        assert_eq!(b.apply_groups(&[group(&poisoned)]).expect("apply"), [false]);
        assert_eq!(b.apply_groups(&[group(&message)]).expect("apply"), [true]);
        assert_eq!(b.message("u", "INBOX", 1).expect("applied").record, message);
        assert!(
            clock_of(&b).ms >= NOW + DAY,
            "the clock follows a stamp it accepted"
        );
        assert!(b.verify().expect("verify").is_ok());
    }

    /// A peer's record applied after the messages it brings may not lower UIDNEXT under mail
    /// held (the `wire_request` fuzz target's finding of session 8): the whole apply is
    /// refused and the store stays as it was, whether the mail came in the same changes or
    /// was there before.
    #[test]
    fn a_record_that_lowers_uidnext_under_held_mail_is_refused() {
        let store = Store::in_memory("n").expect("store");
        let uids: Vec<u32> = store
            .append(
                "u",
                "INBOX",
                vec![NewMessage {
                    bytes: b"Subject: 1\r\n\r\none\r\n".to_vec(),
                    ..NewMessage::default()
                }],
            )
            .expect("append")
            .iter()
            .map(|o| o.uid)
            .collect();
        let held = store.message("u", "INBOX", uids[0]).expect("m").record;
        let record = store.mailbox("u", "INBOX").expect("inbox");
        let root = store.root().expect("root");
        let lowered = |uidnext: u32| Change::Mailbox {
            user: "u".into(),
            record: crate::model::MailboxRecord {
                uidnext,
                ..record.clone()
            },
        };
        let raised = lowered(10);
        let copy = Change::Message {
            user: "u".into(),
            guid: record.guid,
            uid: 5,
            record: held.clone(),
            body: None,
        };
        // Mail held before: a record with UIDNEXT 1 is refused.
        assert!(store.apply(&[lowered(1)]).is_err());
        // Mail brought by the same changes, then the record lowered under it.
        assert!(store
            .apply(&[raised.clone(), copy.clone(), lowered(5)])
            .is_err());
        // Through a guarded group too (a peer's Apply round).
        let expect = store
            .node(&crate::merkle::NodeKey::Mailbox {
                user: "u".into(),
                guid: record.guid,
            })
            .expect("node")
            .map_or(NodeHash::EMPTY, |v| v.hash)
            .truncated(0);
        let group = ChangeGroup {
            user: "u".into(),
            guid: record.guid,
            window: 0,
            expect,
            changes: vec![raised.clone(), copy.clone(), lowered(2)],
        };
        assert!(store.apply_groups(std::slice::from_ref(&group)).is_err());
        assert_eq!(store.root().expect("root"), root);
        // UIDNEXT above every UID: applied.
        store.apply(&[raised, copy, lowered(6)]).expect("apply");
        assert!(store.verify().expect("verify").is_ok());
    }
}
