//! How every kind of node is hashed. Each kind has its own one-byte domain tag, so a bucket
//! hash can never be mistaken for a mailbox hash; counts are carried beside hashes, not in them.

use crate::model::{FlagSet, MailboxGuid, MailboxRecord};
use std::fmt;

/// A node's blake3 hash. [`NodeHash::EMPTY`] stands for an absent (empty) node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeHash(pub [u8; 32]);

impl NodeHash {
    pub const EMPTY: NodeHash = NodeHash([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Four bytes of the hash starting at `window` (wrapping). Peers compare truncated hashes
    /// to save bytes; the window rotates per session so a rare false match is not repeated.
    pub fn truncated(&self, window: u8) -> [u8; 4] {
        let w = usize::from(window) % 32;
        std::array::from_fn(|i| self.0[(w + i) % 32])
    }
}

impl fmt::Debug for NodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

/// What the store keeps per node: its hash and how many live messages lie beneath it
/// (the reconciliation asks for entries outright when a differing subtree is small).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeValue {
    pub hash: NodeHash,
    pub count: u64,
}

impl NodeValue {
    pub const ENCODED_LEN: usize = 40;

    /// What an absent node stands for: the empty hash over no messages.
    pub const EMPTY: NodeValue = NodeValue {
        hash: NodeHash::EMPTY,
        count: 0,
    };

    pub fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..32].copy_from_slice(&self.hash.0);
        out[32..].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<NodeValue> {
        let hash: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
        let count: [u8; 8] = bytes.get(32..40)?.try_into().ok()?;
        (bytes.len() == 40).then_some(NodeValue {
            hash: NodeHash(hash),
            count: u64::from_be_bytes(count),
        })
    }
}

fn finish(hasher: blake3::Hasher) -> NodeHash {
    NodeHash(*hasher.finalize().as_bytes())
}

/// A message entry's canonical hash: UID, digest, and every flag/keyword with its state and
/// stamp in name order. Size and internal date follow from the digest or are immutable
/// metadata, so they are not hashed.
pub fn entry_hash(uid: u32, digest: &crate::model::Digest, flags: &FlagSet) -> NodeHash {
    let mut h = blake3::Hasher::new();
    h.update(b"E");
    h.update(&uid.to_be_bytes());
    h.update(&digest.0);
    for (name, state) in flags.entries() {
        // Flag names are at most 255 bytes (FlagName enforces it).
        h.update(&[name.as_str().len() as u8]);
        h.update(name.as_str().as_bytes());
        h.update(&[state.set as u8]);
        h.update(&state.stamp.to_bytes());
    }
    finish(h)
}

/// A UID-range bucket: the hashes of its live entries in UID order.
pub fn bucket_hash<'a>(entries: impl IntoIterator<Item = &'a NodeHash>) -> NodeHash {
    list_hash(b'B', entries.into_iter().map(|e| &e.0[..]))
}

/// The hash of a one-byte `tag` followed by `items`, each as it is (fixed-width items only:
/// nothing marks where one ends). The buckets here and the sync wire's digests are such lists.
pub fn list_hash<'a>(tag: u8, items: impl IntoIterator<Item = &'a [u8]>) -> NodeHash {
    let mut h = blake3::Hasher::new();
    h.update(&[tag]);
    for item in items {
        h.update(item);
    }
    finish(h)
}

/// An interior node of a mailbox's UID-range tree: its non-empty children with their slots.
pub fn uid_interior_hash<'a>(
    level: u8,
    children: impl IntoIterator<Item = (u8, &'a NodeHash)>,
) -> NodeHash {
    interior(b'I', level, children)
}

/// An interior node of the top of the tree (level 0 is the server root).
pub fn top_hash<'a>(level: u8, children: impl IntoIterator<Item = (u8, &'a NodeHash)>) -> NodeHash {
    interior(b'T', level, children)
}

fn interior<'a>(
    tag: u8,
    level: u8,
    children: impl IntoIterator<Item = (u8, &'a NodeHash)>,
) -> NodeHash {
    let mut h = blake3::Hasher::new();
    h.update(&[tag, level]);
    for (slot, child) in children {
        h.update(&[slot]);
        h.update(&child.0);
    }
    finish(h)
}

/// A mailbox node: every replicated field of the mailbox and the root of its UID-range tree.
pub fn mailbox_hash(mailbox: &MailboxRecord, uid_root: &NodeHash) -> NodeHash {
    let mut h = blake3::Hasher::new();
    h.update(b"M");
    h.update(&mailbox.guid.0);
    h.update(&(mailbox.name.len() as u32).to_be_bytes());
    h.update(mailbox.name.as_bytes());
    h.update(&mailbox.uidvalidity.to_be_bytes());
    h.update(&mailbox.uidnext.to_be_bytes());
    h.update(&[mailbox.subscribed as u8]);
    h.update(&mailbox.name_stamp.to_bytes());
    h.update(&mailbox.subscribed_stamp.to_bytes());
    h.update(&uid_root.0);
    finish(h)
}

/// A user node: the user's name and its mailbox nodes in GUID order.
pub fn user_hash<'a>(
    user: &str,
    mailboxes: impl IntoIterator<Item = (&'a MailboxGuid, &'a NodeHash)>,
) -> NodeHash {
    let mut h = blake3::Hasher::new();
    h.update(b"U");
    h.update(&(user.len() as u32).to_be_bytes());
    h.update(user.as_bytes());
    for (guid, mailbox) in mailboxes {
        h.update(&guid.0);
        h.update(&mailbox.0);
    }
    finish(h)
}

/// A user bucket (the leaves of the top tree): its users' nodes in name order.
pub fn user_bucket_hash<'a>(users: impl IntoIterator<Item = &'a NodeHash>) -> NodeHash {
    list_hash(b'S', users.into_iter().map(|u| &u.0[..]))
}
