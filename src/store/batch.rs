//! Mail operations on many messages at once (`flags` and `expunge` on `1:5,7,9:*` or on a
//! list of UIDs): the selection is resolved against the mailbox inside the write transaction,
//! so `*` and "which UIDs exist" are read in the same transaction that changes them.

use super::error::StoreError;
use super::keys;
use super::read::message_uids;
use super::tx::{encode, Tx};
use super::Store;
use crate::model::{
    FlagName, FlagOp, MailboxGuid, MailboxName, MailboxRecord, Tombstone, UidSelection,
};

impl Store {
    /// Changes the flags of every message selected, in one transaction. Returns each
    /// message's UID with its flags afterwards, in UID order. A plain UID that does not exist
    /// fails with [`StoreError::UnknownUid`], a set that names no existing message with
    /// [`StoreError::EmptyUidSet`]; either changes nothing.
    pub fn set_flags_in(
        &self,
        user: &str,
        mailbox: &str,
        set: &UidSelection,
        op: FlagOp,
        flags: &[FlagName],
    ) -> Result<Vec<(u32, Vec<FlagName>)>, StoreError> {
        let name = MailboxName::parse(mailbox)?;
        self.write(|tx| {
            let mut record = tx.resolve(user, &name, false)?;
            let guid = record.guid;
            let uids = tx.named_uids(user, &name, guid, set)?;
            let stamp = tx.stamp();
            let mut changed = false;
            let mut out = Vec::with_capacity(uids.len());
            for uid in uids {
                let Some(mut message) = tx.get_message(user, guid, uid)? else {
                    return Err(StoreError::Corrupt(format!(
                        "UID {uid} was listed but has no record"
                    )));
                };
                if message.flags.apply(op, flags, stamp) {
                    tx.put_message(user, guid, uid, &message)?;
                    changed = true;
                }
                out.push((uid, message.flags.live().cloned().collect()));
            }
            if changed {
                record.last_change = stamp;
                // last_change is not hashed: writing the record does not move the tree.
                let value = encode(&record)?;
                tx.mailboxes
                    .insert(keys::mailbox(user, guid).as_slice(), value.as_slice())?;
            }
            Ok(out)
        })
    }

    /// Expunges every message selected, in one transaction, leaving a tombstone for each;
    /// returns how many. Unknown UIDs fail as in [`Store::set_flags_in`], changing nothing.
    pub fn expunge_in(
        &self,
        user: &str,
        mailbox: &str,
        set: &UidSelection,
    ) -> Result<usize, StoreError> {
        let name = MailboxName::parse(mailbox)?;
        self.write(|tx| {
            let mut record = tx.resolve(user, &name, false)?;
            let uids = tx.named_uids(user, &name, record.guid, set)?;
            tx.expunge_uids(user, &name, &mut record, &uids)
        })
    }
}

impl Tx<'_> {
    /// The UIDs selected, ascending and once each: plain UIDs must all exist; a set must
    /// name at least one existing message.
    fn named_uids(
        &mut self,
        user: &str,
        name: &MailboxName,
        guid: MailboxGuid,
        selection: &UidSelection,
    ) -> Result<Vec<u32>, StoreError> {
        let set = match selection {
            UidSelection::Each(uids) => {
                let uids: std::collections::BTreeSet<u32> = uids.iter().copied().collect();
                for &uid in &uids {
                    if self.get_message(user, guid, uid)?.is_none() {
                        return Err(StoreError::UnknownUid {
                            user: user.to_string(),
                            mailbox: name.to_string(),
                            uid,
                        });
                    }
                }
                return Ok(uids.into_iter().collect());
            }
            UidSelection::Set(set) => set,
        };
        let existing = message_uids(&self.messages, user, guid, (0, u32::MAX))?;
        let named = set.resolve(&existing);
        if named.is_empty() {
            return Err(StoreError::EmptyUidSet {
                user: user.to_string(),
                mailbox: name.to_string(),
                set: set.to_string(),
            });
        }
        Ok(named)
    }

    /// Removes the messages (which exist: see [`Tx::named_uids`]), leaving a tombstone for
    /// each that peers learn the expunge from, and stamps the mailbox as changed.
    pub(super) fn expunge_uids(
        &mut self,
        user: &str,
        name: &MailboxName,
        record: &mut MailboxRecord,
        uids: &[u32],
    ) -> Result<usize, StoreError> {
        let guid = record.guid;
        let stamp = self.stamp();
        let mut count = 0;
        for &uid in uids {
            let Some(removed) = self.remove_message(user, guid, uid)? else {
                return Err(StoreError::UnknownUid {
                    user: user.to_string(),
                    mailbox: name.to_string(),
                    uid,
                });
            };
            let tomb = Tombstone::expunge(&removed, stamp);
            self.put_tombstone(user, guid, uid, &tomb)?;
            self.kill_elsewhere(user, guid, &tomb)?;
            count += 1;
        }
        record.last_change = stamp;
        let value = encode(&*record)?;
        self.mailboxes
            .insert(keys::mailbox(user, guid).as_slice(), value.as_slice())?;
        Ok(count)
    }
}
