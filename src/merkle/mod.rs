//! The Merkle tree over everything replicated: layout, hashing, incremental update, rebuild.
//!
//! Pure: the tree reads and writes its nodes through [`TreeAccess`], which the store
//! implements over redb and [`rebuild`] implements over memory. Both run the same per-node
//! computation, so a stored tree and a rebuilt one can be compared node by node.

mod hash;
mod layout;
mod update;

pub use hash::{
    bucket_hash, entry_hash, list_hash, mailbox_hash, top_hash, uid_interior_hash,
    user_bucket_hash, user_hash, NodeHash, NodeValue,
};
pub use layout::{
    bucket_of, user_bucket_of, NodeKey, BUCKET_SHIFT, FANOUT, TOP_LEAF_LEVEL, UID_ROOT_LEVEL,
    USER_BUCKETS,
};
pub use update::{rebuild, Dirty, MemoryTree, TreeAccess};

/// Levels from the server root down to a message entry: root, two top interior levels, the
/// user bucket, user, mailbox, the UID-range levels (root to bucket), and the entry itself.
pub const DEPTH: u32 = TOP_LEAF_LEVEL as u32 + 1 + 2 + UID_ROOT_LEVEL as u32 + 1;
