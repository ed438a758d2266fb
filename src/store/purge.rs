//! Forgetting old tombstones. An expunge or a mailbox deletion leaves a tombstone so that a
//! peer that missed it learns of it instead of copying the message back. The store lists the
//! tombstones past a cutoff and forgets the ones it is handed; which of them may go (older
//! than the retention and known to every configured peer) is the daemon's rule, in
//! daemon/tombstones.rs. Tombstones are not in the Merkle tree, so purging changes no root.

use super::error::StoreError;
use super::tables::{MAILBOX_TOMBSTONES, TOMBSTONES};
use super::tx::decode;
use super::Store;
use crate::model::{MailboxTombstone, Stamp, Tombstone};
use redb::{ReadableTable, Table};

/// What one purge removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub tombstones: u64,
    pub mailbox_tombstones: u64,
}

/// Which tombstone: the table it is in and its key there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TombstoneKey {
    /// An expunge tombstone, keyed by (user, mailbox GUID, UID).
    Message(Vec<u8>),
    /// A deleted (or merged) mailbox's tombstone.
    Mailbox(Vec<u8>),
}

/// A tombstone as a purge saw it: forgetting it later removes it only if it still carries
/// this stamp (a tombstone written again at the same key since is another one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgedTombstone {
    pub key: TombstoneKey,
    pub stamp: Stamp,
}

/// The two kinds of tombstone, as a purge reads them.
trait Aged: serde::de::DeserializeOwned {
    /// What it is, for a decoding error.
    const WHAT: &'static str;
    fn stamp(&self) -> Stamp;
}

impl Aged for Tombstone {
    const WHAT: &'static str = "a tombstone";
    fn stamp(&self) -> Stamp {
        self.stamp
    }
}

impl Aged for MailboxTombstone {
    const WHAT: &'static str = "a mailbox tombstone";
    fn stamp(&self) -> Stamp {
        self.stamp
    }
}

/// Adds to `aged` the tombstones of `table` stamped before `before_ms`, named by `key`.
fn older_than<T: Aged>(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    before_ms: u64,
    key: fn(Vec<u8>) -> TombstoneKey,
    aged: &mut Vec<AgedTombstone>,
) -> Result<(), StoreError> {
    for item in table.iter()? {
        let (k, v) = item?;
        let t: T = decode(v.value(), T::WHAT)?;
        if t.stamp().ms < before_ms {
            aged.push(AgedTombstone {
                key: key(k.value().to_vec()),
                stamp: t.stamp(),
            });
        }
    }
    Ok(())
}

/// Removes the tombstone at `key` if it still carries `stamp`, and returns it.
fn take_if_stamped<T: Aged>(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    key: &[u8],
    stamp: Stamp,
) -> Result<Option<T>, StoreError> {
    let t: T = match table.get(key)? {
        Some(v) => decode(v.value(), T::WHAT)?,
        None => return Ok(None),
    };
    if t.stamp() != stamp {
        return Ok(None);
    }
    table.remove(key)?;
    Ok(Some(t))
}

impl Store {
    /// The message and mailbox tombstones whose stamp is older than `before_ms` (ms since the
    /// epoch), read in one snapshot.
    pub fn tombstones_older_than(&self, before_ms: u64) -> Result<Vec<AgedTombstone>, StoreError> {
        let txn = self.read_txn()?;
        let mut aged = Vec::new();
        let tombstones = txn.open_table(TOMBSTONES)?;
        older_than::<Tombstone>(&tombstones, before_ms, TombstoneKey::Message, &mut aged)?;
        let mailboxes = txn.open_table(MAILBOX_TOMBSTONES)?;
        older_than::<MailboxTombstone>(&mailboxes, before_ms, TombstoneKey::Mailbox, &mut aged)?;
        Ok(aged)
    }

    /// Forgets the tombstones named, in one transaction, with the identity kills a writer's
    /// expunge left; a tombstone that is gone or carries another stamp by now is left alone.
    /// Not journaled: every node purges by its own rule.
    pub fn forget_tombstones(&self, which: &[AgedTombstone]) -> Result<Purged, StoreError> {
        self.write_replicated(|tx| {
            let mut purged = Purged::default();
            for aged in which {
                match &aged.key {
                    TombstoneKey::Message(k) => {
                        let Some(t) =
                            take_if_stamped::<Tombstone>(&mut tx.tombstones, k, aged.stamp)?
                        else {
                            continue;
                        };
                        if let Some((user, guid, uid)) = super::keys::split_tombstone(k) {
                            if let Some(kill) = super::identity::kill_key(&user, guid, uid, &t) {
                                tx.identities.remove(kill.as_slice())?;
                            }
                            if let Some(origin) = t.origin {
                                let kill = super::identity::user_kill_key(&user, &t.digest, origin);
                                tx.user_kills.remove(kill.as_slice())?;
                            }
                        }
                        purged.tombstones += 1;
                    }
                    TombstoneKey::Mailbox(k) => {
                        let table = &mut tx.mailbox_tombstones;
                        if take_if_stamped::<MailboxTombstone>(table, k, aged.stamp)?.is_some() {
                            purged.mailbox_tombstones += 1;
                        }
                    }
                }
            }
            tx.counters.tombstones = tx.counters.tombstones.saturating_sub(purged.tombstones);
            tx.counters.mailbox_tombstones = tx
                .counters
                .mailbox_tombstones
                .saturating_sub(purged.mailbox_tombstones);
            Ok(purged)
        })
    }

    /// Forgets every tombstone whose stamp is older than `before_ms`, whoever holds it: the
    /// rule of a node without peers (and of tests).
    pub fn purge_tombstones(&self, before_ms: u64) -> Result<Purged, StoreError> {
        let aged = self.tombstones_older_than(before_ms)?;
        self.forget_tombstones(&aged)
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
