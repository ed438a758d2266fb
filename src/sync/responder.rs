//! The responder's side of a round: answer every question from the local replica (the store,
//! through [`Replica`]), in order.

use super::replica::Replica;
use super::wire::{
    digest_prefix, fp, from_gaps, group_stamp, guid_digest, record_rest, record_with_body,
    run_hash, to_gaps, ApplyGroup, BucketRuns, GuidRef, MailboxDiff, MailboxState, Reply, Request,
    RoundReply, RoundRequest, Run, Slots, Summary, UserDiff, UserHashes, UserRef, WireChange,
    WireKey, WireRecord, RUNS_PER_BUCKET, RUN_SHIFT, WIRE_VERSION,
};
use crate::merkle::{NodeHash, NodeKey, NodeValue, BUCKET_SHIFT, TOP_LEAF_LEVEL, UID_ROOT_LEVEL};
use crate::model::{
    validate_user, Change, ChangeGroup, CheckedBody, Digest, MailboxGuid, MailboxSide,
    MessageRecord, Tombstone,
};
use crate::store::StoreError;
use std::collections::{BTreeMap, BTreeSet};

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

/// The UID-tree level to compare first: the lowest whose non-empty nodes number at most 16
/// for a mailbox with this UIDNEXT, so the single-child chain above a small mailbox costs no
/// round trips.
pub fn start_level(uidnext: u32) -> u8 {
    let mut buckets = u64::from(uidnext.saturating_sub(1) >> BUCKET_SHIFT) + 1;
    let mut level = 0;
    while buckets > 16 && level < UID_ROOT_LEVEL {
        buckets = buckets.div_ceil(16);
        level += 1;
    }
    level
}

/// The slot of a top or UID node under its parent.
fn slot_of(key: &NodeKey) -> u8 {
    match key {
        NodeKey::Top { index, .. } => (index & 0xf) as u8,
        NodeKey::Uid { index, .. } => (index & 0xf) as u8,
        _ => 0,
    }
}

/// The children of a fan-out node (top levels above the user buckets, UID interior nodes).
pub(crate) fn slots(store: &dyn Replica, key: &NodeKey, window: u8) -> Result<Slots, StoreError> {
    Ok(Slots::from_pairs(
        store
            .children(key)?
            .iter()
            .map(|(k, v)| (slot_of(k), fp(&v.hash, window))),
    ))
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

/// A user's mailboxes in GUID order, as the tree holds them.
pub(crate) fn user_mailboxes(
    store: &dyn Replica,
    user: &str,
) -> Result<Vec<(MailboxGuid, NodeValue)>, StoreError> {
    Ok(store
        .children(&NodeKey::user(user))?
        .into_iter()
        .filter_map(|(k, v)| match k {
            NodeKey::Mailbox { guid, .. } => Some((guid, v)),
            _ => None,
        })
        .collect())
}

fn mailbox_diff(
    store: &dyn Replica,
    user: &str,
    guid: MailboxGuid,
    value: &NodeValue,
    at: usize,
    delta: bool,
    w: u8,
) -> Result<MailboxDiff, StoreError> {
    let Some(record) = store
        .mailbox_side(user, guid, Some(&BTreeSet::new()))?
        .record
    else {
        return Err(StoreError::Corrupt(format!(
            "a tree node for mailbox {guid} of {user:?} without its record"
        )));
    };
    let level = start_level(record.uidnext);
    let nodes = store
        .uid_level(user, guid, level)?
        .iter()
        .map(|(i, v)| (*i, fp(&v.hash, w)))
        .collect();
    let state = if delta {
        MailboxState::Delta {
            uidvalidity: record.uidvalidity,
            uidnext: record.uidnext,
            last_change: record.last_change,
            rest: record_rest(&record, w),
        }
    } else {
        MailboxState::Full(record)
    };
    Ok(MailboxDiff {
        at: at as u32,
        node: value.hash.truncated(w),
        state,
        level,
        nodes,
    })
}

/// Compares the asker's users of a bucket with ours; answers only what differs.
fn users(
    store: &dyn Replica,
    bucket: u16,
    asked: &[UserHashes],
    w: u8,
) -> Result<Vec<UserDiff>, StoreError> {
    let key = node_key(&WireKey::Top {
        level: TOP_LEAF_LEVEL,
        index: bucket,
    })?;
    let mut ours: BTreeMap<String, ()> = BTreeMap::new();
    for (k, _) in store.children(&key)? {
        if let NodeKey::User { user, .. } = k {
            ours.insert(user, ());
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, u) in asked.iter().enumerate() {
        validate_user(&u.name)?;
        if !seen.insert(u.name.as_str()) {
            return Err(invalid(format!("user {:?} listed twice", u.name)));
        }
        if ours.remove(&u.name).is_none() {
            out.push(UserDiff {
                user: UserRef::Asked(i as u32),
                listing: Some(Vec::new()),
                mailboxes: Vec::new(),
            });
            continue;
        }
        let mbs = user_mailboxes(store, &u.name)?;
        let same_guids =
            mbs.len() == u.mailboxes.len() && guid_digest(mbs.iter().map(|(g, _)| g), w) == u.guids;
        let mut diffs = Vec::new();
        if same_guids {
            for (pos, ((guid, v), theirs)) in mbs.iter().zip(&u.mailboxes).enumerate() {
                if fp(&v.hash, w) != *theirs {
                    diffs.push(mailbox_diff(store, &u.name, *guid, v, pos, true, w)?);
                }
            }
            if !diffs.is_empty() {
                out.push(UserDiff {
                    user: UserRef::Asked(i as u32),
                    listing: None,
                    mailboxes: diffs,
                });
            }
        } else {
            let theirs: BTreeSet<&[u8; 3]> = u.mailboxes.iter().collect();
            for (pos, (guid, v)) in mbs.iter().enumerate() {
                if !theirs.contains(&fp(&v.hash, w)) {
                    diffs.push(mailbox_diff(store, &u.name, *guid, v, pos, false, w)?);
                }
            }
            out.push(UserDiff {
                user: UserRef::Asked(i as u32),
                listing: Some(mbs.iter().map(|(g, _)| *g).collect()),
                mailboxes: diffs,
            });
        }
    }
    for user in ours.into_keys() {
        let mbs = user_mailboxes(store, &user)?;
        let mut diffs = Vec::new();
        for (pos, (guid, v)) in mbs.iter().enumerate() {
            diffs.push(mailbox_diff(store, &user, *guid, v, pos, false, w)?);
        }
        out.push(UserDiff {
            listing: Some(mbs.iter().map(|(g, _)| *g).collect()),
            user: UserRef::New(user),
            mailboxes: diffs,
        });
    }
    Ok(out)
}

/// The mailbox a reference names among `user`'s: `None` when a prefix names none or several.
pub(crate) fn resolve(
    store: &dyn Replica,
    user: &str,
    guid: &GuidRef,
) -> Result<Option<MailboxGuid>, StoreError> {
    match guid {
        GuidRef::Full(g) => Ok(Some(*g)),
        GuidRef::Prefix(_) => {
            let mut found = user_mailboxes(store, user)?
                .into_iter()
                .map(|(g, _)| g)
                .filter(|g| guid.names(g));
            match (found.next(), found.next()) {
                (Some(g), None) => Ok(Some(g)),
                _ => Ok(None),
            }
        }
    }
}

fn resolved(store: &dyn Replica, user: &str, guid: &GuidRef) -> Result<MailboxGuid, StoreError> {
    validate_user(user)?;
    resolve(store, user, guid)?
        .ok_or_else(|| invalid(format!("{guid:?} names no single mailbox of {user:?}")))
}

/// Message bodies sent with the records of a tail, at most this many bytes per round (the
/// rest as records, their bodies fetched apart).
pub const INLINE_BODY_BYTES: u64 = 8 << 20;

/// The entries of one bucket below `limit`, grouped into the 8 runs of 8 UIDs.
pub(crate) fn runs_of(
    entries: &[(u32, NodeHash)],
    limit: u32,
) -> BTreeMap<u8, Vec<(u32, NodeHash)>> {
    let mut runs: BTreeMap<u8, Vec<(u32, NodeHash)>> = BTreeMap::new();
    for (uid, h) in entries.iter().filter(|(u, _)| *u < limit) {
        let run = ((uid >> RUN_SHIFT) % RUNS_PER_BUCKET) as u8;
        runs.entry(run).or_default().push((*uid, *h));
    }
    runs
}

fn runs(
    store: &dyn Replica,
    user: &str,
    guid: MailboxGuid,
    asked: &BucketRuns,
    limit: u32,
    w: u8,
) -> Result<Vec<Run>, StoreError> {
    let BucketRuns {
        bucket,
        present,
        hashes,
    } = asked;
    let (bucket, present) = (*bucket, *present);
    validate_user(user)?;
    if bucket > u32::MAX >> BUCKET_SHIFT || present.count_ones() as usize != hashes.len() {
        return Err(invalid("a malformed Runs question"));
    }
    let theirs: BTreeMap<u8, [u8; 3]> = (0..8u8)
        .filter(|r| present & (1 << r) != 0)
        .zip(hashes.iter().copied())
        .collect();
    let ours = runs_of(&store.bucket_entries(user, guid, bucket)?, limit);
    let mut out = Vec::new();
    for run in 0..RUNS_PER_BUCKET as u8 {
        let entries = ours.get(&run);
        let hash = entries.map(|e| run_hash(e.iter().map(|(_, h)| h), w));
        if hash == theirs.get(&run).copied() {
            continue;
        }
        let mut bits = 0u8;
        let mut fps = Vec::new();
        for (uid, h) in entries.into_iter().flatten() {
            bits |= 1 << (uid % 8);
            fps.push(fp(h, w));
        }
        out.push(Run {
            run,
            present: bits,
            hashes: fps,
        });
    }
    Ok(out)
}

/// Sorted, merged inclusive ranges.
pub(crate) fn normalize(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.retain(|(a, b)| a <= b);
    ranges.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

type Listed = (Vec<(u32, WireRecord)>, Vec<(u32, Tombstone)>);

/// Messages and tombstones with gap-coded UIDs; a message whose digest the asker holds at
/// that UID (`held`: the digest's first 4 bytes) as its flags alone.
/// Messages from `inline` on are new to the asker (its tail), and a message where the asker
/// holds another digest (a UID clash) is too: both travel with their bodies while `budget`
/// lasts.
fn gapped(
    store: &dyn Replica,
    side: crate::model::MailboxSide,
    held: &BTreeMap<u32, [u8; 4]>,
    inline: Option<u32>,
    budget: &mut u64,
) -> Result<Listed, StoreError> {
    let mut uids = Vec::with_capacity(side.messages.len());
    let mut records = Vec::with_capacity(side.messages.len());
    for (uid, m) in side.messages {
        uids.push(uid);
        let flags_only = held.get(&uid) == Some(&digest_prefix(&m.digest));
        // A body that rotted here is not sent inline: the record goes alone.
        let body = if !flags_only
            && (inline.is_some_and(|f| uid >= f) || held.contains_key(&uid))
            && m.size <= *budget
        {
            store.sound_body(&m.digest)?
        } else {
            None
        };
        records.push(if flags_only {
            WireRecord::Flags(m.flags)
        } else if let Some(body) = body {
            *budget = budget.saturating_sub(body.len() as u64);
            WireRecord::New {
                internal_date: m.internal_date,
                flags: m.flags,
                appended: m.appended,
                body,
            }
        } else {
            WireRecord::Full(m)
        });
    }
    let messages = to_gaps(uids).into_iter().zip(records).collect();
    let (tuids, tombs): (Vec<u32>, Vec<Tombstone>) = side
        .expunged
        .into_iter()
        .flat_map(|(uid, ts)| ts.into_iter().map(move |t| (uid, t)))
        .unzip();
    let tombstones = to_gaps(tuids).into_iter().zip(tombs).collect();
    Ok((messages, tombstones))
}

/// The UIDs whose records a wire group's deltas refer to (what must be read to fill them in).
fn referred(g: &ApplyGroup) -> BTreeSet<u32> {
    g.changes
        .iter()
        .filter_map(|c| match c {
            WireChange::Flags { uid, .. }
            | WireChange::Move { from: uid, .. }
            | WireChange::Expunge {
                uid, digest: None, ..
            } => Some(*uid),
            _ => None,
        })
        .collect()
}

/// The store's change group for a wire group, with deltas filled in from what this replica
/// holds; `None` when the mailbox no longer holds what a delta refers to (stale).
fn change_group(
    store: &dyn Replica,
    g: &ApplyGroup,
    w: u8,
) -> Result<Option<ChangeGroup>, StoreError> {
    validate_user(&g.user)?;
    let Some(guid) = resolve(store, &g.user, &g.guid)? else {
        return Ok(None);
    };
    let side = store.mailbox_side(&g.user, guid, Some(&referred(g)))?;
    let mut changes = Vec::with_capacity(g.changes.len());
    for c in &g.changes {
        let Some(change) = change_of(c, g, guid, &side)? else {
            return Ok(None);
        };
        changes.push(change);
    }
    Ok(Some(ChangeGroup {
        user: g.user.clone(),
        guid,
        window: w,
        expect: g.expect,
        changes,
    }))
}

/// Refuses `what` (a record or a tombstone) that names a GUID other than its group's.
fn same_guid(named: MailboxGuid, guid: MailboxGuid, what: &str) -> Result<(), StoreError> {
    if named != guid {
        return Err(invalid(format!("{what} under another GUID")));
    }
    Ok(())
}

/// One wire change of group `g` as the store's change; `None` when it is a delta against
/// something `side` (this replica's mailbox at the referred UIDs) no longer holds.
fn change_of(
    c: &WireChange,
    g: &ApplyGroup,
    guid: MailboxGuid,
    side: &MailboxSide,
) -> Result<Option<Change>, StoreError> {
    let user = || g.user.clone();
    Ok(Some(match c {
        WireChange::Mailbox(record) => {
            same_guid(record.guid, guid, "a mailbox record")?;
            Change::Mailbox {
                user: user(),
                record: record.clone(),
            }
        }
        WireChange::Message { uid, record, body } => Change::Message {
            user: user(),
            guid,
            uid: *uid,
            record: record.clone(),
            body: body.clone(),
        },
        WireChange::New {
            uid,
            internal_date,
            flags,
            appended,
            body,
        } => Change::Message {
            user: user(),
            guid,
            uid: *uid,
            record: record_with_body(*internal_date, flags.clone(), *appended, body),
            body: Some(body.clone()),
        },
        WireChange::DeleteMailbox(tombstone) => {
            same_guid(tombstone.guid, guid, "a mailbox tombstone")?;
            Change::DeleteMailbox {
                user: user(),
                tombstone: tombstone.clone(),
            }
        }
        WireChange::Remove { uid } => Change::Remove {
            user: user(),
            guid,
            uid: *uid,
        },
        WireChange::Next { .. }
        | WireChange::Move { .. }
        | WireChange::Flags { .. }
        | WireChange::Expunge { .. } => return delta_of(c, g, guid, side),
    }))
}

/// A delta (`Next`, `Move`, `Flags`, an `Expunge` without its digest) filled in from what
/// `side` holds; `None` when it no longer holds what the delta refers to.
fn delta_of(
    c: &WireChange,
    g: &ApplyGroup,
    guid: MailboxGuid,
    side: &MailboxSide,
) -> Result<Option<Change>, StoreError> {
    let user = || g.user.clone();
    let message = |uid: u32, record: MessageRecord| Change::Message {
        user: user(),
        guid,
        uid,
        record,
        body: None,
    };
    Ok(match c {
        WireChange::Next {
            uidnext,
            last_change,
        } => {
            let Some(mut record) = side.record.clone() else {
                return Ok(None);
            };
            record.uidnext = *uidnext;
            record.last_change = match last_change {
                Some(s) => *s,
                None => group_stamp(&g.changes)
                    .ok_or_else(|| invalid("a Next without a stamp in a group without one"))?,
            };
            Some(Change::Mailbox {
                user: user(),
                record,
            })
        }
        WireChange::Move {
            uid,
            from,
            flags,
            appended,
        } => side.messages.get(from).cloned().map(|mut record| {
            record.flags = flags.clone();
            record.appended = *appended;
            message(*uid, record)
        }),
        WireChange::Flags { uid, flags } => side.messages.get(uid).cloned().map(|mut record| {
            record.flags.merge(flags);
            message(*uid, record)
        }),
        WireChange::Expunge {
            uid,
            digest,
            stamp,
            origin,
        } => digest
            .or_else(|| side.messages.get(uid).map(|m| m.digest))
            .map(|digest| Change::Expunge {
                user: user(),
                guid,
                uid: *uid,
                tombstone: Tombstone {
                    digest,
                    stamp: *stamp,
                    origin: *origin,
                },
            }),
        // `change_of` hands over only the four kinds above.
        _ => return Err(invalid("a whole change taken for a delta")),
    })
}

/// Whether the roots are equal, and when not, the root's children.
fn root_reply(store: &dyn Replica, root: &[u8; 32], w: u8) -> Result<Reply, StoreError> {
    let ours = store.root()?;
    let equal = ours.hash.0 == *root;
    let children = if equal {
        Slots::default()
    } else {
        slots(store, &NodeKey::root(), w)?
    };
    Ok(Reply::Root { equal, children })
}

/// The children of a fan-out node (a top node above the user buckets, a UID interior node).
fn children_reply(store: &dyn Replica, node: &WireKey, w: u8) -> Result<Reply, StoreError> {
    let key = node_key(node)?;
    match &key {
        NodeKey::Top { level, .. } if *level < TOP_LEAF_LEVEL => {}
        NodeKey::Uid { level, .. } if *level > 0 => {}
        _ => return Err(invalid(format!("no fan-out children under {key}"))),
    }
    Ok(Reply::Children {
        children: slots(store, &key, w)?,
    })
}

/// One mailbox's record or tombstone, and its node.
fn mailbox_reply(
    store: &dyn Replica,
    user: &str,
    guid: &GuidRef,
    w: u8,
) -> Result<Reply, StoreError> {
    let guid = &resolved(store, user, guid)?;
    let side = store.mailbox_side(user, *guid, Some(&Default::default()))?;
    let node = store
        .node(&NodeKey::Mailbox {
            user: user.to_string(),
            guid: *guid,
        })?
        .map(|v| Summary {
            hash: v.hash.truncated(w),
            count: v.count,
        });
    Ok(Reply::Mailbox {
        record: side.record,
        tombstone: side.tombstone,
        node,
    })
}

/// What a Records question asks for: the first bytes of the digest the asker holds at each
/// UID it names, and every UID range to read (those UIDs, the ranges, the tail).
type Asked = (BTreeMap<u32, [u8; 4]>, Vec<(u32, u32)>);

/// The [`Asked`] of a Records question.
fn asked_ranges(
    uids: &[(u32, Option<[u8; 4]>)],
    ranges: &[(u32, u32)],
    limit: u32,
    tail: bool,
) -> Result<Asked, StoreError> {
    let gaps: Vec<u32> = uids.iter().map(|(g, _)| *g).collect();
    let plain = from_gaps(&gaps).ok_or_else(|| invalid("UIDs beyond 32 bits"))?;
    let held: BTreeMap<u32, [u8; 4]> = plain
        .iter()
        .zip(uids)
        .filter_map(|(u, (_, h))| h.map(|h| (*u, h)))
        .collect();
    let all = normalize(
        plain
            .iter()
            .map(|u| (*u, *u))
            .chain(ranges.iter().copied())
            .chain(tail.then_some((limit, u32::MAX)))
            .collect(),
    );
    Ok((held, all))
}

/// Applies the asker's groups in one transaction; the answer carries the new root.
fn apply_reply(store: &dyn Replica, groups: &[ApplyGroup], w: u8) -> Result<Reply, StoreError> {
    let mut converted = Vec::with_capacity(groups.len());
    for g in groups {
        converted.push(change_group(store, g, w)?);
    }
    let ready: Vec<ChangeGroup> = converted.iter().flatten().cloned().collect();
    let mut done = store.apply_groups(&ready)?.into_iter();
    let applied = converted
        .iter()
        .map(|c| c.is_some() && done.next().unwrap_or(false))
        .collect();
    Ok(Reply::Applied {
        applied,
        root: store.root()?.hash.0,
    })
}

/// Answers a round. Questions that name nothing get empty answers; malformed names, and an
/// Apply anywhere but last, get an error (the HTTP layer answers 400) and change nothing.
pub fn answer(store: &dyn Replica, round: &RoundRequest) -> Result<RoundReply, StoreError> {
    // An Apply commits by itself, so a request after it that is refused could not take it
    // back: a round carries at most one Apply, as its last request (as sessions send them).
    let applies = round
        .requests
        .iter()
        .filter(|r| matches!(r, Request::Apply { .. }))
        .count();
    let last_applies = matches!(round.requests.last(), Some(Request::Apply { .. }));
    if applies > 1 || (applies == 1 && !last_applies) {
        return Err(invalid(
            "an Apply must be the last request of its round, and the only one",
        ));
    }
    let mut staged = Vec::new();
    let answered = answer_each(store, round, &mut staged);
    if answered.is_err() && !staged.is_empty() {
        // A refused round changes nothing: the bodies it staged go again.
        if let Err(e) = store.unstage_bodies(&staged) {
            tracing::warn!(error = %e, bodies = staged.len(), "cannot take back the bodies a refused round staged; they expire within the hour");
        }
    }
    answered
}

/// [`answer`]'s requests one by one; `staged` gathers the bodies their `PutBodies` staged.
fn answer_each(
    store: &dyn Replica,
    round: &RoundRequest,
    staged: &mut Vec<Digest>,
) -> Result<RoundReply, StoreError> {
    let w = round.window;
    let mut budget = INLINE_BODY_BYTES;
    let mut replies = Vec::with_capacity(round.requests.len());
    for request in &round.requests {
        replies.push(match request {
            Request::Root { root } => root_reply(store, root, w)?,
            Request::Children { node } => children_reply(store, node, w)?,
            Request::Mailbox { user, guid } => mailbox_reply(store, user, guid, w)?,
            Request::Users {
                bucket,
                users: asked,
            } => Reply::Users {
                users: users(store, *bucket, asked, w)?,
            },
            Request::Records {
                user,
                guid,
                uids,
                ranges,
                limit,
                tail,
                buckets,
            } => {
                let guid = &resolved(store, user, guid)?;
                let limit = limit.unwrap_or(u32::MAX);
                let mut compared = Vec::with_capacity(buckets.len());
                for b in buckets {
                    compared.push(runs(store, user, *guid, b, limit, w)?);
                }
                let (held, all) = asked_ranges(uids, ranges, limit, *tail)?;
                let side = store.mailbox_side_in(user, *guid, &all)?;
                let inline = tail.then_some(limit);
                let (messages, tombstones) = gapped(store, side, &held, inline, &mut budget)?;
                Reply::Records {
                    runs: compared,
                    messages,
                    tombstones,
                }
            }
            Request::Full { user, guid } => {
                let guid = &resolved(store, user, guid)?;
                let side = store.mailbox_side(user, *guid, None)?;
                let (messages, tombstones) =
                    gapped(store, side, &BTreeMap::new(), None, &mut budget)?;
                Reply::Full {
                    messages,
                    tombstones,
                }
            }
            Request::Bodies { digests } => {
                let mut bodies = Vec::with_capacity(digests.len());
                for d in digests {
                    // A body that rotted here is not held, as far as the asker is concerned.
                    bodies.push(store.sound_body(d)?);
                }
                Reply::Bodies { bodies }
            }
            Request::PutBodies { bodies } => {
                let checked: Vec<CheckedBody<'_>> =
                    bodies.iter().map(|b| CheckedBody::new(b)).collect();
                staged.extend(store.stage_bodies_marking(&checked)?);
                Reply::Staged {
                    count: checked.len() as u64,
                }
            }
            Request::Apply { groups } => apply_reply(store, groups, w)?,
        });
    }
    Ok(RoundReply {
        version: WIRE_VERSION,
        replies,
    })
}
