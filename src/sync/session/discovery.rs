//! Discovery: the roots, the level-synchronous descent through the top levels, the user
//! buckets and the differing mailboxes, then each mailbox's UID tree down to the buckets
//! whose runs are compared next (`records`).

use super::{protocol, Ask, Key, Session, SessionError, Work};
use crate::merkle::{
    bucket_hash, user_bucket_of, NodeKey, BUCKET_SHIFT, TOP_LEAF_LEVEL, UID_ROOT_LEVEL,
};
use crate::model::{validate_user, MailboxGuid, MailboxRecord, MailboxTombstone};
use crate::sync::responder::{user_mailboxes, wire_key};
use crate::sync::wire::{
    fp, guid_digest, record_rest, Fp, GuidRef, MailboxDiff, MailboxState, Request, Slots, Summary,
    UserDiff, UserHashes, UserRef,
};
use std::collections::{BTreeMap, BTreeSet};

/// The first and last UID under a UID-tree node.
fn uid_span(level: u8, index: u32) -> (u32, u32) {
    let shift = BUCKET_SHIFT + 4 * u32::from(level);
    let first = u64::from(index) << shift;
    let last = first + (1u64 << shift) - 1;
    (
        first.min(u64::from(u32::MAX)) as u32,
        last.min(u64::from(u32::MAX)) as u32,
    )
}

/// The user an answer about a user bucket names: one we listed (by position), or one only
/// the peer holds, which must be a valid name that belongs in this bucket.
fn named_user(bucket: u16, listed: &[String], user: UserRef) -> Result<String, SessionError> {
    match user {
        UserRef::Asked(i) => listed
            .get(i as usize)
            .cloned()
            .ok_or_else(|| protocol("an answer about a user never listed")),
        UserRef::New(name) => {
            validate_user(&name).map_err(|e| protocol(e.to_string()))?;
            if user_bucket_of(&name) != bucket || listed.contains(&name) {
                return Err(protocol(format!("user {name:?} listed in the wrong place")));
            }
            Ok(name)
        }
    }
}

/// Takes the peer's description of a mailbox's record (whole, or as a delta against ours)
/// into `w`; returns the peer's UIDVALIDITY and UIDNEXT.
fn learn_record(
    w: &mut Work,
    guid: MailboxGuid,
    state: MailboxState,
    local: Option<&MailboxRecord>,
    window: u8,
) -> Result<(u32, u32), SessionError> {
    match state {
        MailboxState::Full(r) => {
            if r.guid != guid {
                return Err(protocol("a mailbox record under another GUID"));
            }
            let v = (r.uidvalidity, r.uidnext);
            w.remote_record = Some(r);
            Ok(v)
        }
        MailboxState::Delta {
            uidvalidity,
            uidnext,
            last_change,
            rest,
        } => {
            match local {
                Some(l) if record_rest(l, window) == rest => {
                    w.remote_record = Some(MailboxRecord {
                        uidvalidity,
                        uidnext,
                        last_change,
                        ..l.clone()
                    });
                }
                _ => w.need_record = true,
            }
            Ok((uidvalidity, uidnext))
        }
    }
}

impl Session<'_> {
    /// The peer's answer about the roots: done when equal, else the descent starts.
    pub(super) fn take_root(&mut self, equal: bool, children: &Slots) -> Result<(), SessionError> {
        if equal {
            self.report.equal_after = true;
            self.phase = super::Phase::Done;
            Ok(())
        } else {
            self.compare_top(&NodeKey::root(), children)
        }
    }

    /// Compares a top node's children (above the user buckets) with ours and follows every
    /// difference.
    pub(super) fn compare_top(
        &mut self,
        parent: &NodeKey,
        remote: &Slots,
    ) -> Result<(), SessionError> {
        let NodeKey::Top { level, index } = parent else {
            return Err(protocol("children of a node that is not a top node"));
        };
        if *level >= TOP_LEAF_LEVEL {
            return Err(protocol("top children below the user buckets"));
        }
        let remote: BTreeMap<u8, Fp> = remote
            .pairs()
            .ok_or_else(|| protocol("a children bitmap that disagrees with its hashes"))?
            .into_iter()
            .collect();
        let local: BTreeMap<u8, Fp> = self
            .local
            .children(parent)?
            .iter()
            .filter_map(|(k, v)| match k {
                NodeKey::Top { index, .. } => Some(((index & 0xf) as u8, self.fp(&v.hash))),
                _ => None,
            })
            .collect();
        let slots: BTreeSet<u8> = local.keys().chain(remote.keys()).copied().collect();
        for slot in slots {
            let (l, r) = (local.get(&slot), remote.get(&slot));
            if l == r {
                continue;
            }
            let child = NodeKey::Top {
                level: level + 1,
                index: index * 16 + u16::from(slot),
            };
            self.visit(child, r.is_some())?;
        }
        Ok(())
    }

    /// Follows a differing node: ask the peer below it, or, where the peer has nothing,
    /// expand our own side down to the mailboxes.
    fn visit(&mut self, key: NodeKey, remote: bool) -> Result<(), SessionError> {
        match &key {
            NodeKey::Top { level, index } if *level == TOP_LEAF_LEVEL && remote => {
                let mut names = Vec::new();
                let mut sent = Vec::new();
                let mut users = Vec::new();
                for (child, _) in self.local.children(&key)? {
                    let NodeKey::User { user, .. } = child else {
                        continue;
                    };
                    let mbs = user_mailboxes(self.local, &user)?;
                    users.push(UserHashes {
                        name: user.clone(),
                        guids: guid_digest(mbs.iter().map(|(g, _)| g), self.window),
                        mailboxes: mbs.iter().map(|(_, v)| self.fp(&v.hash)).collect(),
                    });
                    names.push(user);
                    sent.push(mbs.iter().map(|(g, _)| *g).collect());
                }
                let bucket = *index;
                self.ask(
                    Ask::Users(bucket, names, sent),
                    Request::Users { bucket, users },
                );
            }
            NodeKey::Top { .. } if remote => {
                let node = wire_key(&key);
                self.ask(Ask::Children(key), Request::Children { node });
            }
            NodeKey::Top { .. } | NodeKey::User { .. } => {
                for (child, _) in self.local.children(&key)? {
                    self.visit(child, false)?;
                }
            }
            NodeKey::Mailbox { user, guid } => self.remote_lacks(user.clone(), *guid),
            NodeKey::Uid { .. } => return Err(protocol("UID nodes are compared per mailbox")),
        }
        Ok(())
    }

    /// A mailbox of ours that the peer's tree lacks: it may hold a tombstone for it.
    fn remote_lacks(&mut self, user: String, guid: MailboxGuid) {
        self.report.differing_mailboxes += 1;
        let k = (user.clone(), guid);
        self.work.entry(k.clone()).or_default();
        self.ask(
            Ask::Mailbox(k),
            Request::Mailbox {
                user,
                guid: GuidRef::Full(guid),
            },
        );
    }

    /// The peer's answer about a user bucket: only the users and mailboxes that differ.
    pub(super) fn take_users(
        &mut self,
        bucket: u16,
        listed: &[String],
        sent: &[Vec<MailboxGuid>],
        users: Vec<UserDiff>,
    ) -> Result<(), SessionError> {
        let mut seen = BTreeSet::new();
        for d in users {
            let user = named_user(bucket, listed, d.user)?;
            if !seen.insert(user.clone()) {
                return Err(protocol(format!("user {user:?} answered twice")));
            }
            let at = listed.iter().position(|u| *u == user);
            let sent = at.and_then(|i| sent.get(i)).map(Vec::as_slice);
            self.take_user(user, sent, d.listing, d.mailboxes)?;
        }
        Ok(())
    }

    /// One user's differing mailboxes, and (when the peer listed its GUIDs because they
    /// differ from ours) the mailboxes of ours it lacks. Without a listing the peer names
    /// mailboxes by their position in the GUID list we `sent` with the question, not in ours
    /// now: a writer here may have created or deleted one since, which would shift the
    /// positions (and attach the peer's description of one mailbox to another).
    fn take_user(
        &mut self,
        user: String,
        sent: Option<&[MailboxGuid]>,
        listing: Option<Vec<MailboxGuid>>,
        mailboxes: Vec<MailboxDiff>,
    ) -> Result<(), SessionError> {
        let ours = user_mailboxes(self.local, &user)?;
        let names: Vec<MailboxGuid> = match (&listing, sent) {
            (Some(list), _) => list.clone(),
            (None, Some(sent)) => sent.to_vec(),
            (None, None) => ours.iter().map(|(g, _)| *g).collect(),
        };
        let all: BTreeSet<MailboxGuid> = ours
            .iter()
            .map(|(g, _)| *g)
            .chain(names.iter().copied())
            .collect();
        let unique = |guid: &MailboxGuid| {
            all.iter()
                .filter(|g| GuidRef::prefix_of(g) == GuidRef::prefix_of(guid))
                .count()
                == 1
        };
        let mut differing = BTreeSet::new();
        for m in mailboxes {
            let guid = *names
                .get(m.at as usize)
                .ok_or_else(|| protocol("a mailbox position out of range"))?;
            if !differing.insert(guid) {
                return Err(protocol("a mailbox answered twice"));
            }
            self.take_mailbox((user.clone(), guid), m, unique(&guid))?;
        }
        if let Some(list) = &listing {
            let theirs: BTreeSet<&MailboxGuid> = list.iter().collect();
            for (guid, _) in &ours {
                if !theirs.contains(guid) {
                    self.remote_lacks(user.clone(), *guid);
                }
            }
        }
        Ok(())
    }

    /// A differing mailbox as the peer described it: compare its UID tree at once.
    fn take_mailbox(
        &mut self,
        key: Key,
        m: MailboxDiff,
        prefix_ok: bool,
    ) -> Result<(), SessionError> {
        self.report.differing_mailboxes += 1;
        let local = self
            .local
            .mailbox_side(&key.0, key.1, Some(&BTreeSet::new()))?
            .record;
        let window = self.window;
        let w = self.work.entry(key.clone()).or_default();
        w.remote_known = true;
        w.remote_node = Some(m.node);
        w.prefix_ok = prefix_ok;
        let (uidvalidity, uidnext) = learn_record(w, key.1, m.state, local.as_ref(), window)?;
        w.remote_next = uidnext;
        let need_record = w.need_record;
        match &local {
            Some(l) if l.uidvalidity == uidvalidity => {
                w.limit = l.uidnext.min(uidnext).max(1);
                w.local_next = l.uidnext;
                // The tail: every UID from the smaller UIDNEXT on is new on one side. When
                // that side is ours there is nothing to fetch: a replica holds no message or
                // tombstone at or above its own UIDNEXT (a group that brings one raises it).
                w.tail = l.uidnext != uidnext;
                w.tail_asked = l.uidnext > uidnext;
                self.descend_from(&key, m.level, m.nodes)?;
            }
            _ => w.full = true,
        }
        if need_record {
            let guid = self.guid_ref(&key);
            self.ask(
                Ask::Mailbox(key.clone()),
                Request::Mailbox {
                    user: key.0.clone(),
                    guid,
                },
            );
        }
        Ok(())
    }

    /// Compares the UID-tree level the peer started a mailbox at with ours, and asks at once
    /// for what is known to be needed.
    fn descend_from(
        &mut self,
        key: &Key,
        level: u8,
        nodes: Vec<(u32, Fp)>,
    ) -> Result<(), SessionError> {
        if level > UID_ROOT_LEVEL {
            // A UID tree has no level above its root; spans past it do not exist.
            return Err(protocol(format!(
                "UID-tree level {level} is above the root level {UID_ROOT_LEVEL}"
            )));
        }
        let local_nodes: BTreeMap<u32, Fp> = self
            .local
            .uid_level(&key.0, key.1, level)?
            .iter()
            .map(|(i, v)| (*i, fp(&v.hash, self.window)))
            .collect();
        let remote_nodes: BTreeMap<u32, Fp> = nodes.into_iter().collect();
        self.compare_uid_nodes(key, level, &local_nodes, &remote_nodes)?;
        self.flush(key, false)
    }

    /// The peer's answer about one mailbox: the record a delta could not rebuild, or what it
    /// holds of a mailbox below a node it lacks.
    pub(super) fn take_mailbox_record(
        &mut self,
        key: &Key,
        record: Option<MailboxRecord>,
        tombstone: Option<MailboxTombstone>,
        node: Option<Summary>,
    ) -> Result<(), SessionError> {
        if record.as_ref().is_some_and(|r| r.guid != key.1) {
            return Err(protocol("a mailbox record under another GUID"));
        }
        let w = self.done_with(key)?;
        if w.need_record {
            // The record a delta could not rebuild; the UIDs are compared already.
            w.need_record = false;
            if record.is_none() {
                w.full = true;
            }
        } else {
            // A mailbox below a node the peer lacks: the peer may hold a tombstone.
            w.remote_known = true;
            w.remote_count = node.as_ref().map(|s| s.count);
            w.remote_node = node.map(|s| s.hash);
            w.full = true;
        }
        if let Some(r) = &record {
            w.remote_next = r.uidnext;
        }
        w.remote_record = record;
        w.remote_tombstone = tombstone;
        Ok(())
    }

    /// The peer's children of a UID-tree node: compared with ours one level down.
    pub(super) fn take_uid_children(
        &mut self,
        key: &Key,
        node: NodeKey,
        children: &Slots,
    ) -> Result<(), SessionError> {
        if self.done_with(key)?.full {
            return Ok(());
        }
        let NodeKey::Uid { level, index, .. } = node else {
            return Err(protocol("not a UID node"));
        };
        let pairs = children
            .pairs()
            .ok_or_else(|| protocol("a children bitmap that disagrees with its hashes"))?;
        let to_index = |slot: u8| index.wrapping_mul(16).wrapping_add(u32::from(slot));
        let local: BTreeMap<u32, Fp> = self
            .local
            .children(&node)?
            .iter()
            .filter_map(|(k, v)| match k {
                NodeKey::Uid { index, .. } => Some((*index, self.fp(&v.hash))),
                _ => None,
            })
            .collect();
        let remote: BTreeMap<u32, Fp> = pairs.into_iter().map(|(s, h)| (to_index(s), h)).collect();
        self.compare_uid_nodes(key, level.saturating_sub(1), &local, &remote)?;
        self.flush(key, false)
    }

    /// Compares one level of a mailbox's UID tree below the smaller UIDNEXT and follows the
    /// differences downwards.
    fn compare_uid_nodes(
        &mut self,
        key: &Key,
        level: u8,
        local: &BTreeMap<u32, Fp>,
        remote: &BTreeMap<u32, Fp>,
    ) -> Result<(), SessionError> {
        let limit = self.work.get(key).map_or(1, |w| w.limit);
        let indexes: BTreeSet<u32> = local.keys().chain(remote.keys()).copied().collect();
        for index in indexes {
            let (l, r) = (local.get(&index), remote.get(&index));
            let (first, last) = uid_span(level, index);
            if l == r || first >= limit {
                continue;
            }
            let top = last.min(limit - 1);
            if l.is_none() || r.is_none() {
                // One side has no messages here: compare the range whole (tombstones too).
                self.work
                    .entry(key.clone())
                    .or_default()
                    .ranges
                    .push((first, top));
            } else if level == 0 {
                if !self.equal_below_limit(key, index, last, limit, r)? {
                    self.work
                        .entry(key.clone())
                        .or_default()
                        .pending
                        .push(index);
                }
            } else {
                let node = NodeKey::Uid {
                    user: key.0.clone(),
                    guid: key.1,
                    level,
                    index,
                };
                let wire = wire_key(&node);
                self.ask(
                    Ask::UidChildren(key.clone(), node),
                    Request::Children { node: wire },
                );
            }
        }
        Ok(())
    }

    /// Whether a bucket that reaches past the limit is equal below it: when the peer's
    /// UIDNEXT is the limit it holds nothing above, so our bucket without our tail tells.
    fn equal_below_limit(
        &mut self,
        key: &Key,
        bucket: u32,
        last: u32,
        limit: u32,
        remote: Option<&Fp>,
    ) -> Result<bool, SessionError> {
        let w = self.work.entry(key.clone()).or_default();
        if last < limit || w.local_next <= limit {
            return Ok(false);
        }
        let entries = self.local.bucket_entries(&key.0, key.1, bucket)?;
        let below = bucket_hash(entries.iter().filter(|(u, _)| *u < limit).map(|(_, h)| h));
        Ok(Some(&self.fp(&below)) == remote)
    }
}
