//! The message identity index (table IDENTITIES): for each mailbox, where each identity
//! (digest and append stamp: one append, whatever UID a clash moved it to) is live, and which
//! identities a writer expunged. It lets every apply path keep the two rules the clash
//! rules rely on, even for UIDs a session did not compare and for journal entries:
//! - an identity a writer expunged is never live again in that mailbox (a copy a clash moved
//!   elsewhere included);
//! - an identity is live at one UID only; given two, the higher stays (clashes only move mail
//!   up) and the lower gets a move tombstone.
//!
//! Kept in step with MESSAGES and TOMBSTONES by `Tx::put_message`, `Tx::remove_message`,
//! `Tx::put_tombstone`, mailbox deletion and the purge; `verify` checks it.

use super::error::StoreError;
use super::keys;
use super::tx::{decode, encode, Tx};
use crate::model::{Digest, MailboxGuid, MailboxTombstone, MessageRecord, Stamp, Tombstone};
use redb::ReadableTable;

const LIVE: u8 = 0;
const KILLED: u8 = 1;
/// A writer's expunge in a mailbox that was merged into this one: local (each replica derives
/// it when it applies the merge), with no tombstone of its own here; it keeps the identity
/// from being moved in later, and is dropped with the mailbox.
const INHERITED: u8 = 2;

/// user 00 digest:32 appended:12: a key of USER_KILLS.
pub(crate) fn user_kill_key(user: &str, digest: &Digest, appended: Stamp) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&digest.0);
    k.extend_from_slice(&appended.to_bytes());
    k
}

/// The inclusive range of a mailbox's keys in IDENTITIES.
pub(crate) fn mailbox_range(user: &str, guid: MailboxGuid) -> (Vec<u8>, Vec<u8>) {
    let start = keys::mailbox(user, guid);
    let mut end = start.clone();
    end.extend_from_slice(&[0xff; 32 + 12 + 1 + 4]);
    (start, end)
}

/// user 00 guid digest:32 appended:12
fn prefix(user: &str, guid: MailboxGuid, digest: &Digest, appended: Stamp) -> Vec<u8> {
    let mut k = keys::mailbox(user, guid);
    k.extend_from_slice(&digest.0);
    k.extend_from_slice(&appended.to_bytes());
    k
}

/// user 00 guid digest:32 appended:12 kind:1 uid:u32be
pub(crate) fn key(
    user: &str,
    guid: MailboxGuid,
    digest: &Digest,
    appended: Stamp,
    kind: u8,
    uid: u32,
) -> Vec<u8> {
    let mut k = prefix(user, guid, digest, appended);
    k.push(kind);
    k.extend_from_slice(&uid.to_be_bytes());
    k
}

pub(crate) fn live_key(user: &str, guid: MailboxGuid, uid: u32, m: &MessageRecord) -> Vec<u8> {
    key(user, guid, &m.digest, m.appended, LIVE, uid)
}

/// The key of a writer's expunge (`None` for a move tombstone, which the index does not keep).
pub(crate) fn kill_key(user: &str, guid: MailboxGuid, uid: u32, t: &Tombstone) -> Option<Vec<u8>> {
    t.origin
        .map(|origin| key(user, guid, &t.digest, origin, KILLED, uid))
}

/// Splits a key's tail after `user 00 guid`: (digest, appended, kind, uid).
pub(crate) fn split_tail(tail: &[u8]) -> Option<(Digest, Stamp, u8, u32)> {
    if tail.len() != 32 + 12 + 1 + 4 {
        return None;
    }
    let digest = Digest(tail[..32].try_into().ok()?);
    let appended = Stamp::from_bytes(tail[32..44].try_into().ok()?);
    let uid = u32::from_be_bytes(tail[45..49].try_into().ok()?);
    Some((digest, appended, tail[44], uid))
}

/// What the index says about one identity in one mailbox.
#[derive(Debug, Default)]
pub(crate) struct Placements {
    /// UIDs where it is live.
    pub live: Vec<u32>,
    /// The latest writer's expunge of it, if any.
    pub killed: Option<Tombstone>,
}

/// What enforcing the identity rules changed in one transaction (for reports and for the
/// journal, which owes the sender a Merkle session when it happens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityFixes {
    /// Messages not stored (or removed) because a writer had expunged them elsewhere.
    pub killed: u64,
    /// Duplicates of one identity dropped in favour of its higher UID.
    pub deduplicated: u64,
}

impl Tx<'_> {
    pub(crate) fn placements(
        &self,
        user: &str,
        guid: MailboxGuid,
        digest: &Digest,
        appended: Stamp,
    ) -> Result<Placements, StoreError> {
        let start = prefix(user, guid, digest, appended);
        let mut end = start.clone();
        end.extend_from_slice(&[0xff; 5]);
        let mut out = Placements::default();
        for item in self.identities.range(start.as_slice()..=end.as_slice())? {
            let (k, v) = item?;
            let Some(kind) = k.value().get(start.len()).copied() else {
                continue;
            };
            let uid = k
                .value()
                .get(start.len() + 1..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt("malformed identity key".into()))?;
            if kind == LIVE {
                out.live.push(uid);
            } else {
                let stamp: Stamp = decode(v.value(), "an identity kill")?;
                let t = Tombstone {
                    digest: *digest,
                    stamp,
                    origin: Some(appended),
                };
                if out.killed.is_none_or(|k| k.stamp < stamp) {
                    out.killed = Some(t);
                }
            }
        }
        Ok(out)
    }

    /// Removes the message at `uid` (if any) and leaves `tomb` in its place.
    pub(crate) fn bury(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
        tomb: &Tombstone,
    ) -> Result<(), StoreError> {
        self.remove_message(user, guid, uid)?;
        self.put_tombstone(user, guid, uid, tomb)
    }

    /// Writes an expunge tombstone (merging with one already there for the same digest: the
    /// later stamp, a writer's expunge over a move), and indexes a writer's expunge.
    pub(crate) fn put_tombstone(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
        tomb: &Tombstone,
    ) -> Result<(), StoreError> {
        let key = keys::tombstone(user, guid, uid, &tomb.digest);
        let mut t = *tomb;
        let old = match self.tombstones.get(key.as_slice())? {
            Some(v) => Some(decode::<Tombstone>(v.value(), "a tombstone")?),
            None => None,
        };
        if let Some(old) = old {
            t.stamp = t.stamp.max(old.stamp);
            t.origin = t.origin.max(old.origin);
            if old.origin != t.origin {
                if let Some(k) = kill_key(user, guid, uid, &old) {
                    self.identities.remove(k.as_slice())?;
                }
            }
        } else {
            self.counters.tombstones += 1;
        }
        self.tombstones
            .insert(key.as_slice(), encode(&t)?.as_slice())?;
        if let Some(k) = kill_key(user, guid, uid, &t) {
            self.identities
                .insert(k.as_slice(), encode(&t.stamp)?.as_slice())?;
        }
        if let Some(origin) = t.origin {
            let k = user_kill_key(user, &t.digest, origin);
            let held: Option<Stamp> = match self.user_kills.get(k.as_slice())? {
                Some(v) => Some(decode(v.value(), "a user kill")?),
                None => None,
            };
            if held.is_none_or(|s| s < t.stamp) {
                self.user_kills
                    .insert(k.as_slice(), encode(&t.stamp)?.as_slice())?;
            }
        }
        Ok(())
    }

    /// The latest writer's expunge of an identity in any mailbox of the user.
    fn user_kill(
        &self,
        user: &str,
        digest: &Digest,
        appended: Stamp,
    ) -> Result<Option<Tombstone>, StoreError> {
        let k = user_kill_key(user, digest, appended);
        Ok(match self.user_kills.get(k.as_slice())? {
            Some(v) => Some(Tombstone {
                digest: *digest,
                stamp: decode(v.value(), "a user kill")?,
                origin: Some(appended),
            }),
            None => None,
        })
    }

    /// Hands `visit` every identity row of one mailbox in key order, as (digest, appended,
    /// kind, UID, value); a key too short to split is passed over, as every reader does.
    fn each_identity(
        &self,
        user: &str,
        guid: MailboxGuid,
        mut visit: impl FnMut(Digest, Stamp, u8, u32, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (start, end) = mailbox_range(user, guid);
        for item in self.identities.range(start.as_slice()..=end.as_slice())? {
            let (k, v) = item?;
            if let Some((digest, appended, kind, uid)) =
                k.value().get(start.len()..).and_then(split_tail)
            {
                visit(digest, appended, kind, uid, v.value())?;
            }
        }
        Ok(())
    }

    /// A mailbox merged into `into` is going away: its writers' expunges (its own and those it
    /// inherited) now also hold in `into`, and kill what lives there already.
    pub(crate) fn inherit_kills(
        &mut self,
        user: &str,
        from: MailboxGuid,
        into: MailboxGuid,
    ) -> Result<(), StoreError> {
        let mut kills = Vec::new();
        self.each_identity(user, from, |digest, origin, kind, uid, value| {
            if kind != LIVE {
                let stamp: Stamp = decode(value, "an identity kill")?;
                kills.push((
                    uid,
                    Tombstone {
                        digest,
                        stamp,
                        origin: Some(origin),
                    },
                ));
            }
            Ok(())
        })?;
        for (uid, t) in kills {
            if let Some(origin) = t.origin {
                let k = key(user, into, &t.digest, origin, INHERITED, uid);
                self.identities
                    .insert(k.as_slice(), encode(&t.stamp)?.as_slice())?;
            }
            self.kill_elsewhere(user, into, &t)?;
        }
        Ok(())
    }

    /// A writer's expunge kills its identity at every UID of the mailbox.
    pub(crate) fn kill_elsewhere(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        tomb: &Tombstone,
    ) -> Result<(), StoreError> {
        let Some(origin) = tomb.origin else {
            return Ok(());
        };
        // This mailbox first, then the user's others (a merge may have put it there too),
        // unless no live message holds the body any more (the common case: one copy, just
        // removed), which spares a lookup per mailbox of the user.
        let mut guids = vec![guid];
        if self.bodies.references_of(self.txn, &tomb.digest)? > 0 {
            guids.extend(
                self.user_mailboxes(user)?
                    .into_iter()
                    .map(|m| m.guid)
                    .filter(|g| *g != guid),
            );
        }
        for g in guids {
            let found = self.placements(user, g, &tomb.digest, origin)?;
            for uid in found.live {
                self.bury(user, g, uid, tomb)?;
                self.fixes.killed += 1;
            }
        }
        Ok(())
    }

    /// Whether deleting `guid` as merged into another mailbox would drop mail: a message
    /// live in it (at a UID not in `removed`, the UIDs its own group expunges or removes
    /// first) whose identity lives in no other mailbox of the user and that no writer
    /// expunged. A merge means such a message to move into the winner, in another change
    /// group with its own guard; when that group was stale here, the delete must wait too
    /// (finding 9 of docs/RELIABILITY.md), or the message is gone on this replica.
    pub(crate) fn merged_delete_strands_mail(
        &self,
        user: &str,
        guid: MailboxGuid,
        removed: &std::collections::BTreeSet<u32>,
    ) -> Result<bool, StoreError> {
        let mut live = Vec::new();
        self.each_identity(user, guid, |digest, appended, kind, uid, _| {
            if kind == LIVE && !removed.contains(&uid) {
                live.push((digest, appended));
            }
            Ok(())
        })?;
        if live.is_empty() {
            return Ok(false);
        }
        let others: Vec<MailboxGuid> = self
            .user_mailboxes(user)?
            .into_iter()
            .map(|m| m.guid)
            .filter(|g| *g != guid)
            .collect();
        for (digest, appended) in live {
            if self.user_kill(user, &digest, appended)?.is_some() {
                continue;
            }
            let mut elsewhere = false;
            for g in &others {
                if !self
                    .placements(user, *g, &digest, appended)?
                    .live
                    .is_empty()
                {
                    elsewhere = true;
                    break;
                }
            }
            if !elsewhere {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stores a message that a peer's changes put at `uid`, keeping the identity rules: a
    /// message a writer expunged becomes that expunge's tombstone at `uid`; one live at another
    /// UID stays only at the higher of the two. Returns whether `record` was stored at `uid`.
    pub(crate) fn place_replicated(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
        record: &MessageRecord,
    ) -> Result<bool, StoreError> {
        let found = self.placements(user, guid, &record.digest, record.appended)?;
        let killed = match found.killed {
            Some(k) => Some(k),
            None => self.user_kill(user, &record.digest, record.appended)?,
        };
        if let Some(kill) = killed {
            self.bury(user, guid, uid, &kill)?;
            self.fixes.killed += 1;
            return Ok(false);
        }
        let moved = Tombstone::moved(record.digest, record.appended);
        let mut merged = record.clone();
        let mut lower = Vec::new();
        for other in found.live.into_iter().filter(|u| *u != uid) {
            let Some(m) = self.get_message(user, guid, other)? else {
                continue;
            };
            self.fixes.deduplicated += 1;
            if other > uid {
                // It lives higher up already: this UID gets a move tombstone.
                let mut kept = m.clone();
                kept.flags.merge(&record.flags);
                self.put_message(user, guid, other, &kept)?;
                self.bury(user, guid, uid, &moved)?;
                return Ok(false);
            }
            merged.flags.merge(&m.flags);
            lower.push(other);
        }
        for other in lower {
            self.bury(user, guid, other, &moved)?;
        }
        if merged != *record {
            self.put_message(user, guid, uid, &merged)?;
        }
        Ok(true)
    }
}

/// Rebuilds the index of one store from MESSAGES and TOMBSTONES (the format 1 → 2 upgrade).
pub(crate) fn rebuild(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    use super::tables::{IDENTITIES, MESSAGES, TOMBSTONES};
    let mut identities = txn.open_table(IDENTITIES)?;
    identities.retain(|_, _| false)?;
    let messages = txn.open_table(MESSAGES)?;
    let mut count = 0u64;
    for item in messages.iter()? {
        let (k, v) = item?;
        let (user, guid, uid) = keys::split_message(k.value())
            .ok_or_else(|| StoreError::Corrupt("malformed message key".into()))?;
        let (_, m) = super::tx::decode_message(v.value())?;
        identities.insert(live_key(&user, guid, uid, &m).as_slice(), [].as_slice())?;
        count += 1;
    }
    // Format 1 tombstones had no origin: re-encode them as moves (a writer's expunge made
    // before the upgrade keeps killing its UID, not copies a clash moved elsewhere).
    let mut tombstones = txn.open_table(TOMBSTONES)?;
    let mut old = Vec::new();
    for item in tombstones.iter()? {
        let (k, v) = item?;
        if decode::<Tombstone>(v.value(), "a tombstone").is_err() {
            let (digest, stamp): (Digest, Stamp) = decode(v.value(), "a format 1 tombstone")?;
            old.push((k.value().to_vec(), Tombstone::moved(digest, stamp)));
        }
    }
    for (k, t) in old {
        tombstones.insert(k.as_slice(), encode(&t)?.as_slice())?;
    }
    // Format 1 mailbox tombstones had no `merged_into`: they read as a writer's delete.
    let mut mailbox_tombstones = txn.open_table(super::tables::MAILBOX_TOMBSTONES)?;
    let mut old = Vec::new();
    for item in mailbox_tombstones.iter()? {
        let (k, v) = item?;
        if decode::<MailboxTombstone>(v.value(), "a mailbox tombstone").is_err() {
            let (guid, name, stamp): (MailboxGuid, String, Stamp) =
                decode(v.value(), "a format 1 mailbox tombstone")?;
            old.push((
                k.value().to_vec(),
                MailboxTombstone {
                    guid,
                    name,
                    stamp,
                    merged_into: None,
                },
            ));
        }
    }
    for (k, t) in old {
        mailbox_tombstones.insert(k.as_slice(), encode(&t)?.as_slice())?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewMessage, Store};

    /// The guard a session puts on a group for user u's mailbox `guid`: its node's hash as
    /// this store holds it now, cut to the window 0 prefix.
    fn guard_of(store: &Store, guid: MailboxGuid) -> [u8; 4] {
        store
            .node(&crate::merkle::NodeKey::Mailbox {
                user: "u".into(),
                guid,
            })
            .expect("node")
            .map_or(crate::merkle::NodeHash::EMPTY, |v| v.hash)
            .truncated(0)
    }

    /// Appends `n` distinct messages to `mailbox` of user `u`; returns their UIDs in order.
    fn append_n(store: &Store, mailbox: &str, n: u32) -> Vec<u32> {
        store
            .append("u", mailbox, (0..n).map(msg).collect())
            .expect("append")
            .iter()
            .map(|o| o.uid)
            .collect()
    }

    fn msg(i: u32) -> NewMessage {
        NewMessage {
            bytes: format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes(),
            ..NewMessage::default()
        }
    }

    /// Turns a format 2 store back into what format 1 wrote: no identity index, tombstones
    /// without an origin, mailbox tombstones without `merged_into`.
    fn downgrade(file: &std::path::Path) {
        use crate::store::tables::{IDENTITIES, MAILBOX_TOMBSTONES, META, TOMBSTONES};
        let db = redb::Database::open(file).expect("open redb");
        let txn = db.begin_write().expect("write");
        {
            txn.open_table(META)
                .expect("meta")
                .insert("format", 1u32.to_be_bytes().as_slice())
                .expect("format");
            txn.open_table(IDENTITIES)
                .expect("identities")
                .retain(|_, _| false)
                .expect("clear");
            let mut t = txn.open_table(TOMBSTONES).expect("tombstones");
            let all: Vec<(Vec<u8>, Tombstone)> = t
                .iter()
                .expect("iter")
                .map(|i| {
                    let (k, v) = i.expect("item");
                    (
                        k.value().to_vec(),
                        decode(v.value(), "t").expect("tombstone"),
                    )
                })
                .collect();
            for (k, tomb) in all {
                let old = encode(&(tomb.digest, tomb.stamp)).expect("encode");
                t.insert(k.as_slice(), old.as_slice()).expect("insert");
            }
            let mut m = txn
                .open_table(MAILBOX_TOMBSTONES)
                .expect("mailbox tombstones");
            let all: Vec<(Vec<u8>, MailboxTombstone)> = m
                .iter()
                .expect("iter")
                .map(|i| {
                    let (k, v) = i.expect("item");
                    (k.value().to_vec(), decode(v.value(), "m").expect("mt"))
                })
                .collect();
            for (k, tomb) in all {
                let old = encode(&(tomb.guid, tomb.name, tomb.stamp)).expect("encode");
                m.insert(k.as_slice(), old.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }

    #[test]
    fn a_format_1_store_is_upgraded_when_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, uids) = {
            let store = Store::init(dir.path(), "n").expect("init");
            let uids: Vec<u32> = append_n(&store, "INBOX", 4);
            store.expunge("u", "INBOX", &uids[..1]).expect("expunge");
            store.create_mailbox("u", "Old").expect("create");
            store.delete_mailbox("u", "Old").expect("delete");
            (store.root().expect("root"), uids)
        };
        downgrade(&dir.path().join(crate::store::DB_FILE));
        let store = Store::open(dir.path()).expect("the upgrade opens it");
        assert_eq!(store.root().expect("root"), root, "the tree is untouched");
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(store.counters().expect("counters").messages, 3);
        // The upgraded index works: expunging a message leaves a writer's tombstone.
        store.expunge("u", "INBOX", &uids[1..2]).expect("expunge");
        assert!(store.verify().expect("verify").is_ok());
        drop(store);
        // And the format is 2 now: opening again upgrades nothing.
        let store = Store::open(dir.path()).expect("reopen");
        assert!(store.verify().expect("verify").is_ok());
    }

    /// A peer's change that would make one append live at a second UID, or live again after a
    /// writer expunged it, is kept to the identity rules whatever UIDs the session compared.
    #[test]
    fn replicated_changes_keep_one_placement_and_respect_a_writers_expunge() {
        use crate::model::Change;
        let store = Store::in_memory("n").expect("store");
        let uids: Vec<u32> = append_n(&store, "INBOX", 2);
        let mut mailbox = store.mailbox("u", "INBOX").expect("inbox");
        let guid = mailbox.guid;
        mailbox.uidnext = 100;
        store
            .apply(&[Change::Mailbox {
                user: "u".into(),
                record: mailbox,
            }])
            .expect("raise UIDNEXT");
        let first = store.message("u", "INBOX", uids[0]).expect("first").record;
        let copy = |uid: u32, record: &crate::model::MessageRecord| Change::Message {
            user: "u".into(),
            guid,
            uid,
            record: record.clone(),
            body: None,
        };
        // The same append at a higher UID (another pair renumbered it from there): the higher
        // placement stays, the lower gets a move tombstone.
        store.apply(&[copy(50, &first)]).expect("apply");
        let live: Vec<u32> = store
            .list_messages("u", Some("INBOX"))
            .expect("list")
            .iter()
            .map(|m| m.uid)
            .collect();
        assert_eq!(live, vec![uids[1], 50]);
        // And at a lower one: nothing changes but a move tombstone there.
        store.apply(&[copy(40, &first)]).expect("apply");
        assert_eq!(
            store.list_messages("u", Some("INBOX")).expect("list").len(),
            2
        );
        // A writer expunges it at 50; a peer that still has it at 60 cannot bring it back.
        let body = store.body(&first.digest).expect("body");
        store.expunge("u", "INBOX", &[50]).expect("expunge");
        store
            .apply(&[Change::Message {
                user: "u".into(),
                guid,
                uid: 60,
                record: first.clone(),
                body: Some(body),
            }])
            .expect("apply");
        let live: Vec<u32> = store
            .list_messages("u", Some("INBOX"))
            .expect("list")
            .iter()
            .map(|m| m.uid)
            .collect();
        assert_eq!(live, vec![uids[1]]);
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{:?}", report.problems);
    }

    /// Finding 8 of docs/RELIABILITY.md: a mailbox merged into two different mailboxes leaves
    /// one append in both; a writer's expunge in one holds in the other, whichever arrives
    /// first.
    #[test]
    fn a_writers_expunge_holds_in_every_mailbox_of_the_user() {
        use crate::model::Change;
        let store = Store::in_memory("n").expect("store");
        store.create_mailbox("u", "Lists").expect("create");
        let trips = store.create_mailbox("u", "Trips").expect("create");
        let uids: Vec<u32> = append_n(&store, "Lists", 2);
        let mut mailbox = store.mailbox("u", "Trips").expect("trips");
        mailbox.uidnext = 10;
        let first = store.message("u", "Lists", uids[0]).expect("m").record;
        let second = store.message("u", "Lists", uids[1]).expect("m").record;
        let into_trips = |uid: u32, record: &crate::model::MessageRecord| Change::Message {
            user: "u".into(),
            guid: trips,
            uid,
            record: record.clone(),
            body: None,
        };
        // A merge elsewhere moved the first message into Trips too; then a writer expunges it
        // in Lists: it goes from Trips as well.
        store
            .apply(&[
                Change::Mailbox {
                    user: "u".into(),
                    record: mailbox,
                },
                into_trips(3, &first),
            ])
            .expect("apply");
        store.expunge("u", "Lists", &uids[..1]).expect("expunge");
        assert!(store
            .list_messages("u", Some("Trips"))
            .expect("list")
            .is_empty());
        // The other order: expunged in Lists first, then a copy arrives in Trips.
        let body = store.body(&second.digest).expect("body");
        store.expunge("u", "Lists", &uids[1..]).expect("expunge");
        store
            .apply(&[Change::Message {
                user: "u".into(),
                guid: trips,
                uid: 4,
                record: second.clone(),
                body: Some(body),
            }])
            .expect("apply");
        assert!(store
            .list_messages("u", Some("Trips"))
            .expect("list")
            .is_empty());
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{:?}", report.problems);
    }

    /// Finding 9 of docs/RELIABILITY.md (seed 70165): a mailbox merged into another is
    /// deleted by one change group and its mail moves by another, each with its own guard.
    /// When the winner's group is stale here (a writer changed the winner meanwhile), the
    /// loser's delete must not apply either, or its mail is gone from this replica; a writer's
    /// expunge stored in the same group first, or a copy already in the winner, lets it go.
    #[test]
    fn a_merged_mailbox_is_not_dropped_before_its_mail_has_moved() {
        use crate::model::{Change, ChangeGroup};
        let store = Store::in_memory("n").expect("store");
        let lists = store.create_mailbox("u", "Lists").expect("create");
        let trips = store.create_mailbox("u", "Trips").expect("create");
        let uids: Vec<u32> = append_n(&store, "Lists", 2);
        let kept = store.message("u", "Lists", uids[0]).expect("m").record;
        let expunged = store.message("u", "Lists", uids[1]).expect("m").record;
        let expect = |guid: MailboxGuid| guard_of(&store, guid);
        let mut winner = store.mailbox("u", "Trips").expect("trips");
        winner.uidnext = 10;
        let into_trips = |expect: [u8; 4]| ChangeGroup {
            user: "u".into(),
            guid: trips,
            window: 0,
            expect,
            changes: vec![
                Change::Mailbox {
                    user: "u".into(),
                    record: winner.clone(),
                },
                Change::Message {
                    user: "u".into(),
                    guid: trips,
                    uid: 5,
                    record: kept.clone(),
                    body: None,
                },
            ],
        };
        // The second message was expunged by a writer elsewhere: it does not move, its
        // expunge is stored before the mailbox goes.
        let kill = Tombstone::expunge(&expunged, expunged.appended);
        let delete_lists = |expect: [u8; 4]| ChangeGroup {
            user: "u".into(),
            guid: lists,
            window: 0,
            expect,
            changes: vec![
                Change::Expunge {
                    user: "u".into(),
                    guid: lists,
                    uid: uids[1],
                    tombstone: kill,
                },
                Change::DeleteMailbox {
                    user: "u".into(),
                    tombstone: MailboxTombstone {
                        guid: lists,
                        name: "Lists".into(),
                        stamp: winner.name_stamp,
                        merged_into: Some(trips),
                    },
                },
            ],
        };
        let live = |name: &str| -> Vec<Digest> {
            store
                .list_messages("u", Some(name))
                .map(|l| l.into_iter().map(|m| m.record.digest).collect())
                .unwrap_or_default()
        };
        // The winner's group is stale (its guard fails): the loser's delete waits.
        let stale = [0xde, 0xad, 0xbe, 0xef];
        let applied = store
            .apply_groups(&[into_trips(stale), delete_lists(expect(lists))])
            .expect("apply");
        assert_eq!(applied, vec![false, false]);
        assert_eq!(live("Lists"), vec![kept.digest, expunged.digest]);
        // Both groups apply: the message moved, the expunged one stays expunged, the mailbox
        // goes.
        let applied = store
            .apply_groups(&[into_trips(expect(trips)), delete_lists(expect(lists))])
            .expect("apply");
        assert_eq!(applied, vec![true, true]);
        assert_eq!(live("Trips"), vec![kept.digest]);
        assert!(store
            .list_mailboxes("u")
            .expect("list")
            .iter()
            .all(|m| m.guid != lists));
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{:?}", report.problems);
    }

    /// Finding 15 of docs/RELIABILITY.md (seed 135891), the other way round from finding 9:
    /// the loser's delete is stale here (a writer appended to it after the session read it)
    /// while the winner's group is not. Applying the winner's group alone put the loser's
    /// mail in both mailboxes with no merge tombstone to fold them; a rename of the winner
    /// elsewhere then kept both copies for ever. A merge applies whole or not at all, in
    /// whichever order its groups come.
    #[test]
    fn a_merge_whose_losers_delete_is_stale_moves_nothing() {
        use crate::model::{Change, ChangeGroup};
        let store = Store::in_memory("n").expect("store");
        let lists = store.create_mailbox("u", "Lists").expect("create");
        let trips = store.create_mailbox("u", "Trips").expect("create");
        let uids: Vec<u32> = append_n(&store, "Lists", 2);
        let records: Vec<MessageRecord> = uids
            .iter()
            .map(|u| store.message("u", "Lists", *u).expect("m").record)
            .collect();
        let expect = |guid: MailboxGuid| guard_of(&store, guid);
        let mut winner = store.mailbox("u", "Trips").expect("trips");
        winner.uidnext = 10;
        let into_trips = |expect: [u8; 4]| ChangeGroup {
            user: "u".into(),
            guid: trips,
            window: 0,
            expect,
            changes: std::iter::once(Change::Mailbox {
                user: "u".into(),
                record: winner.clone(),
            })
            .chain(records.iter().zip(5..).map(|(r, uid)| Change::Message {
                user: "u".into(),
                guid: trips,
                uid,
                record: r.clone(),
                body: None,
            }))
            .collect(),
        };
        let delete_lists = |expect: [u8; 4]| ChangeGroup {
            user: "u".into(),
            guid: lists,
            window: 0,
            expect,
            changes: vec![Change::DeleteMailbox {
                user: "u".into(),
                tombstone: MailboxTombstone {
                    guid: lists,
                    name: "Lists".into(),
                    stamp: winner.name_stamp,
                    merged_into: Some(trips),
                },
            }],
        };
        let live = |name: &str| -> Vec<Digest> {
            store
                .list_messages("u", Some(name))
                .map(|l| l.into_iter().map(|m| m.record.digest).collect())
                .unwrap_or_default()
        };
        let both: Vec<Digest> = records.iter().map(|r| r.digest).collect();
        // The session read Lists before a writer's append: its delete is stale, and the
        // winner's group waits with it, in either order.
        let (stale_lists, fresh_trips) = (expect(lists), expect(trips));
        store
            .append("u", "Lists", vec![msg(7)])
            .expect("a writer's append");
        assert_ne!(expect(lists), stale_lists);
        for order in [true, false] {
            let mut groups = vec![into_trips(fresh_trips), delete_lists(stale_lists)];
            if !order {
                groups.reverse();
            }
            let applied = store.apply_groups(&groups).expect("apply");
            assert_eq!(applied, vec![false, false]);
            assert!(live("Trips").is_empty());
            assert_eq!(live("Lists").len(), 3);
        }
        // A plain delete of another mailbox, stale too, holds back nothing.
        let mut plain = delete_lists(stale_lists);
        if let Change::DeleteMailbox { tombstone, .. } = &mut plain.changes[0] {
            tombstone.merged_into = None;
        }
        let applied = store
            .apply_groups(&[into_trips(fresh_trips), plain])
            .expect("apply");
        assert_eq!(applied, vec![true, false]);
        assert_eq!(live("Trips"), both);
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{:?}", report.problems);
    }
}
