//! `verify`: rebuild the tree from the records and compare it with the stored one node by
//! node; also check the counters and the bodies' reference counts.

use super::error::StoreError;
use super::keys;
use super::ops::Counters;
use super::tables::*;
use super::tx::{decode, decode_message};
use super::Store;
use crate::merkle::{entry_hash, rebuild, NodeKey, NodeValue};
use crate::model::{Digest, MailboxRecord};
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

impl Store {
    /// Rebuilds the whole tree from the records and compares it with the stored tree.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let txn = self.read_txn()?;
        let mailboxes = txn.open_table(MAILBOXES)?;
        let messages = txn.open_table(MESSAGES)?;
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
            let (start, end) = keys::uid_range(&user, record.guid, 0, u32::MAX);
            let mut entries = Vec::new();
            for item in messages.range(start.as_slice()..=end.as_slice())? {
                let (k, v) = item?;
                let (_, _, uid) = keys::split_message(k.value())
                    .ok_or_else(|| StoreError::Corrupt("malformed message key".into()))?;
                let (stored, message) = decode_message(v.value())?;
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
                recount.messages += 1;
                recount.message_bytes += message.size;
                *refs.entry(message.digest).or_default() += 1;
                entries.push((uid, hash));
            }
            Ok::<_, StoreError>((user, record, entries))
        });
        let rebuilt = rebuild(stream)?;
        report.messages_checked = recount.messages;

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
        let txn = store.db.begin_write().expect("txn");
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
}
