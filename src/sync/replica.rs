//! The door through which reconciliation reaches local state: [`Replica`], the handful of
//! reads the session and the responder make and the two writes they need, implemented here
//! for the store (the store itself knows nothing of sync).

use crate::merkle::{NodeHash, NodeKey, NodeValue};
use crate::model::ChangeGroup;
use crate::model::{CheckedBody, Digest, MailboxGuid, MailboxSide};
use crate::store::{sound_body_of, uid_ranges, Store, StoreError};
use std::collections::BTreeSet;

/// A replica as reconciliation sees it: its Merkle tree, its mailboxes at some UIDs, its
/// bodies, and the two writes a session makes (staging bodies, applying guarded groups).
///
/// The session is a state machine over this trait and does no other I/O, so a test can hand
/// it a model in memory instead of a store. Errors are the store's: a model reports the same
/// kinds of failure (`Invalid` for a change it refuses, `Corrupt` for state that cannot be).
///
/// `Sync`: the driver lets the session take one answer (stage a batch of bodies) on another
/// thread while the next round travels (`driver::run_with_progress`).
pub trait Replica: Sync {
    /// One stored node, if it is not empty.
    fn node(&self, key: &NodeKey) -> Result<Option<NodeValue>, StoreError>;

    /// The server root: the empty hash with no messages when nothing is held.
    fn root(&self) -> Result<NodeValue, StoreError> {
        Ok(self.node(&NodeKey::root())?.unwrap_or(NodeValue::EMPTY))
    }

    /// The stored (non-empty) children of a node, in key order.
    fn children(&self, key: &NodeKey) -> Result<Vec<(NodeKey, NodeValue)>, StoreError>;

    /// The non-empty nodes of one level of a mailbox's UID tree, as (index, value).
    fn uid_level(
        &self,
        user: &str,
        guid: MailboxGuid,
        level: u8,
    ) -> Result<Vec<(u32, NodeValue)>, StoreError>;

    /// The entry hashes of one bucket's live messages, in UID order.
    fn bucket_entries(
        &self,
        user: &str,
        guid: MailboxGuid,
        bucket: u32,
    ) -> Result<Vec<(u32, NodeHash)>, StoreError>;

    /// A mailbox restricted to inclusive UID ranges: the record or the tombstone, and the
    /// messages and expunge tombstones in those ranges.
    fn mailbox_side_in(
        &self,
        user: &str,
        guid: MailboxGuid,
        ranges: &[(u32, u32)],
    ) -> Result<MailboxSide, StoreError>;

    /// A mailbox at `uids` (every UID when `None`; the record alone when empty).
    fn mailbox_side(
        &self,
        user: &str,
        guid: MailboxGuid,
        uids: Option<&BTreeSet<u32>>,
    ) -> Result<MailboxSide, StoreError> {
        self.mailbox_side_in(user, guid, &uid_ranges(uids))
    }

    /// A user's live mailboxes as (name, GUID), in name order; an error for a user this
    /// replica does not know.
    fn mailbox_names(&self, user: &str) -> Result<Vec<(String, MailboxGuid)>, StoreError>;

    /// Whether the body with this digest is held.
    fn has_body(&self, digest: &Digest) -> Result<bool, StoreError>;

    /// A held body; an error when it is not held or no longer matches its digest
    /// (`StoreError::BodyDamaged`).
    fn body(&self, digest: &Digest) -> Result<Vec<u8>, StoreError>;

    /// A body only if it is held and still matches its digest: what a peer may be given.
    fn sound_body(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        sound_body_of(self.has_body(digest)?, || self.body(digest))
    }

    /// Keeps bodies sent ahead of the changes that use them; returns how many were kept.
    fn stage_bodies(&self, bodies: &[CheckedBody<'_>]) -> Result<usize, StoreError>;

    /// [`Replica::stage_bodies`] for a round that may yet be refused: returns what
    /// [`Replica::unstage_bodies`] takes back then (by default nothing: a replica whose
    /// staging leaves no trace).
    fn stage_bodies_marking(&self, bodies: &[CheckedBody<'_>]) -> Result<Vec<Digest>, StoreError> {
        self.stage_bodies(bodies).map(|_| Vec::new())
    }

    /// Takes back what [`Replica::stage_bodies_marking`] staged.
    fn unstage_bodies(&self, _digests: &[Digest]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Applies change groups in one transaction, each only if its mailbox still has the hash
    /// it expects; returns which groups were applied.
    fn apply_groups(&self, groups: &[ChangeGroup]) -> Result<Vec<bool>, StoreError>;
}

/// The store answers every call with its own method of the same name, so a session over a
/// store behaves exactly as it did when it held the store itself; `root`, `mailbox_side` and
/// `sound_body` are left to the defaults, which share their helpers with the store's methods.
impl Replica for Store {
    fn node(&self, key: &NodeKey) -> Result<Option<NodeValue>, StoreError> {
        Store::node(self, key)
    }

    fn children(&self, key: &NodeKey) -> Result<Vec<(NodeKey, NodeValue)>, StoreError> {
        Store::children(self, key)
    }

    fn uid_level(
        &self,
        user: &str,
        guid: MailboxGuid,
        level: u8,
    ) -> Result<Vec<(u32, NodeValue)>, StoreError> {
        Store::uid_level(self, user, guid, level)
    }

    fn bucket_entries(
        &self,
        user: &str,
        guid: MailboxGuid,
        bucket: u32,
    ) -> Result<Vec<(u32, NodeHash)>, StoreError> {
        Store::bucket_entries(self, user, guid, bucket)
    }

    fn mailbox_side_in(
        &self,
        user: &str,
        guid: MailboxGuid,
        ranges: &[(u32, u32)],
    ) -> Result<MailboxSide, StoreError> {
        Store::mailbox_side_in(self, user, guid, ranges)
    }

    fn mailbox_names(&self, user: &str) -> Result<Vec<(String, MailboxGuid)>, StoreError> {
        Ok(self
            .list_mailboxes(user)?
            .into_iter()
            .map(|m| (m.name, m.guid))
            .collect())
    }

    fn has_body(&self, digest: &Digest) -> Result<bool, StoreError> {
        Store::has_body(self, digest)
    }

    fn body(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        Store::body(self, digest)
    }

    fn stage_bodies(&self, bodies: &[CheckedBody<'_>]) -> Result<usize, StoreError> {
        Store::stage_bodies(self, bodies)
    }

    fn stage_bodies_marking(&self, bodies: &[CheckedBody<'_>]) -> Result<Vec<Digest>, StoreError> {
        Store::stage_bodies_marking(self, bodies)
    }

    fn unstage_bodies(&self, digests: &[Digest]) -> Result<(), StoreError> {
        Store::unstage_bodies(self, digests)
    }

    fn apply_groups(&self, groups: &[ChangeGroup]) -> Result<Vec<bool>, StoreError> {
        Store::apply_groups(self, groups)
    }
}
