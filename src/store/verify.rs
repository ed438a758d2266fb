//! `verify`: rebuild the tree from the records and compare it with the stored one node by
//! node; also check the counters and the bodies' reference counts.
//!
//! `verify --bodies` ([`Store::verify_bodies`]) also re-hashes every stored body: bit rot
//! leaves the records and the tree intact (neither holds body bytes) but a body that no
//! longer matches its digest. Those bodies are marked damaged (store/body.rs), and
//! [`Store::repair_body`] puts a good copy from a peer in place.

use super::body::{damaged_marks, mark_damaged, DamagedMark};
use super::error::StoreError;
use super::keys;
use super::ops::Counters;
use super::read::each_message;
use super::tables::*;
use super::tx::{decode, decode_message};
use super::Store;
use crate::merkle::{entry_hash, rebuild, NodeKey, NodeValue};
use crate::model::{no_progress, Digest, MailboxRecord, Progress};
use redb::{ReadableTable, ReadableTableMetadata};
use std::collections::BTreeMap;

/// What `verify` found. `problems` is empty when the store is sound.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub nodes_checked: u64,
    pub messages_checked: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn describe(key: &[u8]) -> String {
    NodeKey::decode(key).map_or_else(
        || format!("undecodable key {}", hex::encode(key)),
        |k| k.to_string(),
    )
}

/// How far `verify_bodies` has come: the model's [`Progress`], counting bodies.
pub type BodyProgress = Progress;

/// A message that uses a body.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BodyUse {
    pub user: String,
    pub mailbox: String,
    pub uid: u32,
}

/// A body whose bytes do not match the digest they are stored under.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DamagedBody {
    /// The digest the body is stored under (the messages' digest).
    pub digest: Digest,
    /// What the bytes found hash to.
    pub actual: Digest,
    /// How many bytes were found.
    pub size: u64,
    /// The messages that use it.
    pub messages: Vec<BodyUse>,
}

/// What `verify_bodies` found: `damaged` is empty when every body matches its digest.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BodyReport {
    pub bodies_checked: u64,
    pub bytes_checked: u64,
    pub damaged: Vec<DamagedBody>,
}

impl Store {
    /// Re-hashes every stored body and compares it with the digest it is stored under. The
    /// marks on damaged bodies are set to what this scan found (a mark whose body is sound
    /// again, or gone, is cleared), in one transaction; nothing else changes. `progress` is
    /// called after every body.
    pub fn verify_bodies(
        &self,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<BodyReport, StoreError> {
        let txn = self.read_txn()?;
        let mut at = Progress::of(0, self.bodies.count(&txn)?, 0);
        let mut found: BTreeMap<Digest, DamagedBody> = BTreeMap::new();
        self.bodies.for_each(&txn, &mut |digest, bytes| {
            let actual = Digest::of(bytes);
            if actual != digest {
                found.insert(
                    digest,
                    DamagedBody {
                        digest,
                        actual,
                        size: bytes.len() as u64,
                        messages: Vec::new(),
                    },
                );
            }
            at.done += 1;
            at.bytes += bytes.len() as u64;
            progress(at);
            Ok(())
        })?;
        if !found.is_empty() {
            // Which messages use them: one pass over the records.
            let mailboxes = txn.open_table(MAILBOXES)?;
            let mut names: BTreeMap<Vec<u8>, String> = BTreeMap::new();
            for item in mailboxes.iter()? {
                let (k, v) = item?;
                let record: MailboxRecord = decode(v.value(), "a mailbox")?;
                names.insert(k.value().to_vec(), record.name);
            }
            for item in txn.open_table(MESSAGES)?.iter()? {
                let (k, v) = item?;
                let (_, message) = decode_message(v.value())?;
                let Some(body) = found.get_mut(&message.digest) else {
                    continue;
                };
                let (user, guid, uid) = keys::split_message(k.value())
                    .ok_or_else(|| StoreError::Corrupt("malformed message key".into()))?;
                let mailbox = names
                    .get(keys::mailbox(&user, guid).as_slice())
                    .cloned()
                    .unwrap_or_else(|| guid.to_hex());
                body.messages.push(BodyUse { user, mailbox, uid });
            }
        }
        drop(txn);
        for body in found.values_mut() {
            body.messages
                .sort_by(|a, b| (&a.user, &a.mailbox, a.uid).cmp(&(&b.user, &b.mailbox, b.uid)));
        }
        let report = BodyReport {
            bodies_checked: at.done,
            bytes_checked: at.bytes,
            damaged: found.into_values().collect(),
        };
        let stale: Vec<Digest> = self
            .damaged_bodies()?
            .into_iter()
            .map(|(d, _)| d)
            .filter(|d| !report.damaged.iter().any(|b| b.digest == *d))
            .collect();
        if !report.damaged.is_empty() || !stale.is_empty() {
            self.write_replicated(|tx| {
                let now = tx.now_ms();
                for d in &stale {
                    super::body::unmark_damaged(tx.txn, d)?;
                }
                for b in &report.damaged {
                    let mark = DamagedMark {
                        found_ms: now,
                        actual: b.actual,
                    };
                    mark_damaged(tx.txn, &b.digest, &mark)?;
                }
                Ok(())
            })?;
        }
        Ok(report)
    }

    /// The bodies marked damaged, waiting for a good copy.
    pub fn damaged_bodies(&self) -> Result<Vec<(Digest, DamagedMark)>, StoreError> {
        damaged_marks(&self.read_txn()?)
    }

    /// Marks a body damaged whose bytes were found not to hash to `digest` on a read.
    pub(crate) fn mark_damaged(&self, digest: &Digest, actual: Digest) -> Result<(), StoreError> {
        self.write_replicated(|tx| {
            let mark = DamagedMark {
                found_ms: tx.now_ms(),
                actual,
            };
            mark_damaged(tx.txn, digest, &mark)
        })
    }

    /// A body by digest, only if it is held and its bytes still match the digest (what a peer
    /// is given: never bytes that rotted).
    pub fn sound_body(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        sound_body_of(self.has_body(digest)?, || self.body(digest))
    }

    /// Puts a good copy of a damaged body in place, in one transaction, and clears its mark.
    /// `bytes` must hash to `digest` (else `Invalid`, nothing changed). Returns false, changing
    /// nothing, when the body is not held or not marked damaged (repaired or freed meanwhile).
    pub fn repair_body(&self, digest: &Digest, bytes: &[u8]) -> Result<bool, StoreError> {
        let actual = Digest::of(bytes);
        if actual != *digest {
            return Err(StoreError::Invalid(format!(
                "the copy offered for body {digest} hashes to {actual}"
            )));
        }
        self.write_replicated(|tx| {
            if !super::body::unmark_damaged(tx.txn, digest)? {
                return Ok(false);
            }
            if !tx.bodies.replace(tx.txn, digest, bytes)? {
                return Ok(false);
            }
            Ok(true)
        })
    }

    /// Rebuilds the whole tree from the records and compares it with the stored tree.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.verify_with_progress(&mut no_progress)
    }

    /// [`Store::verify`], telling `progress` after every message read how many of the
    /// store's message records have been checked, and their bytes.
    pub fn verify_with_progress(
        &self,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<VerifyReport, StoreError> {
        let txn = self.read_txn()?;
        let mailboxes = txn.open_table(MAILBOXES)?;
        let messages = txn.open_table(MESSAGES)?;
        let mut at = Progress::of(0, messages.len()?, 0);
        progress(at);
        let identities = txn.open_table(super::tables::IDENTITIES)?;
        let mut report = VerifyReport::default();
        let mut recount = Counters::default();
        let mut refs: BTreeMap<Digest, u64> = BTreeMap::new();

        let mut items = Vec::new();
        for item in mailboxes.iter()? {
            let (k, v) = item?;
            let (user, guid) = keys::split_mailbox(k.value())
                .ok_or_else(|| StoreError::Corrupt("malformed mailbox key".into()))?;
            let record: MailboxRecord = decode(v.value(), "a mailbox")?;
            if record.guid != guid {
                report.problems.push(format!(
                    "mailbox {guid} of {user:?} holds a record for {}",
                    record.guid
                ));
            }
            recount.mailboxes += 1;
            items.push((user, record));
        }
        // One mailbox's entries at a time, so memory stays bounded by the largest mailbox.
        let stream = items.into_iter().map(|(user, record)| {
            let mut entries = Vec::new();
            each_message(&messages, &user, record.guid, (0, u32::MAX), |uid, v| {
                let (stored, message) = decode_message(v)?;
                let hash = entry_hash(uid, &message.digest, &message.flags);
                if stored != hash {
                    report.problems.push(format!(
                        "user {user:?} mailbox {} UID {uid}: stored entry hash is stale",
                        record.name
                    ));
                }
                if uid >= record.uidnext {
                    report.problems.push(format!(
                        "user {user:?} mailbox {} UID {uid} is not below UIDNEXT {}",
                        record.name, record.uidnext
                    ));
                }
                let ikey = super::identity::live_key(&user, record.guid, uid, &message);
                if identities.get(ikey.as_slice())?.is_none() {
                    report.problems.push(format!(
                        "user {user:?} mailbox {} UID {uid}: missing from the identity index",
                        record.name
                    ));
                }
                recount.messages += 1;
                recount.message_bytes += message.size;
                at.done += 1;
                at.bytes += message.size;
                at.total = at.total.map(|t| t.max(at.done));
                progress(at);
                *refs.entry(message.digest).or_default() += 1;
                entries.push((uid, hash));
                Ok(())
            })?;
            Ok::<_, StoreError>((user, record, entries))
        });
        let rebuilt = rebuild(stream)?;
        report.messages_checked = recount.messages;

        // The identity index holds exactly the live messages, and a writer's expunge only
        // where its tombstone is.
        let tombstones = txn.open_table(super::tables::TOMBSTONES)?;
        let mut indexed_live = 0u64;
        for item in identities.iter()? {
            let (k, _) = item?;
            let parsed = keys::split_mailbox_prefix(k.value()).and_then(|(user, guid, tail)| {
                super::identity::split_tail(tail).map(|t| (user, guid, t))
            });
            let Some((user, guid, (digest, origin, kind, uid))) = parsed else {
                report.problems.push("malformed identity index key".into());
                continue;
            };
            if kind == 0 {
                indexed_live += 1;
                continue;
            }
            if kind == 2 {
                // Inherited from a mailbox merged into this one: no tombstone of its own.
                continue;
            }
            let tomb: Option<crate::model::Tombstone> =
                match tombstones.get(keys::tombstone(&user, guid, uid, &digest).as_slice())? {
                    Some(v) => Some(decode(v.value(), "a tombstone")?),
                    None => None,
                };
            if tomb.and_then(|t| t.origin) != Some(origin) {
                report.problems.push(format!(
                    "user {user:?} mailbox {guid} UID {uid}: the identity index names an expunge no tombstone holds"
                ));
            }
        }
        if indexed_live != recount.messages {
            report.problems.push(format!(
                "the identity index lists {indexed_live} live messages, the store holds {}",
                recount.messages
            ));
        }
        let stored_count = messages.len()?;
        if stored_count != recount.messages {
            report.problems.push(format!(
                "{} message records belong to no mailbox",
                stored_count - recount.messages
            ));
        }

        // Merge-join the stored tree with the rebuilt one.
        let tree = txn.open_table(TREE)?;
        let mut stored: BTreeMap<Vec<u8>, NodeValue> = BTreeMap::new();
        for item in tree.iter()? {
            let (k, v) = item?;
            match NodeValue::decode(v.value()) {
                Some(value) => {
                    stored.insert(k.value().to_vec(), value);
                }
                None => report
                    .problems
                    .push(format!("{}: malformed stored node", describe(k.value()))),
            }
        }
        for (key, want) in &rebuilt {
            report.nodes_checked += 1;
            match stored.remove(key) {
                None => report
                    .problems
                    .push(format!("{}: missing from the stored tree", describe(key))),
                Some(got) if got != *want => report.problems.push(format!(
                    "{}: stored hash {} count {}, rebuilt hash {} count {}",
                    describe(key),
                    &got.hash.to_hex()[..16],
                    got.count,
                    &want.hash.to_hex()[..16],
                    want.count
                )),
                Some(_) => {}
            }
        }
        for key in stored.keys() {
            report
                .problems
                .push(format!("{}: stored but should not exist", describe(key)));
        }

        // A staging mark holds one reference to its body until a change takes it or it
        // expires (store/replica.rs).
        for item in txn.open_table(super::tables::STAGED)?.iter()? {
            let (k, v) = item?;
            match (
                super::replica::StagedMark::decode(v.value()),
                <[u8; 32]>::try_from(k.value()),
            ) {
                (Ok(_), Ok(digest)) => *refs.entry(Digest(digest)).or_default() += 1,
                _ => report.problems.push("a malformed staging mark".into()),
            }
        }
        // Bodies: every referenced body is held, with the right count, and nothing else is.
        let held: BTreeMap<Digest, u64> = self.bodies.references(&txn)?.into_iter().collect();
        if held != refs {
            let missing = refs.keys().filter(|d| !held.contains_key(*d)).count();
            let orphaned = held.keys().filter(|d| !refs.contains_key(*d)).count();
            let wrong = refs
                .iter()
                .filter(|(d, n)| held.get(*d).is_some_and(|h| h != *n))
                .count();
            report.problems.push(format!(
                "bodies: {missing} referenced but missing, {orphaned} held but unreferenced, {wrong} with a wrong reference count"
            ));
        }
        for digest in held.keys() {
            if let Some(bytes) = self.bodies.read(&txn, digest)? {
                recount.bodies += 1;
                recount.body_bytes += bytes.len() as u64;
            }
        }

        recount.users = txn.open_table(USERS)?.len()?;
        recount.tombstones = txn.open_table(TOMBSTONES)?.len()?;
        recount.mailbox_tombstones = txn.open_table(MAILBOX_TOMBSTONES)?.len()?;
        let counters = self.counters()?;
        if counters != recount {
            report.problems.push(format!(
                "counters say {counters:?} but the records hold {recount:?}"
            ));
        }
        Ok(report)
    }
}

/// A body only if `held` and `read` does not find it damaged: a damaged body is treated as
/// not held, any other failure is passed on. The `Replica` trait's default shares it, so a
/// model withholds rotted bytes exactly as the store does.
pub fn sound_body_of(
    held: bool,
    read: impl FnOnce() -> Result<Vec<u8>, StoreError>,
) -> Result<Option<Vec<u8>>, StoreError> {
    if !held {
        return Ok(None);
    }
    match read() {
        Ok(bytes) => Ok(Some(bytes)),
        Err(StoreError::BodyDamaged(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FlagName, FlagOp};
    use crate::store::NewMessage;

    fn store_with_mail() -> Store {
        let store = Store::in_memory("t").expect("store");
        let msgs = (0..100)
            .map(|i| NewMessage {
                bytes: format!("Subject: {i}\r\n\r\nx\r\n").into_bytes(),
                ..Default::default()
            })
            .collect();
        store.append("alice", "INBOX", msgs).expect("append");
        store
    }

    #[test]
    fn a_sound_store_verifies() {
        let report = store_with_mail().verify().expect("verify");
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.messages_checked, 100);
    }

    #[test]
    fn a_change_that_skipped_the_tree_is_found() {
        let mut store = store_with_mail();
        store.set_tree_maintenance_for_bench(false);
        let seen = FlagName::parse("\\Seen").expect("flag");
        store
            .set_flags("alice", "INBOX", 70, FlagOp::Add, &[seen])
            .expect("flags");
        let report = store.verify().expect("verify");
        assert!(!report.is_ok());
        assert!(
            report.problems.iter().any(|p| p.contains("UIDs 64..=127")),
            "{:?}",
            report.problems
        );
        assert!(
            report.problems.iter().any(|p| p.starts_with("root")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn the_bench_hook_times_the_tree_and_changes_nothing() {
        let store = store_with_mail();
        let root = store.root().expect("root");
        let guid = crate::model::inbox_guid("alice");
        let times = store
            .time_tree_update_for_bench("alice", guid, 70, &[0, 7, u8::MAX])
            .expect("timed");
        assert_eq!(times.len(), 3);
        assert_eq!(store.root().expect("root"), root);
        assert!(store.verify().expect("verify").is_ok());
        assert!(store
            .time_tree_update_for_bench("alice", guid, 999, &[u8::MAX])
            .is_err());
    }

    #[test]
    fn a_missing_or_extra_node_is_found() {
        let store = store_with_mail();
        let txn = store.begin_write().expect("txn");
        {
            let mut tree = txn.open_table(TREE).expect("tree");
            tree.remove(NodeKey::root().encode().as_slice())
                .expect("remove");
            let stray = NodeKey::Top { level: 3, index: 5 }.encode();
            tree.insert(stray.as_slice(), [0u8; 40].as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
        let problems = store.verify().expect("verify").problems;
        assert!(
            problems
                .iter()
                .any(|p| p == "root: missing from the stored tree"),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p == "user bucket 005: stored but should not exist"),
            "{problems:?}"
        );
    }

    /// Overwrites a body's bytes under its digest, as bit rot on disk would.
    fn rot(store: &Store, digest: &Digest) {
        let txn = store.begin_write().expect("txn");
        {
            let mut bytes = crate::store::body::get_bytes(&txn, digest)
                .expect("get")
                .expect("held");
            bytes[0] ^= 0x20;
            crate::store::body::put_bytes(&txn, digest, &bytes).expect("put");
        }
        txn.commit().expect("commit");
    }

    #[test]
    fn bit_rot_is_found_marked_refused_on_read_and_repaired_with_a_good_copy() {
        let store = store_with_mail();
        let good = b"Subject: 7\r\n\r\nx\r\n".to_vec();
        let digest = Digest::of(&good);
        // The same body in a second mailbox: both messages are named.
        store.create_mailbox("alice", "Keep").expect("create");
        store
            .append(
                "alice",
                "Keep",
                vec![NewMessage {
                    bytes: good.clone(),
                    ..Default::default()
                }],
            )
            .expect("append");
        let root = store.root().expect("root");
        let clean = store.verify_bodies(&mut |_| {}).expect("verify");
        assert!(clean.damaged.is_empty());
        assert_eq!(clean.bodies_checked, 100);

        rot(&store, &digest);
        // The records and the tree hold no body bytes: plain verify still passes.
        assert!(store.verify().expect("verify").is_ok());
        let mut calls = 0;
        let report = store
            .verify_bodies(&mut |p| {
                calls += 1;
                assert!(p.total.is_some_and(|t| p.done <= t));
            })
            .expect("verify bodies");
        assert_eq!(calls, 100);
        assert_eq!(report.damaged.len(), 1);
        let damaged = &report.damaged[0];
        assert_eq!(damaged.digest, digest);
        assert_ne!(damaged.actual, digest);
        let uses: Vec<(String, u32)> = damaged
            .messages
            .iter()
            .map(|m| (m.mailbox.clone(), m.uid))
            .collect();
        assert_eq!(uses, [("INBOX".to_string(), 8), ("Keep".to_string(), 1)]);
        let marks = store.damaged_bodies().expect("marks");
        assert_eq!(marks.len(), 1);
        assert_eq!(marks[0].0, digest);
        assert_eq!(marks[0].1.actual, damaged.actual);

        // Rotten bytes are never handed out.
        assert!(matches!(
            store.fetch("alice", "INBOX", 8),
            Err(StoreError::BodyDamaged(d)) if d == digest
        ));
        assert_eq!(store.sound_body(&digest).expect("sound"), None);

        // A copy that does not hash to the digest is refused and changes nothing.
        assert!(matches!(
            store.repair_body(&digest, b"something else"),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(store.damaged_bodies().expect("marks").len(), 1);

        assert!(store.repair_body(&digest, &good).expect("repair"));
        assert!(store.damaged_bodies().expect("marks").is_empty());
        assert_eq!(store.fetch("alice", "INBOX", 8).expect("fetch"), good);
        assert_eq!(store.root().expect("root"), root);
        assert!(store.verify().expect("verify").is_ok());
        assert!(store
            .verify_bodies(&mut |_| {})
            .expect("verify")
            .damaged
            .is_empty());
        // A second repair finds nothing to do.
        assert!(!store.repair_body(&digest, &good).expect("repair"));
    }

    #[test]
    fn a_read_marks_rot_and_a_change_that_brings_the_body_mends_it() {
        let store = store_with_mail();
        let good = b"Subject: 3\r\n\r\nx\r\n".to_vec();
        let digest = Digest::of(&good);
        rot(&store, &digest);
        assert!(store.damaged_bodies().expect("marks").is_empty());
        assert!(store.fetch("alice", "INBOX", 4).is_err());
        assert_eq!(store.damaged_bodies().expect("marks").len(), 1);
        // Appending the same bytes again (a good copy) replaces the rotten one.
        store
            .append(
                "alice",
                "INBOX",
                vec![NewMessage {
                    bytes: good.clone(),
                    ..Default::default()
                }],
            )
            .expect("append");
        assert!(store.damaged_bodies().expect("marks").is_empty());
        assert_eq!(store.fetch("alice", "INBOX", 4).expect("fetch"), good);
        assert!(store.verify().expect("verify").is_ok());
    }

    #[test]
    fn a_mark_goes_when_its_body_is_freed() {
        let store = store_with_mail();
        let digest = Digest::of(b"Subject: 0\r\n\r\nx\r\n");
        rot(&store, &digest);
        store.verify_bodies(&mut |_| {}).expect("verify");
        assert_eq!(store.damaged_bodies().expect("marks").len(), 1);
        store.expunge("alice", "INBOX", &[1]).expect("expunge");
        assert!(store.damaged_bodies().expect("marks").is_empty());
        assert!(store.verify().expect("verify").is_ok());
    }

    #[test]
    fn an_append_whose_stated_md5_or_digest_differs_stores_nothing() {
        let store = store_with_mail();
        let root = store.root().expect("root");
        let counters = store.counters().expect("counters");
        let bytes = b"Subject: new\r\n\r\nx\r\n".to_vec();
        let ok = NewMessage {
            bytes: bytes.clone(),
            md5: Some(crate::model::Md5::of(&bytes)),
            digest: Some(Digest::of(&bytes)),
            ..Default::default()
        };
        for bad in [
            NewMessage {
                md5: Some(crate::model::Md5::of(b"other")),
                ..ok.clone()
            },
            NewMessage {
                digest: Some(Digest::of(b"other")),
                ..ok.clone()
            },
        ] {
            // The bad one second: a batch is all or nothing.
            let err = store
                .append("alice", "INBOX", vec![ok.clone(), bad])
                .expect_err("refused");
            assert!(err.is_client_error(), "{err}");
            assert!(err.to_string().contains("message 2"), "{err}");
            assert_eq!(store.root().expect("root"), root);
            assert_eq!(store.counters().expect("counters"), counters);
        }
        store.append("alice", "INBOX", vec![ok]).expect("append");
        assert_ne!(store.root().expect("root"), root);
    }

    #[test]
    fn a_replicated_message_whose_body_disagrees_with_its_record_is_refused() {
        use crate::model::Change;
        let source = store_with_mail();
        let info = source.message("alice", "INBOX", 5).expect("message");
        let body = source.fetch("alice", "INBOX", 5).expect("body");
        let mailbox = crate::model::Change::Mailbox {
            user: "alice".into(),
            record: {
                let txn = source.read_txn().expect("txn");
                let t = txn.open_table(MAILBOXES).expect("t");
                let v = t
                    .get(keys::mailbox("alice", info.guid).as_slice())
                    .expect("get")
                    .expect("mailbox");
                decode(v.value(), "a mailbox").expect("decode")
            },
        };
        let target = Store::in_memory("u").expect("store");
        target
            .apply(std::slice::from_ref(&mailbox))
            .expect("mailbox");
        let root = target.root().expect("root");
        let wrong_md5 = crate::model::MessageRecord {
            md5: crate::model::Md5([7; 16]),
            ..info.record.clone()
        };
        let wrong_size = crate::model::MessageRecord {
            size: info.record.size + 1,
            ..info.record.clone()
        };
        let message = |record: crate::model::MessageRecord, body: Vec<u8>| Change::Message {
            user: "alice".into(),
            guid: info.guid,
            uid: 5,
            record,
            body: Some(body),
        };
        let mut flipped = body.clone();
        flipped[0] ^= 1;
        for (change, what) in [
            (message(info.record.clone(), flipped), "digest"),
            (message(wrong_md5.clone(), body.clone()), "MD5"),
            (message(wrong_size, body.clone()), "size"),
        ] {
            let err = target.apply(&[change]).expect_err("refused");
            assert!(err.to_string().contains(what), "{what}: {err}");
            assert!(err.is_client_error());
            assert_eq!(target.root().expect("root"), root);
            assert_eq!(target.counters().expect("c").bodies, 0);
        }
        // Staged ahead (as a session's PutBodies does), then a record with the wrong MD5.
        target
            .stage_bodies(&[crate::model::CheckedBody::new(&body)])
            .expect("stage");
        let staged = Change::Message {
            user: "alice".into(),
            guid: info.guid,
            uid: 5,
            record: wrong_md5.clone(),
            body: None,
        };
        assert!(target.apply(&[staged]).is_err());
        assert_eq!(target.root().expect("root"), root);
        // Held already (here under UID 5), then copied to UID 6 with a wrong MD5.
        target
            .apply(&[message(info.record.clone(), body.clone())])
            .expect("good copy");
        let copy = Change::Message {
            user: "alice".into(),
            guid: info.guid,
            uid: 6,
            record: wrong_md5,
            body: None,
        };
        let root = target.root().expect("root");
        assert!(target.apply(&[copy]).is_err());
        assert_eq!(target.root().expect("root"), root);
        assert!(target.verify().expect("verify").is_ok());
    }
}
