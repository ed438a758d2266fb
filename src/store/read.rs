//! Reads that reconciliation needs: a mailbox's state restricted to some UIDs, the non-empty
//! nodes of one UID-tree level, a bucket's entry hashes, whether a body is held.

use super::error::StoreError;
use super::keys;
use super::tables::{MAILBOXES, MAILBOX_TOMBSTONES, MESSAGES, TOMBSTONES, TREE};
use super::tx::{decode, decode_message};
use super::Store;
use crate::merkle::{NodeHash, NodeKey, NodeValue, BUCKET_SHIFT};
use crate::model::{Digest, MailboxGuid, MailboxSide, MailboxTombstone, Tombstone};
use redb::ReadableTable;
use std::collections::BTreeSet;

/// `uids` as inclusive ranges for [`Store::mailbox_side_in`]: one range over every UID when
/// `None`, else one single-UID range per UID. The `Replica` trait's default shares it, so a
/// model and the store restrict a mailbox the same way.
pub fn uid_ranges(uids: Option<&BTreeSet<u32>>) -> Vec<(u32, u32)> {
    match uids {
        None => vec![(0, u32::MAX)],
        Some(set) => set.iter().map(|u| (*u, *u)).collect(),
    }
}

/// Calls `each` with the UID and the stored value of every live message of `user`'s mailbox
/// `guid` with a UID in `first..=last`, in UID order; `messages` is MESSAGES, read or written.
pub(crate) fn each_message(
    messages: &impl ReadableTable<&'static [u8], &'static [u8]>,
    user: &str,
    guid: MailboxGuid,
    (first, last): (u32, u32),
    mut each: impl FnMut(u32, &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (start, end) = keys::uid_range(user, guid, first, last);
    for item in messages.range(start.as_slice()..=end.as_slice())? {
        let (k, v) = item?;
        let (_, _, uid) = keys::split_message(k.value())
            .ok_or_else(|| StoreError::Corrupt("malformed message key".into()))?;
        each(uid, v.value())?;
    }
    Ok(())
}

/// The UIDs of `user`'s live messages in mailbox `guid` with a UID in `range`, in order.
pub(crate) fn message_uids(
    messages: &impl ReadableTable<&'static [u8], &'static [u8]>,
    user: &str,
    guid: MailboxGuid,
    range: (u32, u32),
) -> Result<Vec<u32>, StoreError> {
    let mut uids = Vec::new();
    each_message(messages, user, guid, range, |uid, _| {
        uids.push(uid);
        Ok(())
    })?;
    Ok(uids)
}

/// A mailbox as MAILBOXES, MAILBOX_TOMBSTONES, MESSAGES and TOMBSTONES hold it (read or
/// written): the record or the tombstone, and the messages and expunge tombstones at UIDs in
/// the inclusive `ranges`.
pub(crate) fn side_in(
    mailboxes: &impl ReadableTable<&'static [u8], &'static [u8]>,
    mailbox_tombstones: &impl ReadableTable<&'static [u8], &'static [u8]>,
    messages: &impl ReadableTable<&'static [u8], &'static [u8]>,
    tombstones: &impl ReadableTable<&'static [u8], &'static [u8]>,
    (user, guid): (&str, MailboxGuid),
    ranges: &[(u32, u32)],
) -> Result<MailboxSide, StoreError> {
    let mut side = MailboxSide::default();
    read_mailbox(mailboxes, mailbox_tombstones, (user, guid), &mut side)?;
    read_ranges(messages, tombstones, (user, guid), ranges, &mut side)?;
    Ok(side)
}

/// Reads a mailbox's record and tombstone into `side`.
pub(crate) fn read_mailbox(
    mailboxes: &impl ReadableTable<&'static [u8], &'static [u8]>,
    mailbox_tombstones: &impl ReadableTable<&'static [u8], &'static [u8]>,
    (user, guid): (&str, MailboxGuid),
    side: &mut MailboxSide,
) -> Result<(), StoreError> {
    let key = keys::mailbox(user, guid);
    if let Some(v) = mailboxes.get(key.as_slice())? {
        side.record = Some(decode(v.value(), "a mailbox")?);
    }
    if let Some(v) = mailbox_tombstones.get(key.as_slice())? {
        side.tombstone = Some(decode::<MailboxTombstone>(
            v.value(),
            "a mailbox tombstone",
        )?);
    }
    Ok(())
}

/// Reads a mailbox's messages and expunge tombstones at UIDs in the inclusive `ranges` into
/// `side`.
pub(crate) fn read_ranges(
    messages: &impl ReadableTable<&'static [u8], &'static [u8]>,
    tombstones: &impl ReadableTable<&'static [u8], &'static [u8]>,
    (user, guid): (&str, MailboxGuid),
    ranges: &[(u32, u32)],
    side: &mut MailboxSide,
) -> Result<(), StoreError> {
    for &(first, last) in ranges {
        each_message(messages, user, guid, (first, last), |uid, v| {
            side.messages.insert(uid, decode_message(v)?.1);
            Ok(())
        })?;
        let (start, end) = keys::tombstone_range(user, guid, first, last);
        for item in tombstones.range(start.as_slice()..=end.as_slice())? {
            let (k, v) = item?;
            let head = k
                .value()
                .get(..k.value().len().saturating_sub(32))
                .unwrap_or_default();
            let (_, _, uid) = keys::split_message(head)
                .ok_or_else(|| StoreError::Corrupt("malformed tombstone key".into()))?;
            let t: Tombstone = decode(v.value(), "a tombstone")?;
            side.expunged.entry(uid).or_default().push(t);
        }
    }
    Ok(())
}

impl Store {
    /// A mailbox as this replica holds it: the record or the tombstone, and its messages and
    /// expunge tombstones at `uids` (every UID when `uids` is `None`).
    pub fn mailbox_side(
        &self,
        user: &str,
        guid: MailboxGuid,
        uids: Option<&BTreeSet<u32>>,
    ) -> Result<MailboxSide, StoreError> {
        self.mailbox_side_in(user, guid, &uid_ranges(uids))
    }

    /// A mailbox as this replica holds it, restricted to inclusive UID ranges: the record or
    /// the tombstone, and the messages and expunge tombstones in those ranges.
    pub fn mailbox_side_in(
        &self,
        user: &str,
        guid: MailboxGuid,
        ranges: &[(u32, u32)],
    ) -> Result<MailboxSide, StoreError> {
        let txn = self.read_txn()?;
        side_in(
            &txn.open_table(MAILBOXES)?,
            &txn.open_table(MAILBOX_TOMBSTONES)?,
            &txn.open_table(MESSAGES)?,
            &txn.open_table(TOMBSTONES)?,
            (user, guid),
            ranges,
        )
    }

    /// The non-empty nodes of one level of a mailbox's UID tree, as (index, value).
    pub fn uid_level(
        &self,
        user: &str,
        guid: MailboxGuid,
        level: u8,
    ) -> Result<Vec<(u32, NodeValue)>, StoreError> {
        let (start, end) = NodeKey::uid_level_range(user, guid, level);
        let txn = self.read_txn()?;
        let tree = txn.open_table(TREE)?;
        let mut out = Vec::new();
        for item in tree.range(start.as_slice()..=end.as_slice())? {
            let (k, v) = item?;
            let index = k
                .value()
                .get(k.value().len().saturating_sub(4)..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes);
            let value = NodeValue::decode(v.value());
            match (index, value) {
                (Some(index), Some(value)) => out.push((index, value)),
                _ => return Err(StoreError::Corrupt("malformed tree node".into())),
            }
        }
        Ok(out)
    }

    /// The entry hashes of one bucket's live messages, in UID order.
    pub fn bucket_entries(
        &self,
        user: &str,
        guid: MailboxGuid,
        bucket: u32,
    ) -> Result<Vec<(u32, NodeHash)>, StoreError> {
        let first = bucket << BUCKET_SHIFT;
        let txn = self.read_txn()?;
        let messages = txn.open_table(MESSAGES)?;
        let mut out = Vec::new();
        let range = (first, first | ((1 << BUCKET_SHIFT) - 1));
        each_message(&messages, user, guid, range, |uid, v| {
            let hash: [u8; 32] = v
                .get(..32)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("message value too short".into()))?;
            out.push((uid, NodeHash(hash)));
            Ok(())
        })?;
        Ok(out)
    }

    /// Whether the store holds the body with this digest.
    pub fn has_body(&self, digest: &Digest) -> Result<bool, StoreError> {
        let txn = self.read_txn()?;
        self.bodies.holds(&txn, digest)
    }
}

impl Store {
    /// The UIDs of live messages in `first..=last`.
    pub fn uids_in(
        &self,
        user: &str,
        guid: MailboxGuid,
        first: u32,
        last: u32,
    ) -> Result<Vec<u32>, StoreError> {
        let txn = self.read_txn()?;
        message_uids(&txn.open_table(MESSAGES)?, user, guid, (first, last))
    }
}
