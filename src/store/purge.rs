//! Forgetting old tombstones. An expunge or a mailbox deletion leaves a tombstone so that a
//! peer that missed it learns of it instead of copying the message back; after the retention
//! (config `tombstone_retention_days`, longer than any outage you expect) the tombstone goes.
//! A peer that comes back after longer than that brings the message back: no mail is lost,
//! an expunge is. Tombstones are not in the Merkle tree, so purging changes no root.

use super::error::StoreError;
use super::tx::decode;
use super::Store;
use crate::model::{MailboxTombstone, Tombstone};
use redb::ReadableTable;

/// What one purge removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub tombstones: u64,
    pub mailbox_tombstones: u64,
}

impl Store {
    /// Removes message and mailbox tombstones whose stamp is older than `before_ms` (ms since
    /// the epoch), in one transaction. Not journaled: every node purges by its own clock.
    pub fn purge_tombstones(&self, before_ms: u64) -> Result<Purged, StoreError> {
        self.write_replicated(|tx| {
            let mut purged = Purged::default();
            let mut old = Vec::new();
            let mut kills = Vec::new();
            let mut user_kills = Vec::new();
            for item in tx.tombstones.iter()? {
                let (k, v) = item?;
                let t: Tombstone = decode(v.value(), "a tombstone")?;
                if t.stamp.ms < before_ms {
                    old.push(k.value().to_vec());
                    let kill =
                        super::keys::split_tombstone(k.value()).and_then(|(user, guid, uid)| {
                            super::identity::kill_key(&user, guid, uid, &t)
                        });
                    if let Some(kill) = kill {
                        kills.push(kill);
                    }
                    if let (Some(origin), Some((user, _, _))) =
                        (t.origin, super::keys::split_tombstone(k.value()))
                    {
                        user_kills.push(super::identity::user_kill_key(&user, &t.digest, origin));
                    }
                }
            }
            for k in &old {
                tx.tombstones.remove(k.as_slice())?;
            }
            for k in &kills {
                tx.identities.remove(k.as_slice())?;
            }
            for k in &user_kills {
                tx.user_kills.remove(k.as_slice())?;
            }
            purged.tombstones = old.len() as u64;
            old.clear();
            for item in tx.mailbox_tombstones.iter()? {
                let (k, v) = item?;
                let t: MailboxTombstone = decode(v.value(), "a mailbox tombstone")?;
                if t.stamp.ms < before_ms {
                    old.push(k.value().to_vec());
                }
            }
            for k in &old {
                tx.mailbox_tombstones.remove(k.as_slice())?;
            }
            purged.mailbox_tombstones = old.len() as u64;
            tx.counters.tombstones = tx.counters.tombstones.saturating_sub(purged.tombstones);
            tx.counters.mailbox_tombstones = tx
                .counters
                .mailbox_tombstones
                .saturating_sub(purged.mailbox_tombstones);
            Ok(purged)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Change;
    use crate::model::Stamp;
    use crate::store::NewMessage;

    #[test]
    fn only_tombstones_older_than_the_cutoff_go_and_roots_stay() {
        let store = Store::in_memory("n").expect("store");
        let uids: Vec<u32> = store
            .append(
                "u",
                "INBOX",
                (0..3)
                    .map(|i| NewMessage {
                        bytes: format!("Subject: {i}\r\n\r\n{i}\r\n").into_bytes(),
                        ..NewMessage::default()
                    })
                    .collect(),
            )
            .expect("append")
            .iter()
            .map(|o| o.uid)
            .collect();
        store.expunge("u", "INBOX", &uids[..1]).expect("expunge");
        // A tombstone from long ago, as a peer would have sent it.
        let guid = store.mailbox("u", "INBOX").expect("inbox").guid;
        let digest = store
            .message("u", "INBOX", uids[1])
            .expect("msg")
            .record
            .digest;
        store
            .apply(&[Change::Expunge {
                user: "u".into(),
                guid,
                uid: uids[1],
                tombstone: Tombstone {
                    digest,
                    stamp: Stamp {
                        ms: 1_000,
                        counter: 0,
                        node: 1,
                    },
                    origin: None,
                },
            }])
            .expect("apply");
        store.create_mailbox("u", "Old").expect("create");
        store.delete_mailbox("u", "Old").expect("delete");
        assert_eq!(store.counters().expect("c").tombstones, 2);
        let root = store.root().expect("root");
        let purged = store.purge_tombstones(2_000).expect("purge");
        assert_eq!(
            purged,
            Purged {
                tombstones: 1,
                mailbox_tombstones: 0
            }
        );
        assert_eq!(store.counters().expect("c").tombstones, 1);
        assert_eq!(store.counters().expect("c").mailbox_tombstones, 1);
        assert_eq!(store.root().expect("root"), root);
        let purged = store.purge_tombstones(u64::MAX).expect("purge");
        assert_eq!(
            purged,
            Purged {
                tombstones: 1,
                mailbox_tombstones: 1
            }
        );
        assert_eq!(store.verify().map(|r| r.is_ok()).ok(), Some(true));
    }
}
