//! The responder's side of a round: answer every question from the local store, in order.

use super::wire::{
    ChildId, Reply, Request, RoundReply, RoundRequest, Summary, WireKey, WIRE_VERSION,
};
use crate::merkle::{NodeKey, NodeValue, UID_ROOT_LEVEL};
use crate::model::validate_user;
use crate::store::{Store, StoreError};

pub(crate) fn summary(value: &NodeValue, window: u8) -> Summary {
    Summary {
        hash: value.hash.truncated(window),
        count: value.count,
    }
}

/// The model key for a wire key; user names are validated so no key can reach another user's.
pub fn node_key(key: &WireKey) -> Result<NodeKey, StoreError> {
    match key {
        WireKey::Top { level, index } => {
            if *level > crate::merkle::TOP_LEAF_LEVEL
                || u32::from(*index) >= 16u32.pow(u32::from(*level))
            {
                return Err(StoreError::Invalid(format!("no top node {level}/{index}")));
            }
            Ok(NodeKey::Top {
                level: *level,
                index: *index,
            })
        }
        WireKey::User { user } => {
            validate_user(user)?;
            Ok(NodeKey::user(user))
        }
        WireKey::Mailbox { user, guid } => {
            validate_user(user)?;
            Ok(NodeKey::Mailbox {
                user: user.clone(),
                guid: *guid,
            })
        }
        WireKey::Uid {
            user,
            guid,
            level,
            index,
        } => {
            validate_user(user)?;
            if *level > UID_ROOT_LEVEL {
                return Err(StoreError::Invalid(format!("no UID level {level}")));
            }
            Ok(NodeKey::Uid {
                user: user.clone(),
                guid: *guid,
                level: *level,
                index: *index,
            })
        }
    }
}

pub fn wire_key(key: &NodeKey) -> WireKey {
    match key {
        NodeKey::Top { level, index } => WireKey::Top {
            level: *level,
            index: *index,
        },
        NodeKey::User { user, .. } => WireKey::User { user: user.clone() },
        NodeKey::Mailbox { user, guid } => WireKey::Mailbox {
            user: user.clone(),
            guid: *guid,
        },
        NodeKey::Uid {
            user,
            guid,
            level,
            index,
        } => WireKey::Uid {
            user: user.clone(),
            guid: *guid,
            level: *level,
            index: *index,
        },
    }
}

/// How a child is named relative to its parent.
pub fn child_id(child: &NodeKey) -> ChildId {
    match child {
        NodeKey::Top { index, .. } => ChildId::Slot((index & 0xf) as u8),
        NodeKey::User { user, .. } => ChildId::User(user.clone()),
        NodeKey::Mailbox { guid, .. } => ChildId::Mailbox(*guid),
        NodeKey::Uid { level, .. } if *level == UID_ROOT_LEVEL => ChildId::UidRoot,
        NodeKey::Uid { index, .. } => ChildId::Slot((index & 0xf) as u8),
    }
}

fn children(
    store: &Store,
    key: &NodeKey,
    window: u8,
) -> Result<Vec<(ChildId, Summary)>, StoreError> {
    Ok(store
        .children(key)?
        .iter()
        .map(|(k, v)| (child_id(k), summary(v, window)))
        .collect())
}

/// Answers a round. Questions that name nothing get empty answers; malformed names get an
/// error (the HTTP layer answers 400) and change nothing.
pub fn answer(store: &Store, round: &RoundRequest) -> Result<RoundReply, StoreError> {
    let w = round.window;
    let mut replies = Vec::with_capacity(round.requests.len());
    for request in &round.requests {
        replies.push(match request {
            Request::Root { root } => {
                let ours = store.root()?;
                let equal = ours.hash.0 == *root;
                let children = if equal {
                    Vec::new()
                } else {
                    children(store, &NodeKey::root(), w)?
                };
                Reply::Root {
                    equal,
                    count: ours.count,
                    children,
                }
            }
            Request::Children { node } => Reply::Children {
                children: children(store, &node_key(node)?, w)?,
            },
            Request::Mailbox { user, guid } => {
                validate_user(user)?;
                let side = store.mailbox_side(user, *guid, Some(&Default::default()))?;
                let node = store
                    .node(&NodeKey::Mailbox {
                        user: user.clone(),
                        guid: *guid,
                    })?
                    .map(|v| summary(&v, w));
                Reply::Mailbox {
                    record: side.record,
                    tombstone: side.tombstone,
                    node,
                }
            }
            Request::UidLevel { user, guid, level } => {
                validate_user(user)?;
                let nodes = store
                    .uid_level(user, *guid, *level)?
                    .iter()
                    .map(|(i, v)| (*i, summary(v, w)))
                    .collect();
                Reply::UidLevel { nodes }
            }
            Request::Entries { user, guid, bucket } => {
                validate_user(user)?;
                let entries = store
                    .bucket_entries(user, *guid, *bucket)?
                    .iter()
                    .map(|(u, h)| (*u, h.truncated(w)))
                    .collect();
                Reply::Entries { entries }
            }
            Request::Records { user, guid, uids } => {
                validate_user(user)?;
                let set = uids.iter().copied().collect();
                let side = store.mailbox_side(user, *guid, Some(&set))?;
                Reply::Records {
                    messages: side.messages.into_iter().collect(),
                    tombstones: flatten(side.expunged),
                }
            }
            Request::Full { user, guid } => {
                validate_user(user)?;
                let side = store.mailbox_side(user, *guid, None)?;
                Reply::Full {
                    messages: side.messages.into_iter().collect(),
                    tombstones: flatten(side.expunged),
                }
            }
            Request::Bodies { digests } => {
                let mut bodies = Vec::with_capacity(digests.len());
                for d in digests {
                    bodies.push(if store.has_body(d)? {
                        Some(store.body(d)?)
                    } else {
                        None
                    });
                }
                Reply::Bodies { bodies }
            }
            Request::Users { bucket } => {
                let key = node_key(&WireKey::Top {
                    level: crate::merkle::TOP_LEAF_LEVEL,
                    index: *bucket,
                })?;
                let mut users = Vec::new();
                for (user_key, value) in store.children(&key)? {
                    let NodeKey::User { user, .. } = &user_key else {
                        continue;
                    };
                    let mailboxes = store
                        .children(&user_key)?
                        .iter()
                        .filter_map(|(k, v)| match k {
                            NodeKey::Mailbox { guid, .. } => Some((*guid, summary(v, w))),
                            _ => None,
                        })
                        .collect();
                    users.push((user.clone(), summary(&value, w), mailboxes));
                }
                Reply::Users { users }
            }
            Request::PutBodies { bodies } => Reply::Staged {
                count: store.stage_bodies(bodies)? as u64,
            },
            Request::Apply { groups } => {
                for g in groups {
                    validate_user(&g.user)?;
                }
                let applied = store.apply_groups(groups)?;
                Reply::Applied {
                    applied,
                    root: store.root()?.hash.0,
                }
            }
        });
    }
    Ok(RoundReply {
        version: WIRE_VERSION,
        replies,
    })
}

fn flatten(
    map: std::collections::BTreeMap<u32, Vec<crate::model::Tombstone>>,
) -> Vec<(u32, crate::model::Tombstone)> {
    map.into_iter()
        .flat_map(|(uid, ts)| ts.into_iter().map(move |t| (uid, t)))
        .collect()
}
