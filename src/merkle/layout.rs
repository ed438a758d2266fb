//! Where every node sits: the key layout shared by the stored tree and the rebuilt one.
//!
//! Keys are byte strings whose order puts a node's children next to each other, so a node is
//! recomputed from one range scan:
//!
//! ```text
//! top node        00 level:u8 index:u16be            level 0 = root, 3 = user bucket
//! user node       01 bucket:u16be user
//! mailbox node    02 user 00 guid:16
//! UID-range node  03 user 00 guid:16 level:u8 index:u32be   level 0 = bucket of 64 UIDs
//! ```
//! User names contain no NUL (they have no control characters), so `user 00` is a prefix
//! that no other user's keys share.

use crate::model::MailboxGuid;

/// A bucket covers 2^6 = 64 UIDs.
pub const BUCKET_SHIFT: u32 = 6;
/// Every interior node has up to 16 children.
pub const FANOUT: u32 = 16;
const FANOUT_SHIFT: u32 = 4;
/// UIDs are 32 bits, so buckets are 26 bits; 7 levels of fan-out 16 cover them.
pub const UID_ROOT_LEVEL: u8 = 7;
/// The user buckets are the top tree's level 3 (16^3 = 4096 of them).
pub const TOP_LEAF_LEVEL: u8 = 3;
pub const USER_BUCKETS: u16 = 4096;

/// The bucket a UID falls in.
pub fn bucket_of(uid: u32) -> u32 {
    uid >> BUCKET_SHIFT
}

/// The user bucket a user falls in: the first 12 bits of blake3(user).
pub fn user_bucket_of(user: &str) -> u16 {
    let h = blake3::hash(user.as_bytes());
    let b = h.as_bytes();
    (u16::from(b[0]) << 4) | (u16::from(b[1]) >> 4)
}

/// A node of the tree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeKey {
    Top {
        level: u8,
        index: u16,
    },
    User {
        bucket: u16,
        user: String,
    },
    Mailbox {
        user: String,
        guid: MailboxGuid,
    },
    Uid {
        user: String,
        guid: MailboxGuid,
        level: u8,
        index: u32,
    },
}

const TOP: u8 = 0;
const USER: u8 = 1;
const MAILBOX: u8 = 2;
const UID: u8 = 3;

impl NodeKey {
    pub fn root() -> NodeKey {
        NodeKey::Top { level: 0, index: 0 }
    }

    pub fn user(user: &str) -> NodeKey {
        NodeKey::User {
            bucket: user_bucket_of(user),
            user: user.to_string(),
        }
    }

    pub fn uid_root(user: &str, guid: MailboxGuid) -> NodeKey {
        NodeKey::Uid {
            user: user.to_string(),
            guid,
            level: UID_ROOT_LEVEL,
            index: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            NodeKey::Top { level, index } => {
                out.extend_from_slice(&[TOP, *level]);
                out.extend_from_slice(&index.to_be_bytes());
            }
            NodeKey::User { bucket, user } => {
                out.push(USER);
                out.extend_from_slice(&bucket.to_be_bytes());
                out.extend_from_slice(user.as_bytes());
            }
            NodeKey::Mailbox { user, guid } => {
                out.push(MAILBOX);
                out.extend_from_slice(user.as_bytes());
                out.push(0);
                out.extend_from_slice(&guid.0);
            }
            NodeKey::Uid {
                user,
                guid,
                level,
                index,
            } => {
                out.push(UID);
                out.extend_from_slice(user.as_bytes());
                out.push(0);
                out.extend_from_slice(&guid.0);
                out.push(*level);
                out.extend_from_slice(&index.to_be_bytes());
            }
        }
        out
    }

    /// Decodes a stored key; `None` for bytes no encoder produces (a corrupt table).
    pub fn decode(bytes: &[u8]) -> Option<NodeKey> {
        let (&kind, rest) = bytes.split_first()?;
        match kind {
            TOP => match rest {
                [level, hi, lo] => Some(NodeKey::Top {
                    level: *level,
                    index: u16::from_be_bytes([*hi, *lo]),
                }),
                _ => None,
            },
            USER => {
                let bucket = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
                let user = String::from_utf8(rest.get(2..)?.to_vec()).ok()?;
                Some(NodeKey::User { bucket, user })
            }
            MAILBOX => {
                let nul = rest.iter().position(|&b| b == 0)?;
                let user = String::from_utf8(rest[..nul].to_vec()).ok()?;
                let guid: [u8; 16] = rest.get(nul + 1..)?.try_into().ok()?;
                Some(NodeKey::Mailbox {
                    user,
                    guid: MailboxGuid(guid),
                })
            }
            UID => {
                let nul = rest.iter().position(|&b| b == 0)?;
                let user = String::from_utf8(rest[..nul].to_vec()).ok()?;
                let tail = rest.get(nul + 1..)?;
                if tail.len() != 21 {
                    return None;
                }
                let guid: [u8; 16] = tail[..16].try_into().ok()?;
                let index = u32::from_be_bytes(tail[17..21].try_into().ok()?);
                Some(NodeKey::Uid {
                    user,
                    guid: MailboxGuid(guid),
                    level: tail[16],
                    index,
                })
            }
            _ => None,
        }
    }

    /// The inclusive key range that holds this node's stored children (for a bucket: none;
    /// its entries live in the message table).
    pub fn children_range(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        match self {
            NodeKey::Top { level, index } if *level < TOP_LEAF_LEVEL => {
                let first = (*index as u32 * FANOUT) as u16;
                let last = first + (FANOUT as u16 - 1);
                Some((
                    NodeKey::Top {
                        level: level + 1,
                        index: first,
                    }
                    .encode(),
                    NodeKey::Top {
                        level: level + 1,
                        index: last,
                    }
                    .encode(),
                ))
            }
            NodeKey::Top { index, .. } => {
                let mut start = vec![USER];
                start.extend_from_slice(&index.to_be_bytes());
                let mut end = start.clone();
                end.push(0xff); // user names are UTF-8, which never contains 0xff
                Some((start, end))
            }
            NodeKey::User { user, .. } => {
                let mut start = vec![MAILBOX];
                start.extend_from_slice(user.as_bytes());
                start.push(0);
                let mut end = start.clone();
                end.extend_from_slice(&[0xff; 16]);
                Some((start, end))
            }
            NodeKey::Mailbox { user, guid } => {
                let root = NodeKey::uid_root(user, *guid).encode();
                Some((root.clone(), root))
            }
            NodeKey::Uid {
                user,
                guid,
                level,
                index,
            } if *level > 0 => {
                let first = index.checked_mul(FANOUT).unwrap_or(u32::MAX);
                let last = first.saturating_add(FANOUT - 1);
                let child = |index| {
                    NodeKey::Uid {
                        user: user.clone(),
                        guid: *guid,
                        level: level - 1,
                        index,
                    }
                    .encode()
                };
                Some((child(first), child(last)))
            }
            NodeKey::Uid { .. } => None,
        }
    }

    /// The node this one hangs under; `None` for the root.
    pub fn parent(&self) -> Option<NodeKey> {
        match self {
            NodeKey::Top { level: 0, .. } => None,
            NodeKey::Top { level, index } => Some(NodeKey::Top {
                level: level - 1,
                index: index >> FANOUT_SHIFT,
            }),
            NodeKey::User { bucket, .. } => Some(NodeKey::Top {
                level: TOP_LEAF_LEVEL,
                index: *bucket,
            }),
            NodeKey::Mailbox { user, .. } => Some(NodeKey::user(user)),
            NodeKey::Uid {
                user, guid, level, ..
            } if *level == UID_ROOT_LEVEL => Some(NodeKey::Mailbox {
                user: user.clone(),
                guid: *guid,
            }),
            NodeKey::Uid {
                user,
                guid,
                level,
                index,
            } => Some(NodeKey::Uid {
                user: user.clone(),
                guid: *guid,
                level: level + 1,
                index: index >> FANOUT_SHIFT,
            }),
        }
    }

    /// The key range holding every UID-range node of one mailbox (to drop them on delete).
    pub fn mailbox_uid_range(user: &str, guid: MailboxGuid) -> (Vec<u8>, Vec<u8>) {
        let (first, _) = NodeKey::uid_level_range(user, guid, 0);
        let (_, last) = NodeKey::uid_level_range(user, guid, UID_ROOT_LEVEL);
        (first, last)
    }

    /// The key range holding the nodes of one level of a mailbox's UID tree.
    pub fn uid_level_range(user: &str, guid: MailboxGuid, level: u8) -> (Vec<u8>, Vec<u8>) {
        let node = |index| {
            NodeKey::Uid {
                user: user.to_string(),
                guid,
                level,
                index,
            }
            .encode()
        };
        (node(0), node(u32::MAX))
    }
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeKey::Top { level: 0, .. } => write!(f, "root"),
            NodeKey::Top { level, index } if *level == TOP_LEAF_LEVEL => {
                write!(f, "user bucket {index:03x}")
            }
            NodeKey::Top { level, index } => write!(f, "top level {level} node {index:x}"),
            NodeKey::User { user, .. } => write!(f, "user {user:?}"),
            NodeKey::Mailbox { user, guid } => write!(f, "user {user:?} mailbox {guid}"),
            NodeKey::Uid {
                user,
                guid,
                level: 0,
                index,
            } => {
                let first = index << BUCKET_SHIFT;
                write!(
                    f,
                    "user {user:?} mailbox {guid} UIDs {first}..={}",
                    first + 63
                )
            }
            NodeKey::Uid {
                user,
                guid,
                level,
                index,
            } => {
                write!(
                    f,
                    "user {user:?} mailbox {guid} UID level {level} node {index:x}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_key() -> impl Strategy<Value = NodeKey> {
        let user = "[a-zé]{1,6}";
        prop_oneof![
            (0u8..=3, 0u16..4096).prop_map(|(level, index)| NodeKey::Top {
                level,
                index: index % (1 << (4 * level as u32)).max(1)
            }),
            user.prop_map(|u| NodeKey::user(&u)),
            (user, any::<[u8; 16]>()).prop_map(|(user, g)| NodeKey::Mailbox {
                user,
                guid: MailboxGuid(g)
            }),
            (user, any::<[u8; 16]>(), 0u8..=7, any::<u32>()).prop_map(|(user, g, level, index)| {
                NodeKey::Uid {
                    user,
                    guid: MailboxGuid(g),
                    level,
                    index: index.checked_shr(6 + 4 * level as u32).unwrap_or(0),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(key in arb_key()) {
            prop_assert_eq!(NodeKey::decode(&key.encode()), Some(key));
        }

        #[test]
        fn a_node_lies_in_its_parents_children_range(key in arb_key()) {
            if let Some(parent) = key.parent() {
                let (start, end) = parent.children_range().expect("parents have children");
                let encoded = key.encode();
                prop_assert!(start <= encoded && encoded <= end, "{key} not under {parent}");
            }
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = NodeKey::decode(&bytes);
        }
    }

    #[test]
    fn uid_levels_cover_all_uids() {
        let mut key = NodeKey::Uid {
            user: "u".into(),
            guid: MailboxGuid([0; 16]),
            level: 0,
            index: bucket_of(u32::MAX),
        };
        for _ in 0..UID_ROOT_LEVEL {
            key = key.parent().unwrap();
        }
        assert_eq!(key, NodeKey::uid_root("u", MailboxGuid([0; 16])));
    }
}
