//! One write transaction's view of the store: open tables, the clock, counters, dirty nodes.

use super::body::BodyStore;
use super::error::StoreError;
use super::keys;
use super::ops::Counters;
use super::tables::*;
use crate::merkle::{Dirty, NodeHash, NodeValue, TreeAccess, BUCKET_SHIFT};
use crate::model::{Hlc, MailboxGuid, MailboxRecord, MessageRecord, Stamp};
use redb::{ReadableTable, Table, WriteTransaction};

pub(crate) struct Tx<'t> {
    pub txn: &'t WriteTransaction,
    pub meta: Table<'t, &'static str, &'static [u8]>,
    pub users: Table<'t, &'static str, &'static [u8]>,
    pub mailboxes: Table<'t, &'static [u8], &'static [u8]>,
    pub messages: Table<'t, &'static [u8], &'static [u8]>,
    pub tombstones: Table<'t, &'static [u8], &'static [u8]>,
    pub identities: Table<'t, &'static [u8], &'static [u8]>,
    pub user_kills: Table<'t, &'static [u8], &'static [u8]>,
    /// What keeping the identity rules changed in this transaction.
    pub fixes: super::identity::IdentityFixes,
    pub mailbox_tombstones: Table<'t, &'static [u8], &'static [u8]>,
    pub tree: Table<'t, &'static [u8], &'static [u8]>,
    pub sources: Table<'t, &'static [u8], u32>,
    pub bodies: &'t dyn BodyStore,
    pub dirty: Dirty,
    pub counters: Counters,
    /// Bodies that lost a reference in this transaction: freed at the end if none remains.
    pub released: std::collections::BTreeSet<crate::model::Digest>,
    /// Whether this transaction is a local write that the replication journal records (false
    /// for changes applied from a peer: journaling them would echo them back).
    pub journal: bool,
    /// The mailboxes and UIDs this transaction touched, for the journal (empty unless `journal`).
    pub touched: std::collections::BTreeMap<(String, MailboxGuid), Touched>,
    /// Whether the store's mail is a live Maildir (store/mirror.rs): then every mailbox this
    /// transaction changes is owed to the disk (`owed`, written at the end).
    pub mirror: bool,
    pub owed: std::collections::BTreeSet<(String, MailboxGuid)>,
    /// The messages this transaction changed in those mailboxes, by UID.
    pub owed_uids: std::collections::BTreeSet<(String, MailboxGuid, u32)>,
    /// Files that stopped holding their message in this transaction: (digest, user,
    /// mailbox name, base name), for `BodyStore::keep_from_file` at the end.
    pub leaving: Vec<(crate::model::Digest, String, String, String)>,
    hlc: Hlc,
    now_ms: u64,
    /// How far ahead of `now_ms` a peer's stamp may be ([`Tx::ahead`]).
    pub max_clock_skew_ms: u64,
}

/// What one transaction touched in one mailbox.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    /// The mailbox record or tombstone changed.
    pub mailbox: bool,
    pub uids: std::collections::BTreeSet<u32>,
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError::Corrupt(format!("cannot decode {what}: {e}")))
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a record: {e}")))
}

/// Splits a message value into its entry hash and record.
pub(crate) fn decode_message(value: &[u8]) -> Result<(NodeHash, MessageRecord), StoreError> {
    let hash: [u8; 32] = value
        .get(..32)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("message value too short".into()))?;
    Ok((NodeHash(hash), decode(&value[32..], "a message")?))
}

impl<'t> Tx<'t> {
    pub fn open(
        txn: &'t WriteTransaction,
        hlc: Hlc,
        now_ms: u64,
        bodies: &'t dyn BodyStore,
        journal: bool,
        mirror: bool,
    ) -> Result<Tx<'t>, StoreError> {
        let meta = txn.open_table(META)?;
        let counters = match meta.get("counters")? {
            Some(v) => decode(v.value(), "the counters")?,
            None => Counters::default(),
        };
        Ok(Tx {
            txn,
            meta,
            users: txn.open_table(USERS)?,
            mailboxes: txn.open_table(MAILBOXES)?,
            messages: txn.open_table(MESSAGES)?,
            tombstones: txn.open_table(TOMBSTONES)?,
            identities: txn.open_table(IDENTITIES)?,
            user_kills: txn.open_table(USER_KILLS)?,
            fixes: Default::default(),
            mailbox_tombstones: txn.open_table(MAILBOX_TOMBSTONES)?,
            tree: txn.open_table(TREE)?,
            sources: txn.open_table(SOURCES)?,
            bodies,
            dirty: Dirty::default(),
            counters,
            released: Default::default(),
            journal,
            touched: Default::default(),
            mirror,
            owed: Default::default(),
            owed_uids: Default::default(),
            leaving: Vec::new(),
            hlc,
            now_ms,
            max_clock_skew_ms: crate::model::DEFAULT_MAX_CLOCK_SKEW_MS,
        })
    }

    /// A fresh stamp for a change made in this transaction.
    pub fn stamp(&mut self) -> Stamp {
        self.hlc.tick(self.now_ms)
    }

    /// The first stamp among `changes` (a peer's) further ahead of this node's clock than
    /// the allowed skew: such changes are not applied, so the clock never follows a broken
    /// or hostile peer's into the future.
    pub fn ahead(&self, changes: &[crate::model::Change]) -> Option<crate::model::StampAhead> {
        crate::model::first_ahead(
            changes.iter().flat_map(crate::model::Change::stamps),
            self.now_ms,
            self.max_clock_skew_ms,
        )
    }

    /// Moves the clock past a stamp that came from elsewhere.
    pub fn observe(&mut self, stamp: Stamp) {
        self.hlc.observe(stamp);
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Persists the clock and the counters; returns the clock to keep in memory after commit.
    pub fn finish(mut self) -> Result<Hlc, StoreError> {
        self.write_journal()?;
        self.write_owed()?;
        for (digest, user, mailbox, base) in std::mem::take(&mut self.leaving) {
            self.bodies
                .keep_from_file(self.txn, &digest, (&user, &mailbox, &base))?;
        }
        for digest in std::mem::take(&mut self.released) {
            if let Some(freed) = self.bodies.collect(self.txn, &digest)? {
                self.counters.bodies = self.counters.bodies.saturating_sub(1);
                self.counters.body_bytes = self.counters.body_bytes.saturating_sub(freed);
            }
        }
        let last = self.hlc.last().to_bytes();
        self.meta.insert("hlc", last.as_slice())?;
        let counters = encode(&self.counters)?;
        self.meta.insert("counters", counters.as_slice())?;
        Ok(self.hlc)
    }

    pub fn get_mailbox(
        &self,
        user: &str,
        guid: MailboxGuid,
    ) -> Result<Option<MailboxRecord>, StoreError> {
        match self.mailboxes.get(keys::mailbox(user, guid).as_slice())? {
            Some(v) => Ok(Some(decode(v.value(), "a mailbox")?)),
            None => Ok(None),
        }
    }

    pub fn put_mailbox(&mut self, user: &str, record: &MailboxRecord) -> Result<(), StoreError> {
        let value = encode(record)?;
        self.mailboxes.insert(
            keys::mailbox(user, record.guid).as_slice(),
            value.as_slice(),
        )?;
        self.dirty.mark_mailbox(user, record.guid);
        self.touch_mailbox(user, record.guid);
        self.owe_mirror(user, record.guid);
        Ok(())
    }

    /// Notes, for the journal, that a mailbox's record or tombstone changed.
    pub fn touch_mailbox(&mut self, user: &str, guid: MailboxGuid) {
        if self.journal {
            self.touched
                .entry((user.to_string(), guid))
                .or_default()
                .mailbox = true;
        }
    }

    /// Notes, for the journal, that the message (or tombstone) at a UID changed.
    pub fn touch_message(&mut self, user: &str, guid: MailboxGuid, uid: u32) {
        if self.journal {
            self.touched
                .entry((user.to_string(), guid))
                .or_default()
                .uids
                .insert(uid);
        }
    }

    /// Notes, for the journal, that a mailbox was deleted: its UIDs need not be named, since
    /// the mailbox tombstone stands for them.
    pub fn touch_deleted(&mut self, user: &str, guid: MailboxGuid) {
        if self.journal {
            let t = self.touched.entry((user.to_string(), guid)).or_default();
            t.mailbox = true;
            t.uids.clear();
        }
    }

    /// Every mailbox of a user, in GUID order.
    pub fn user_mailboxes(&self, user: &str) -> Result<Vec<MailboxRecord>, StoreError> {
        let (start, end) = keys::user_range(user);
        let mut out = Vec::new();
        for item in self.mailboxes.range(start.as_slice()..=end.as_slice())? {
            let (_, v) = item?;
            out.push(decode(v.value(), "a mailbox")?);
        }
        Ok(out)
    }

    pub fn get_message(
        &self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
    ) -> Result<Option<MessageRecord>, StoreError> {
        match self
            .messages
            .get(keys::message(user, guid, uid).as_slice())?
        {
            Some(v) => Ok(Some(decode_message(v.value())?.1)),
            None => Ok(None),
        }
    }

    /// Writes a message record (with its entry hash in front) and marks its bucket dirty.
    pub fn put_message(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
        record: &MessageRecord,
    ) -> Result<(), StoreError> {
        let hash = crate::merkle::entry_hash(uid, &record.digest, &record.flags);
        let mut value = hash.0.to_vec();
        value.extend_from_slice(&encode(record)?);
        let old = self
            .messages
            .insert(keys::message(user, guid, uid).as_slice(), value.as_slice())?
            .map(|v| v.value().to_vec());
        let old = match old {
            Some(v) => Some(decode_message(&v)?.1),
            None => None,
        };
        if old.as_ref().map(MessageRecord::identity) != Some(record.identity()) {
            if let Some(old) = &old {
                self.identities
                    .remove(super::identity::live_key(user, guid, uid, old).as_slice())?;
                self.file_leaves(user, guid, uid, &old.digest)?;
            }
            self.identities.insert(
                super::identity::live_key(user, guid, uid, record).as_slice(),
                [].as_slice(),
            )?;
        }
        self.dirty.mark_message(user, guid, uid);
        self.touch_message(user, guid, uid);
        self.owe_message(user, guid, uid);
        Ok(())
    }
}

impl TreeAccess for Tx<'_> {
    type Error = StoreError;

    fn bucket_entries(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        bucket: u32,
    ) -> Result<Vec<NodeHash>, StoreError> {
        let first = bucket << BUCKET_SHIFT;
        let (start, end) = keys::uid_range(user, guid, first, first | ((1 << BUCKET_SHIFT) - 1));
        let mut out = Vec::new();
        for item in self.messages.range(start.as_slice()..=end.as_slice())? {
            let (_, v) = item?;
            let hash: [u8; 32] = v
                .value()
                .get(..32)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("message value too short".into()))?;
            out.push(NodeHash(hash));
        }
        Ok(out)
    }

    fn mailbox(
        &mut self,
        user: &str,
        guid: MailboxGuid,
    ) -> Result<Option<MailboxRecord>, StoreError> {
        self.get_mailbox(user, guid)
    }

    fn nodes_in(
        &mut self,
        start: &[u8],
        end: &[u8],
    ) -> Result<Vec<(Vec<u8>, NodeValue)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.range(start..=end)? {
            let (k, v) = item?;
            let value = NodeValue::decode(v.value())
                .ok_or_else(|| StoreError::Corrupt("malformed tree node".into()))?;
            out.push((k.value().to_vec(), value));
        }
        Ok(out)
    }

    fn put_node(&mut self, key: &[u8], value: NodeValue) -> Result<(), StoreError> {
        self.tree.insert(key, value.encode().as_slice())?;
        Ok(())
    }

    fn remove_node(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.tree.remove(key)?;
        Ok(())
    }
}
