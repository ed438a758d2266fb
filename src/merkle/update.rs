//! Incremental update: recompute only the nodes on the paths of what changed, deepest first.

use super::hash::{
    bucket_hash, mailbox_hash, top_hash, uid_interior_hash, user_bucket_hash, user_hash, NodeHash,
    NodeValue,
};
use super::layout::{bucket_of, NodeKey, TOP_LEAF_LEVEL, UID_ROOT_LEVEL};
use crate::model::{MailboxGuid, MailboxRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

/// How the tree reads the records it summarises and reads and writes its own nodes.
/// The store implements it over a redb write transaction; [`MemoryTree`] over maps.
pub trait TreeAccess {
    type Error;
    /// The entry hashes of one bucket's live messages, in UID order.
    fn bucket_entries(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        bucket: u32,
    ) -> Result<Vec<NodeHash>, Self::Error>;
    fn mailbox(
        &mut self,
        user: &str,
        guid: MailboxGuid,
    ) -> Result<Option<MailboxRecord>, Self::Error>;
    /// Stored nodes whose keys lie in `start..=end`, in key order.
    fn nodes_in(
        &mut self,
        start: &[u8],
        end: &[u8],
    ) -> Result<Vec<(Vec<u8>, NodeValue)>, Self::Error>;
    fn put_node(&mut self, key: &[u8], value: NodeValue) -> Result<(), Self::Error>;
    fn remove_node(&mut self, key: &[u8]) -> Result<(), Self::Error>;
}

/// Processing order: UID levels bottom-up (0..=7), then mailbox, user, and the top levels
/// from the user buckets up to the root. A node is recomputed after all its dirty children.
fn rank(key: &NodeKey) -> u8 {
    match key {
        NodeKey::Uid { level, .. } => *level,
        NodeKey::Mailbox { .. } => UID_ROOT_LEVEL + 1,
        NodeKey::User { .. } => UID_ROOT_LEVEL + 2,
        NodeKey::Top { level, .. } => UID_ROOT_LEVEL + 3 + (TOP_LEAF_LEVEL - level),
    }
}

/// The rank of mailbox nodes: [`Dirty::flush_through`] with it stops below the users.
pub const MAILBOX_RANK: u8 = UID_ROOT_LEVEL + 1;

/// The set of nodes whose inputs changed in the current transaction. Marking is cheap and
/// idempotent; [`Dirty::flush`] recomputes each marked node and its ancestors once, so a
/// batch of a thousand appends to one mailbox rehashes each shared ancestor once, not 1000 times.
#[derive(Debug, Default)]
pub struct Dirty {
    by_rank: BTreeMap<u8, BTreeSet<NodeKey>>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.by_rank.values().all(BTreeSet::is_empty)
    }

    fn mark_node(&mut self, key: NodeKey) {
        self.by_rank.entry(rank(&key)).or_default().insert(key);
    }

    /// A message with this UID appeared, vanished or changed.
    pub fn mark_message(&mut self, user: &str, guid: MailboxGuid, uid: u32) {
        self.mark_node(NodeKey::Uid {
            user: user.to_string(),
            guid,
            level: 0,
            index: bucket_of(uid),
        });
    }

    /// A mailbox's own fields changed, or it was created or deleted.
    pub fn mark_mailbox(&mut self, user: &str, guid: MailboxGuid) {
        self.mark_node(NodeKey::Mailbox {
            user: user.to_string(),
            guid,
        });
    }

    /// Recomputes every dirty node and its ancestors.
    pub fn flush<A: TreeAccess>(&mut self, access: &mut A) -> Result<(), A::Error> {
        self.flush_through(access, u8::MAX)
    }

    /// Recomputes dirty nodes up to `max_rank`, leaving their higher ancestors marked.
    pub fn flush_through<A: TreeAccess>(
        &mut self,
        access: &mut A,
        max_rank: u8,
    ) -> Result<(), A::Error> {
        while let Some((&r, _)) = self
            .by_rank
            .iter()
            .find(|(r, keys)| **r <= max_rank && !keys.is_empty())
        {
            let keys = std::mem::take(self.by_rank.entry(r).or_default());
            for key in keys {
                let encoded = key.encode();
                match recompute(access, &key)? {
                    Some(value) => access.put_node(&encoded, value)?,
                    None => access.remove_node(&encoded)?,
                }
                if let Some(parent) = key.parent() {
                    self.mark_node(parent);
                }
            }
        }
        Ok(())
    }
}

/// The slot a child occupies in an interior parent: the low four bits of its index, which is
/// the last byte of its key for both top and UID-range nodes.
fn slot_of(key: &[u8]) -> u8 {
    key.last().map_or(0, |b| b & 0xf)
}

/// Computes a node from its children; `None` when it is empty and must not be stored.
fn recompute<A: TreeAccess>(access: &mut A, key: &NodeKey) -> Result<Option<NodeValue>, A::Error> {
    let children = |access: &mut A| -> Result<Vec<(Vec<u8>, NodeValue)>, A::Error> {
        match key.children_range() {
            Some((start, end)) => access.nodes_in(&start, &end),
            None => Ok(Vec::new()),
        }
    };
    let sum =
        |children: &[(Vec<u8>, NodeValue)]| children.iter().map(|(_, v)| v.count).sum::<u64>();
    Ok(match key {
        NodeKey::Uid {
            user,
            guid,
            level: 0,
            index,
        } => {
            let entries = access.bucket_entries(user, *guid, *index)?;
            (!entries.is_empty()).then(|| NodeValue {
                hash: bucket_hash(&entries),
                count: entries.len() as u64,
            })
        }
        NodeKey::Uid { level, .. } => {
            let children = children(access)?;
            (!children.is_empty()).then(|| NodeValue {
                hash: uid_interior_hash(
                    *level,
                    children.iter().map(|(k, v)| (slot_of(k), &v.hash)),
                ),
                count: sum(&children),
            })
        }
        NodeKey::Mailbox { user, guid } => match access.mailbox(user, *guid)? {
            None => None,
            Some(record) => {
                let root = children(access)?.into_iter().next().map(|(_, v)| v);
                let root = root.unwrap_or(NodeValue {
                    hash: NodeHash::EMPTY,
                    count: 0,
                });
                Some(NodeValue {
                    hash: mailbox_hash(&record, &root.hash),
                    count: root.count,
                })
            }
        },
        NodeKey::User { user, .. } => {
            let children = children(access)?;
            let guids: Vec<(MailboxGuid, NodeHash)> = children
                .iter()
                .map(|(k, v)| {
                    let mut guid = [0u8; 16];
                    let tail = k.len().saturating_sub(16);
                    guid.copy_from_slice(&k[tail..]);
                    (MailboxGuid(guid), v.hash)
                })
                .collect();
            (!children.is_empty()).then(|| NodeValue {
                hash: user_hash(user, guids.iter().map(|(g, h)| (g, h))),
                count: sum(&children),
            })
        }
        NodeKey::Top { level, .. } if *level == TOP_LEAF_LEVEL => {
            let children = children(access)?;
            (!children.is_empty()).then(|| NodeValue {
                hash: user_bucket_hash(children.iter().map(|(_, v)| &v.hash)),
                count: sum(&children),
            })
        }
        NodeKey::Top { level, .. } => {
            let children = children(access)?;
            (!children.is_empty()).then(|| NodeValue {
                hash: top_hash(*level, children.iter().map(|(k, v)| (slot_of(k), &v.hash))),
                count: sum(&children),
            })
        }
    })
}

/// A tree held in memory: used to rebuild a store's tree from its records for `verify`.
#[derive(Debug, Default)]
pub struct MemoryTree {
    pub mailboxes: BTreeMap<(String, MailboxGuid), MailboxRecord>,
    /// Entry hashes by (user, mailbox, UID).
    pub entries: BTreeMap<(String, MailboxGuid, u32), NodeHash>,
    pub nodes: BTreeMap<Vec<u8>, NodeValue>,
}

impl TreeAccess for MemoryTree {
    type Error = Infallible;

    fn bucket_entries(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        bucket: u32,
    ) -> Result<Vec<NodeHash>, Infallible> {
        let first = bucket << super::layout::BUCKET_SHIFT;
        let last = first | ((1 << super::layout::BUCKET_SHIFT) - 1);
        let range = (user.to_string(), guid, first)..=(user.to_string(), guid, last);
        Ok(self.entries.range(range).map(|(_, h)| *h).collect())
    }

    fn mailbox(
        &mut self,
        user: &str,
        guid: MailboxGuid,
    ) -> Result<Option<MailboxRecord>, Infallible> {
        Ok(self.mailboxes.get(&(user.to_string(), guid)).cloned())
    }

    fn nodes_in(
        &mut self,
        start: &[u8],
        end: &[u8],
    ) -> Result<Vec<(Vec<u8>, NodeValue)>, Infallible> {
        Ok(self
            .nodes
            .range(start.to_vec()..=end.to_vec())
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    fn put_node(&mut self, key: &[u8], value: NodeValue) -> Result<(), Infallible> {
        self.nodes.insert(key.to_vec(), value);
        Ok(())
    }

    fn remove_node(&mut self, key: &[u8]) -> Result<(), Infallible> {
        self.nodes.remove(key);
        Ok(())
    }
}

/// Builds a whole tree from scratch, one mailbox at a time so that only one mailbox's entries
/// are held in memory. Each item is a mailbox with its live entries `(uid, entry hash)`.
pub fn rebuild<E>(
    mailboxes: impl Iterator<Item = Result<(String, MailboxRecord, Vec<(u32, NodeHash)>), E>>,
) -> Result<BTreeMap<Vec<u8>, NodeValue>, E> {
    let mut tree = MemoryTree::default();
    let mut dirty = Dirty::default();
    for item in mailboxes {
        let (user, record, entries) = item?;
        let guid = record.guid;
        for (uid, hash) in entries {
            dirty.mark_message(&user, guid, uid);
            tree.entries.insert((user.clone(), guid, uid), hash);
        }
        dirty.mark_mailbox(&user, guid);
        tree.mailboxes.insert((user.clone(), guid), record);
        let Ok(()) = dirty.flush_through(&mut tree, MAILBOX_RANK);
        tree.entries.clear();
        tree.mailboxes.clear();
    }
    let Ok(()) = dirty.flush(&mut tree);
    Ok(tree.nodes)
}
