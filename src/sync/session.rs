//! The initiator's side of reconciliation, as a state machine that does no network I/O:
//! [`Session::next_round`] says what to ask the peer, [`Session::receive`] takes the answer.
//! It reads (and, at the end, writes) the local store directly.
//!
//! States: roots → level-synchronous descent (every differing node of a level in one round)
//! → mailbox records → UID-tree descent (jumping straight to a level of at most 16 nodes) →
//! entries → records → merge (clash rules) → bodies the local side lacks → apply locally, then
//! remotely → compare roots.

use super::responder::{normalize, runs_of, user_mailboxes, wire_key};
use super::wire::{
    digest_prefix, fp, from_gaps, group_stamp, guid_digest, record_rest, record_with_body,
    run_hash, to_gaps, ApplyGroup, BucketRuns, Fp, GuidRef, MailboxDiff, MailboxState, Reply,
    Request, RoundReply, RoundRequest, Run, Slots, UserDiff, UserHashes, UserRef, WireChange,
    WireRecord, RUNS_PER_BUCKET, RUN_SHIFT, WIRE_VERSION,
};
use crate::merkle::{
    bucket_hash, user_bucket_of, NodeHash, NodeKey, BUCKET_SHIFT, TOP_LEAF_LEVEL, UID_ROOT_LEVEL,
};
use crate::model::{
    absorb, merge_into, merge_mailbox, validate_user, Digest, MailboxGuid, MailboxOutcome,
    MailboxRecord, MailboxSide, MailboxTombstone, Tombstone,
};
use crate::model::{changes_for, Change, ChangeCounts, ChangeGroup};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Why a session stopped early. Nothing is half-applied: local changes are committed per
/// transaction, and the peer applies its groups in one transaction.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> SessionError {
    SessionError::Protocol(msg.into())
}

/// What a session found and did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SyncReport {
    pub rounds: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub body_bytes_sent: u64,
    pub body_bytes_received: u64,
    pub copied_to_peer: u64,
    pub copied_from_peer: u64,
    pub expunged: u64,
    pub flag_updates: u64,
    pub uid_clashes_renumbered: u64,
    pub mailboxes_changed: u64,
    pub differing_mailboxes: u64,
    /// Mailboxes skipped because one side changed during the session (the next session
    /// picks them up).
    pub stale_mailboxes: u64,
    /// Bodies that did not match their digest: those mailboxes were left alone.
    pub body_mismatches: u64,
    /// Messages copied below the other side's UIDNEXT (allowed, worth a look).
    pub late_copies: u64,
    pub duration_ms: u64,
    pub equal_after: bool,
    pub dry_run: bool,
}

impl SyncReport {
    /// Adds what an earlier session of the same sync moved and cost (round trips, bytes, copies,
    /// expunges, flag updates, clashes, changed mailboxes, time); the outcome fields
    /// (`equal_after`, stale mailboxes, mismatches) stay this session's.
    pub fn add_work_of(&mut self, earlier: &SyncReport) {
        self.rounds += earlier.rounds;
        self.bytes_sent += earlier.bytes_sent;
        self.bytes_received += earlier.bytes_received;
        self.body_bytes_sent += earlier.body_bytes_sent;
        self.body_bytes_received += earlier.body_bytes_received;
        self.copied_to_peer += earlier.copied_to_peer;
        self.copied_from_peer += earlier.copied_from_peer;
        self.expunged += earlier.expunged;
        self.flag_updates += earlier.flag_updates;
        self.uid_clashes_renumbered += earlier.uid_clashes_renumbered;
        self.mailboxes_changed += earlier.mailboxes_changed;
        self.duration_ms += earlier.duration_ms;
    }
}

type Key = (String, MailboxGuid);

/// UIDs asked for in one Records question (the peer accepts up to `wire::MAX_ITEMS`).
const RECORDS_PER_REQUEST: usize = 50_000;
/// Change groups travel in Apply rounds of about this many encoded bytes.
const APPLY_BATCH_BYTES: usize = 16 << 20;

#[derive(Clone, Debug)]
enum Ask {
    Root,
    Children(NodeKey),
    /// A user bucket, with the users we listed in it (the answer names them by position).
    Users(u16, Vec<String>),
    Mailbox(Key),
    UidChildren(Key, NodeKey),
    /// Records, with the buckets compared in the same question.
    Records(Key, Vec<u32>),
    Full(Key),
    Bodies(Vec<Digest>),
    PutBodies,
    Apply,
}

#[derive(Debug, Default)]
struct Work {
    /// The peer's mailbox node hash (4 bytes): what its change group must `expect`.
    remote_node: Option<[u8; 4]>,
    remote_known: bool,
    remote_record: Option<MailboxRecord>,
    remote_tombstone: Option<MailboxTombstone>,
    /// The peer's record is still to be fetched (its delta did not match ours).
    need_record: bool,
    full: bool,
    /// UIDs at or above this (the smaller UIDNEXT) are compared as a range, not by hashes.
    limit: u32,
    /// Whether the UIDNEXTs differ (then UIDs from `limit` on are fetched whole), and
    /// whether that tail has been asked for.
    tail: bool,
    tail_asked: bool,
    /// Buckets to compare run by run in the next question.
    pending: Vec<u32>,
    /// Our UIDNEXT.
    local_next: u32,
    /// UIDs whose records both sides must compare.
    uids: BTreeSet<u32>,
    /// Inclusive UID ranges compared whole (nodes one side lacks, and the tail); the first
    /// `ranges_asked` of them have been asked for.
    ranges: Vec<(u32, u32)>,
    ranges_asked: usize,
    outstanding: usize,
    records_asked: bool,
    remote_side: Option<MailboxSide>,
    /// The peer holds this GUID, and its first 4 bytes name no other mailbox of the user on
    /// either side: questions and groups name it by that prefix.
    prefix_ok: bool,
}

impl Work {
    fn covers(&self, uid: u32) -> bool {
        self.full
            || (self.tail && uid >= self.limit)
            || self.uids.contains(&uid)
            || self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&uid))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Discover,
    /// Bodies both ways, in batches: fetched ones are staged here as they come, sent ones are
    /// staged by the peer ahead of the changes that use them.
    Transfer,
    Apply,
    Done,
}

pub struct Session<'a> {
    local: &'a Store,
    window: u8,
    dry_run: bool,
    phase: Phase,
    next: Vec<(Ask, Request)>,
    asked: Vec<Ask>,
    work: BTreeMap<Key, Work>,
    local_groups: Vec<ChangeGroup>,
    remote_groups: Vec<ApplyGroup>,
    /// Bodies to fetch from the peer, and to send it, with their sizes (for batching).
    fetch: BTreeMap<Digest, u64>,
    push: BTreeMap<Digest, u64>,
    /// Fetched bodies that did not match their digest.
    bad: BTreeSet<Digest>,
    /// Bodies that came with records (staged already).
    prefetched: BTreeSet<Digest>,
    applied_once: bool,
    local_applied: bool,
    pub report: SyncReport,
}

/// Takes the next batch of about `BODY_BATCH_BYTES` (at least one body) off the queue.
fn next_batch(queue: &mut BTreeMap<Digest, u64>) -> Vec<Digest> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    while let Some((&d, &size)) = queue.iter().next() {
        if !batch.is_empty() && bytes + size > super::wire::BODY_BATCH_BYTES {
            break;
        }
        queue.remove(&d);
        batch.push(d);
        bytes += size;
    }
    batch
}

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

/// A UID where the peer holds this message (the same but for flags and append stamp).
fn moved(remote: &MailboxSide, record: &crate::model::MessageRecord) -> Option<u32> {
    remote.messages.iter().find_map(|(uid, m)| {
        (m.digest == record.digest
            && m.md5 == record.md5
            && m.size == record.size
            && m.internal_date == record.internal_date)
            .then_some(*uid)
    })
}

/// A change group for the peer, with deltas where the peer already holds the rest: UIDNEXT
/// alone for a record that differs in nothing else, flags alone for a message whose digest
/// it holds at that UID, an expunge without the digest of the message it holds there.
fn to_wire(group: ChangeGroup, remote: &MailboxSide) -> ApplyGroup {
    let mut changes: Vec<WireChange> = group
        .changes
        .into_iter()
        .map(|c| match c {
            Change::Mailbox { record, .. } => match &remote.record {
                Some(r)
                    if MailboxRecord {
                        uidnext: record.uidnext,
                        last_change: record.last_change,
                        ..r.clone()
                    } == record =>
                {
                    WireChange::Next {
                        uidnext: record.uidnext,
                        last_change: Some(record.last_change),
                    }
                }
                _ => WireChange::Mailbox(record),
            },
            Change::Message {
                uid,
                record,
                body: None,
                ..
            } if remote
                .messages
                .get(&uid)
                .is_some_and(|m| m.digest == record.digest) =>
            {
                WireChange::Flags {
                    uid,
                    flags: record.flags,
                }
            }
            Change::Message {
                uid,
                record,
                body: None,
                ..
            } if moved(remote, &record).is_some() => WireChange::Move {
                uid,
                from: moved(remote, &record).unwrap_or_default(),
                flags: record.flags,
                appended: record.appended,
            },
            Change::Expunge { uid, tombstone, .. } => WireChange::Expunge {
                uid,
                digest: (remote.messages.get(&uid).map(|m| m.digest) != Some(tombstone.digest))
                    .then_some(tombstone.digest),
                stamp: tombstone.stamp,
                origin: tombstone.origin,
            },
            other => WireChange::verbatim(other),
        })
        .collect();
    // A `Next` whose stamp is the largest of the group's changes leaves it out.
    let implied = group_stamp(&changes);
    for c in &mut changes {
        if let WireChange::Next { last_change, .. } = c {
            if *last_change == implied {
                *last_change = None;
            }
        }
    }
    ApplyGroup {
        user: group.user,
        guid: GuidRef::Full(group.guid),
        expect: group.expect,
        changes,
    }
}

impl<'a> Session<'a> {
    /// A session with the given hash window (pick it at random per session).
    pub fn new(local: &'a Store, window: u8, dry_run: bool) -> Result<Session<'a>, SessionError> {
        let root = local.root()?;
        let mut s = Session {
            local,
            window,
            dry_run,
            phase: Phase::Discover,
            next: Vec::new(),
            asked: Vec::new(),
            work: BTreeMap::new(),
            local_groups: Vec::new(),
            remote_groups: Vec::new(),
            fetch: BTreeMap::new(),
            push: BTreeMap::new(),
            bad: BTreeSet::new(),
            prefetched: BTreeSet::new(),
            applied_once: false,
            local_applied: false,
            report: SyncReport {
                dry_run,
                ..SyncReport::default()
            },
        };
        s.next
            .push((Ask::Root, Request::Root { root: root.hash.0 }));
        Ok(s)
    }

    fn fp(&self, h: &NodeHash) -> Fp {
        fp(h, self.window)
    }

    /// How the wire names a mailbox of ours: by a GUID prefix when that is unambiguous.
    fn guid_ref(&self, key: &Key) -> GuidRef {
        match self.work.get(key) {
            Some(w) if w.prefix_ok => GuidRef::Prefix(GuidRef::prefix_of(&key.1)),
            _ => GuidRef::Full(key.1),
        }
    }

    /// The next round's questions, or `None` when the session is over.
    pub fn next_round(&mut self) -> Result<Option<RoundRequest>, SessionError> {
        if self.next.is_empty() {
            self.advance()?;
        }
        if self.next.is_empty() {
            self.phase = Phase::Done;
            return Ok(None);
        }
        let (asks, requests): (Vec<Ask>, Vec<Request>) =
            std::mem::take(&mut self.next).into_iter().unzip();
        self.asked = asks;
        Ok(Some(RoundRequest {
            version: WIRE_VERSION,
            window: self.window,
            requests,
        }))
    }

    /// Takes the peer's answer to the last round.
    pub fn receive(&mut self, reply: RoundReply) -> Result<(), SessionError> {
        let asked = std::mem::take(&mut self.asked);
        if reply.replies.len() != asked.len() {
            return Err(protocol(format!(
                "{} answers to {} questions",
                reply.replies.len(),
                asked.len()
            )));
        }
        for (ask, answer) in asked.into_iter().zip(reply.replies) {
            self.take(ask, answer)?;
        }
        Ok(())
    }

    fn ask(&mut self, ask: Ask, request: Request) {
        if let Ask::Mailbox(k) | Ask::UidChildren(k, _) | Ask::Records(k, _) | Ask::Full(k) = &ask {
            self.work.entry(k.clone()).or_default().outstanding += 1;
        }
        self.next.push((ask, request));
    }

    fn done_with(&mut self, key: &Key) -> Result<&mut Work, SessionError> {
        let w = self
            .work
            .get_mut(key)
            .ok_or_else(|| protocol("an answer about a mailbox never asked about"))?;
        w.outstanding = w.outstanding.saturating_sub(1);
        Ok(w)
    }

    fn take(&mut self, ask: Ask, answer: Reply) -> Result<(), SessionError> {
        match (ask, answer) {
            (Ask::Root, Reply::Root { equal, children }) => {
                if equal {
                    self.report.equal_after = true;
                    self.phase = Phase::Done;
                } else {
                    self.compare_top(&NodeKey::root(), &children)?;
                }
            }
            (Ask::Children(node), Reply::Children { children }) => {
                self.compare_top(&node, &children)?
            }
            (Ask::Users(bucket, listed), Reply::Users { users }) => {
                self.take_users(bucket, &listed, users)?
            }
            (
                Ask::Mailbox(key),
                Reply::Mailbox {
                    record,
                    tombstone,
                    node,
                },
            ) => {
                if record.as_ref().is_some_and(|r| r.guid != key.1) {
                    return Err(protocol("a mailbox record under another GUID"));
                }
                let w = self.done_with(&key)?;
                if w.need_record {
                    // The record a delta could not rebuild; the UIDs are compared already.
                    w.need_record = false;
                    if record.is_none() {
                        w.full = true;
                    }
                } else {
                    // A mailbox below a node the peer lacks: the peer may hold a tombstone.
                    w.remote_known = true;
                    w.remote_node = node.map(|s| s.hash);
                    w.full = true;
                }
                w.remote_record = record;
                w.remote_tombstone = tombstone;
            }
            (Ask::UidChildren(key, node), Reply::Children { children }) => {
                if self.done_with(&key)?.full {
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
                let remote: BTreeMap<u32, Fp> =
                    pairs.into_iter().map(|(s, h)| (to_index(s), h)).collect();
                self.compare_uid_nodes(&key, level.saturating_sub(1), &local, &remote)?;
                self.flush(&key, false)?;
            }
            (
                Ask::Records(key, buckets),
                Reply::Records {
                    runs,
                    messages,
                    tombstones,
                },
            ) => {
                self.done_with(&key)?;
                if runs.len() != buckets.len() {
                    return Err(protocol("runs for a different number of buckets"));
                }
                for (bucket, runs) in buckets.into_iter().zip(runs) {
                    self.take_runs(&key, bucket, runs)?;
                }
                self.take_records(&key, messages, tombstones)?;
            }
            (
                Ask::Full(key),
                Reply::Full {
                    messages,
                    tombstones,
                },
            ) => {
                self.done_with(&key)?;
                self.take_records(&key, messages, tombstones)?;
            }
            (Ask::Bodies(digests), Reply::Bodies { bodies }) => {
                if bodies.len() != digests.len() {
                    return Err(protocol("a different number of bodies than asked for"));
                }
                self.stage_fetched(digests, bodies)?;
            }
            (Ask::PutBodies, Reply::Staged { .. }) => {}
            (Ask::Apply, Reply::Applied { applied, root }) => {
                // Every fetched body has been staged by now (Bodies answers come first).
                if !self.local_applied {
                    self.local_applied = true;
                    self.apply_local()?;
                }
                let stale = applied.iter().filter(|ok| !**ok).count() as u64;
                self.report.stale_mailboxes += stale;
                self.report.equal_after = self.local.root()?.hash.0 == root;
                if self.remote_groups.is_empty() {
                    self.phase = Phase::Done;
                }
            }
            (ask, _) => return Err(protocol(format!("an answer of the wrong kind to {ask:?}"))),
        }
        Ok(())
    }

    /// Compares a top node's children (above the user buckets) with ours and follows every
    /// difference.
    fn compare_top(&mut self, parent: &NodeKey, remote: &Slots) -> Result<(), SessionError> {
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
                }
                let bucket = *index;
                self.ask(Ask::Users(bucket, names), Request::Users { bucket, users });
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
    fn take_users(
        &mut self,
        bucket: u16,
        listed: &[String],
        users: Vec<UserDiff>,
    ) -> Result<(), SessionError> {
        let mut seen = BTreeSet::new();
        for d in users {
            let user = match d.user {
                UserRef::Asked(i) => listed
                    .get(i as usize)
                    .cloned()
                    .ok_or_else(|| protocol("an answer about a user never listed"))?,
                UserRef::New(name) => {
                    validate_user(&name).map_err(|e| protocol(e.to_string()))?;
                    if user_bucket_of(&name) != bucket || listed.contains(&name) {
                        return Err(protocol(format!("user {name:?} listed in the wrong place")));
                    }
                    name
                }
            };
            if !seen.insert(user.clone()) {
                return Err(protocol(format!("user {user:?} answered twice")));
            }
            let ours = user_mailboxes(self.local, &user)?;
            let names: Vec<MailboxGuid> = match &d.listing {
                None => ours.iter().map(|(g, _)| *g).collect(),
                Some(list) => list.clone(),
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
            for m in d.mailboxes {
                let guid = *names
                    .get(m.at as usize)
                    .ok_or_else(|| protocol("a mailbox position out of range"))?;
                if !differing.insert(guid) {
                    return Err(protocol("a mailbox answered twice"));
                }
                self.take_mailbox((user.clone(), guid), m, unique(&guid))?;
            }
            if let Some(list) = &d.listing {
                let theirs: BTreeSet<&MailboxGuid> = list.iter().collect();
                for (guid, _) in &ours {
                    if !theirs.contains(guid) {
                        self.remote_lacks(user.clone(), *guid);
                    }
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
        let (uidvalidity, uidnext) = match m.state {
            MailboxState::Full(r) => {
                if r.guid != key.1 {
                    return Err(protocol("a mailbox record under another GUID"));
                }
                let v = (r.uidvalidity, r.uidnext);
                w.remote_record = Some(r);
                v
            }
            MailboxState::Delta {
                uidvalidity,
                uidnext,
                last_change,
                rest,
            } => {
                match &local {
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
                (uidvalidity, uidnext)
            }
        };
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
                if m.level > UID_ROOT_LEVEL {
                    // A UID tree has no level above its root; spans past it do not exist.
                    return Err(protocol(format!(
                        "UID-tree level {} is above the root level {UID_ROOT_LEVEL}",
                        m.level
                    )));
                }
                let local_nodes: BTreeMap<u32, Fp> = self
                    .local
                    .uid_level(&key.0, key.1, m.level)?
                    .iter()
                    .map(|(i, v)| (*i, fp(&v.hash, window)))
                    .collect();
                let remote_nodes: BTreeMap<u32, Fp> = m.nodes.into_iter().collect();
                self.compare_uid_nodes(&key, m.level, &local_nodes, &remote_nodes)?;
                self.flush(&key, false)?;
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

    /// Asks what is known to be needed of a mailbox in one question: the buckets to compare
    /// run by run, the ranges and the tail found so far, and (`last`, once nothing is left
    /// to descend) the records at the differing UIDs.
    fn flush(&mut self, key: &Key, last: bool) -> Result<(), SessionError> {
        let window = self.window;
        let Some(w) = self.work.get_mut(key) else {
            return Ok(());
        };
        let buckets = std::mem::take(&mut w.pending);
        let ranges = w.ranges[w.ranges_asked..].to_vec();
        w.ranges_asked = w.ranges.len();
        let tail = w.tail && !w.tail_asked;
        w.tail_asked |= tail;
        let limit = w.tail.then_some(w.limit);
        let uids: Vec<u32> = if last {
            w.uids.iter().copied().collect()
        } else {
            Vec::new()
        };
        if buckets.is_empty() && ranges.is_empty() && !tail && uids.is_empty() {
            return Ok(());
        }
        let mut runs = Vec::with_capacity(buckets.len());
        for &bucket in &buckets {
            let entries = self.local.bucket_entries(&key.0, key.1, bucket)?;
            let mut present = 0u8;
            let mut hashes = Vec::new();
            for (run, e) in runs_of(&entries, limit.unwrap_or(u32::MAX)) {
                present |= 1 << run;
                hashes.push(run_hash(e.iter().map(|(_, h)| h), window));
            }
            runs.push(BucketRuns {
                bucket,
                present,
                hashes,
            });
        }
        let held = if uids.is_empty() {
            BTreeMap::new()
        } else {
            let set: BTreeSet<u32> = uids.iter().copied().collect();
            self.local.mailbox_side(&key.0, key.1, Some(&set))?.messages
        };
        let mut chunks: Vec<&[u32]> = uids.chunks(RECORDS_PER_REQUEST).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let (mut ranges, mut buckets, mut runs, mut tail) = (ranges, buckets, runs, tail);
        let guid = self.guid_ref(key);
        for chunk in chunks {
            let gaps = to_gaps(chunk.iter().copied());
            let uids = gaps
                .into_iter()
                .zip(chunk)
                .map(|(g, u)| (g, held.get(u).map(|m| digest_prefix(&m.digest))))
                .collect();
            self.ask(
                Ask::Records(key.clone(), std::mem::take(&mut buckets)),
                Request::Records {
                    user: key.0.clone(),
                    guid,
                    uids,
                    ranges: std::mem::take(&mut ranges),
                    limit,
                    tail: std::mem::take(&mut tail),
                    buckets: std::mem::take(&mut runs),
                },
            );
        }
        Ok(())
    }

    /// The peer's runs of one bucket that differ from ours: their UIDs are compared next.
    fn take_runs(&mut self, key: &Key, bucket: u32, runs: Vec<Run>) -> Result<(), SessionError> {
        let w = self
            .work
            .get(key)
            .ok_or_else(|| protocol("runs of a mailbox never asked about"))?;
        let limit = if w.tail { w.limit } else { u32::MAX };
        let local = runs_of(&self.local.bucket_entries(&key.0, key.1, bucket)?, limit);
        let mut differ = Vec::new();
        for r in runs {
            if u32::from(r.run) >= RUNS_PER_BUCKET
                || r.present.count_ones() as usize != r.hashes.len()
            {
                return Err(protocol("a malformed run"));
            }
            let first = (bucket << BUCKET_SHIFT) | (u32::from(r.run) << RUN_SHIFT);
            let remote: BTreeMap<u32, Fp> = (0..8u32)
                .filter(|b| r.present & (1 << b) != 0)
                .map(|b| first + b)
                .zip(r.hashes.iter().copied())
                .filter(|(u, _)| *u < limit)
                .collect();
            let ours: BTreeMap<u32, Fp> = local
                .get(&r.run)
                .into_iter()
                .flatten()
                .map(|(u, h)| (*u, self.fp(h)))
                .collect();
            for uid in ours.keys().chain(remote.keys()) {
                if ours.get(uid) != remote.get(uid) {
                    differ.push(*uid);
                }
            }
        }
        self.work
            .entry(key.clone())
            .or_default()
            .uids
            .extend(differ);
        Ok(())
    }

    /// The peer's records and tombstones (possibly in several answers: add to what came).
    fn take_records(
        &mut self,
        key: &Key,
        messages: Vec<(u32, WireRecord)>,
        tombstones: Vec<(u32, Tombstone)>,
    ) -> Result<(), SessionError> {
        let (uids, records): (Vec<u32>, Vec<WireRecord>) = messages.into_iter().unzip();
        let uids = from_gaps(&uids).ok_or_else(|| protocol("UIDs beyond 32 bits"))?;
        let (tuids, tombs): (Vec<u32>, Vec<Tombstone>) = tombstones.into_iter().unzip();
        let tuids = from_gaps(&tuids).ok_or_else(|| protocol("UIDs beyond 32 bits"))?;
        let flags_only: BTreeSet<u32> = uids
            .iter()
            .zip(&records)
            .filter(|(_, r)| matches!(r, WireRecord::Flags(_)))
            .map(|(u, _)| *u)
            .collect();
        let mut ours = if flags_only.is_empty() {
            BTreeMap::new()
        } else {
            self.local
                .mailbox_side(&key.0, key.1, Some(&flags_only))?
                .messages
        };
        let w = self
            .work
            .get_mut(key)
            .ok_or_else(|| protocol("records of a mailbox never asked about"))?;
        let mut side = w.remote_side.take().unwrap_or_default();
        let mut bodies = Vec::new();
        for (uid, r) in uids.into_iter().zip(records) {
            let m = match r {
                WireRecord::Full(m) => m,
                WireRecord::New {
                    internal_date,
                    flags,
                    appended,
                    body,
                } => {
                    let m = record_with_body(internal_date, flags, appended, &body);
                    bodies.push(body);
                    m
                }
                WireRecord::Flags(flags) => {
                    let Some(mut m) = ours.remove(&uid) else {
                        return Err(protocol("flags for a message we do not hold"));
                    };
                    m.flags = flags;
                    m
                }
            };
            if w.covers(uid) {
                side.messages.insert(uid, m);
            }
        }
        for (uid, t) in tuids.into_iter().zip(tombs) {
            if w.covers(uid) {
                let list = side.expunged.entry(uid).or_default();
                if !list.contains(&t) {
                    list.push(t);
                }
            }
        }
        w.remote_side = Some(side);
        // Bodies that came with their records: staged now (checked by construction: the
        // record's digest is the body's), never fetched again.
        for b in &bodies {
            self.report.body_bytes_received += b.len() as u64;
            self.prefetched.insert(Digest::of(b));
        }
        if !self.dry_run && !bodies.is_empty() {
            self.local.stage_bodies(&bodies)?;
        }
        Ok(())
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
                let w = self.work.entry(key.clone()).or_default();
                if last >= limit && w.local_next > limit {
                    // The peer's UIDNEXT is the limit, so it holds nothing above it: our
                    // bucket without our tail tells whether the rest is equal.
                    let entries = self.local.bucket_entries(&key.0, key.1, index)?;
                    let below =
                        bucket_hash(entries.iter().filter(|(u, _)| *u < limit).map(|(_, h)| h));
                    if Some(&self.fp(&below)) == r {
                        continue;
                    }
                }
                self.work
                    .entry(key.clone())
                    .or_default()
                    .pending
                    .push(index);
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

    fn advance(&mut self) -> Result<(), SessionError> {
        match self.phase {
            Phase::Discover => {
                let mut asks = Vec::new();
                let mut keys = Vec::new();
                for (key, w) in &mut self.work {
                    let guid = if w.prefix_ok {
                        GuidRef::Prefix(GuidRef::prefix_of(&key.1))
                    } else {
                        GuidRef::Full(key.1)
                    };
                    if w.outstanding > 0 || w.records_asked || !w.remote_known {
                        continue;
                    }
                    if w.full {
                        w.records_asked = true;
                        if w.remote_record.is_some() {
                            asks.push((
                                Ask::Full(key.clone()),
                                Request::Full {
                                    user: key.0.clone(),
                                    guid,
                                },
                            ));
                        }
                    } else {
                        w.records_asked = true;
                        keys.push(key.clone());
                    }
                }
                for key in keys {
                    self.flush(&key, true)?;
                }
                for (ask, request) in asks {
                    self.ask(ask, request);
                }
                if self.next.is_empty() && self.work.values().all(|w| w.outstanding == 0) {
                    self.plan()?;
                }
            }
            Phase::Transfer => {
                // Bodies both ways travel in the same rounds; the last round also carries the
                // first Apply, so a small session pays one round for transfer and apply.
                let fetch = next_batch(&mut self.fetch);
                if !fetch.is_empty() {
                    self.next.push((
                        Ask::Bodies(fetch.clone()),
                        Request::Bodies { digests: fetch },
                    ));
                }
                let push = next_batch(&mut self.push);
                if !push.is_empty() {
                    let mut bodies = Vec::with_capacity(push.len());
                    for d in &push {
                        let bytes = self.local.body(d)?;
                        self.report.body_bytes_sent += bytes.len() as u64;
                        bodies.push(bytes);
                    }
                    self.next
                        .push((Ask::PutBodies, Request::PutBodies { bodies }));
                }
                if self.fetch.is_empty() && self.push.is_empty() {
                    self.phase = Phase::Apply;
                    self.queue_apply();
                }
            }
            Phase::Apply => self.queue_apply(),
            Phase::Done => {}
        }
        Ok(())
    }

    /// Queues the next Apply: groups in rounds of about APPLY_BATCH_BYTES (each group whole,
    /// since its guard covers all its changes); at least one Apply, whose answer carries the
    /// peer's root.
    fn queue_apply(&mut self) {
        let mut groups = Vec::new();
        let mut bytes = 0usize;
        while !self.remote_groups.is_empty() {
            let size = super::wire::encode(&self.remote_groups[0]).len();
            if !groups.is_empty() && bytes + size > APPLY_BATCH_BYTES {
                break;
            }
            bytes += size;
            groups.push(self.remote_groups.remove(0));
        }
        if !groups.is_empty() || !self.applied_once {
            self.applied_once = true;
            self.next.push((Ask::Apply, Request::Apply { groups }));
        }
    }

    /// Merges every differing mailbox, resolves name clashes, and prepares both sides' changes.
    fn plan(&mut self) -> Result<(), SessionError> {
        if self.work.is_empty() {
            // Roots differed but no mailbox does: only possible if the peer changed meanwhile.
            self.phase = Phase::Done;
            return Ok(());
        }
        let mut sides: BTreeMap<Key, (NodeHash, MailboxSide, MailboxSide)> = BTreeMap::new();
        for (key, w) in &self.work {
            let node = self.local.node(&NodeKey::Mailbox {
                user: key.0.clone(),
                guid: key.1,
            })?;
            let local_hash = node.map_or(NodeHash::EMPTY, |v| v.hash);
            let local = if w.full {
                self.local.mailbox_side(&key.0, key.1, None)?
            } else {
                let ranges = normalize(
                    w.uids
                        .iter()
                        .map(|u| (*u, *u))
                        .chain(w.ranges.iter().copied())
                        .chain(w.tail.then_some((w.limit, u32::MAX)))
                        .collect(),
                );
                self.local.mailbox_side_in(&key.0, key.1, &ranges)?
            };
            let mut remote = w.remote_side.clone().unwrap_or_default();
            remote.record = w.remote_record.clone();
            remote.tombstone = w.remote_tombstone.clone();
            sides.insert(key.clone(), (local_hash, local, remote));
        }
        let mut outcomes: BTreeMap<Key, MailboxOutcome> = sides
            .iter()
            .map(|(k, (_, l, r))| (k.clone(), merge_mailbox(l, r)))
            .collect();

        // Same name under two GUIDs: the larger GUID wins; the loser must be known whole.
        let users: BTreeSet<String> = self.work.keys().map(|(u, _)| u.clone()).collect();
        let mut need_full = Vec::new();
        for user in &users {
            let mut names: BTreeMap<String, BTreeSet<MailboxGuid>> = BTreeMap::new();
            if let Ok(list) = self.local.list_mailboxes(user) {
                for m in list {
                    if !outcomes.contains_key(&(user.clone(), m.guid)) {
                        names.entry(m.name).or_default().insert(m.guid);
                    }
                }
            }
            for ((u, guid), o) in &outcomes {
                if let (true, Some(r)) = (u == user, &o.record) {
                    names.entry(r.name.clone()).or_default().insert(*guid);
                }
            }
            for guids in names.values().filter(|g| g.len() > 1) {
                let Some(&winner) = guids.iter().next_back() else {
                    continue;
                };
                for loser in guids.iter().filter(|g| **g != winner) {
                    let k = (user.clone(), *loser);
                    match self.work.get(&k) {
                        Some(w) if w.full => {}
                        _ => need_full.push(k),
                    }
                }
                let wk = (user.clone(), winner);
                self.load_equal(&wk, &mut sides, &mut outcomes)?;
            }
        }
        if !need_full.is_empty() {
            for k in need_full {
                let w = self.work.entry(k.clone()).or_default();
                w.full = true;
                w.records_asked = false;
                w.remote_side = None;
            }
            // Ask again; the next call to `advance` requests the whole mailboxes.
            return self.advance();
        }
        for user in &users {
            let mut names: BTreeMap<String, Vec<MailboxGuid>> = BTreeMap::new();
            for ((u, guid), o) in &outcomes {
                if let (true, Some(r)) = (u == user, &o.record) {
                    names.entry(r.name.clone()).or_default().push(*guid);
                }
            }
            for mut guids in names.into_values().filter(|g| g.len() > 1) {
                guids.sort();
                let Some(winner) = guids.pop() else { continue };
                for loser in guids {
                    let mut lo = outcomes.remove(&(user.clone(), loser)).unwrap_or_default();
                    if let Some(wo) = outcomes.get_mut(&(user.clone(), winner)) {
                        tracing::info!(user = %user, from = %loser, into = %winner, messages = lo.messages.len(), "two mailboxes share a name: merging into the larger GUID");
                        merge_into(wo, &mut lo, loser);
                    }
                    outcomes.insert((user.clone(), loser), lo);
                }
            }
        }

        // A mailbox one side holds that the other knows merged into another: its messages move
        // into the winner; when neither side holds the winner, the mailbox survives.
        let forwards: Vec<Key> = outcomes
            .iter()
            .filter(|(_, o)| o.forward.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in forwards {
            let Some(forward) = outcomes.get_mut(&key).and_then(|o| o.forward.take()) else {
                continue;
            };
            let wk = self.merge_target(&key.0, forward.into, &mut sides, &mut outcomes)?;
            if let Some(wo) = outcomes.get_mut(&wk).filter(|o| o.record.is_some()) {
                tracing::info!(user = %key.0, from = %key.1, into = %wk.1, messages = forward.messages.len(), "moving a merged mailbox's messages into the mailbox it merged into");
                absorb(wo, forward.messages, &forward.kills);
                continue;
            }
            // The mailbox it merged into is gone: a writer deleted it (or it is unknown here).
            // The delete wins over this one too unless it changed after the delete, as for any
            // mailbox (DESIGN §5); else it survives with its messages.
            let end = match outcomes.get(&wk) {
                Some(o) => o.tombstone.clone(),
                None => {
                    self.local
                        .mailbox_side(&wk.0, wk.1, Some(&BTreeSet::new()))?
                        .tombstone
                }
            };
            let changed_after = forward
                .survive
                .record
                .as_ref()
                .is_some_and(|r| end.as_ref().is_none_or(|t| r.last_change > t.stamp));
            if changed_after {
                outcomes.insert(key, *forward.survive);
            }
        }

        let w = self.window;
        // What the peer holds anywhere in what we fetched: such a body needs no shipping (the
        // peer frees bodies only at the end of a transaction, and deletions go last).
        let remote_all: BTreeSet<Digest> = sides
            .values()
            .flat_map(|(_, _, r)| r.messages.values().map(|m| m.digest))
            .collect();
        let mut counts_changed = 0;
        for (key, outcome) in &outcomes {
            let Some((local_hash, local, remote)) = sides.get(key) else {
                continue;
            };
            let remote_expect = self
                .work
                .get(key)
                .and_then(|w| w.remote_node)
                .unwrap_or(NodeHash::EMPTY.truncated(w));
            let local_digests: BTreeSet<Digest> =
                local.messages.values().map(|m| m.digest).collect();
            let local_store = self.local;
            let prefetched = &self.prefetched;
            let (mut fetch, mut push) = (Vec::new(), Vec::new());
            let (local_changes, lc) = changes_for(&key.0, local, outcome, |m| {
                // A body held anywhere here is enough: the store frees bodies only at the end
                // of a transaction, so one moving between mailboxes is never lost meanwhile.
                if !local_digests.contains(&m.digest)
                    && !prefetched.contains(&m.digest)
                    && !local_store.has_body(&m.digest).unwrap_or(false)
                {
                    fetch.push((m.digest, m.size));
                }
                // Bodies travel apart from the changes (staged first), in bounded batches.
                None
            });
            let (remote_changes, rc) = changes_for(&key.0, remote, outcome, |m| {
                if !remote_all.contains(&m.digest) {
                    push.push((m.digest, m.size));
                }
                None
            });
            self.fetch.extend(fetch);
            self.push.extend(push);
            self.count(&lc, &rc, outcome);
            if lc.mailbox_changed || rc.mailbox_changed {
                counts_changed += 1;
            }
            if !local_changes.is_empty() {
                self.local_groups.push(ChangeGroup {
                    user: key.0.clone(),
                    guid: key.1,
                    window: w,
                    expect: local_hash.truncated(w),
                    changes: local_changes,
                });
            }
            if !remote_changes.is_empty() {
                let mut group = to_wire(
                    ChangeGroup {
                        user: key.0.clone(),
                        guid: key.1,
                        window: w,
                        expect: remote_expect,
                        changes: remote_changes,
                    },
                    remote,
                );
                if remote.record.is_some() {
                    group.guid = self.guid_ref(key);
                }
                self.remote_groups.push(group);
            }
        }
        self.report.mailboxes_changed = counts_changed;
        self.inline_pushed()?;
        // Deletions last, so a body moving out of a deleted mailbox is still referenced when
        // the mailbox that receives it takes its reference.
        self.local_groups.sort_by_key(|g| {
            g.changes
                .iter()
                .any(|c| matches!(c, Change::DeleteMailbox { .. }))
        });
        self.remote_groups.sort_by_key(|g| {
            g.changes
                .iter()
                .any(|c| matches!(c, WireChange::DeleteMailbox(..)))
        });
        if self.dry_run {
            self.report.equal_after = false;
            self.phase = Phase::Done;
            return Ok(());
        }
        self.phase = Phase::Transfer;
        self.advance()
    }

    /// Where a mailbox merged into `into` ends: `into`, or, when that was merged into another
    /// in turn, the end of the chain (at most 16 steps: a longer one is left to survive).
    fn merge_target(
        &mut self,
        user: &str,
        into: MailboxGuid,
        sides: &mut BTreeMap<Key, (NodeHash, MailboxSide, MailboxSide)>,
        outcomes: &mut BTreeMap<Key, MailboxOutcome>,
    ) -> Result<Key, SessionError> {
        let mut key = (user.to_string(), into);
        for _ in 0..16 {
            self.load_equal(&key, sides, outcomes)?;
            let next = match outcomes.get(&key) {
                Some(o) if o.record.is_some() => return Ok(key),
                Some(o) => o.tombstone.as_ref().and_then(|t| t.merged_into),
                None => self
                    .local
                    .mailbox_side(user, key.1, Some(&BTreeSet::new()))?
                    .tombstone
                    .and_then(|t| t.merged_into),
            };
            match next {
                Some(guid) if guid != key.1 => key.1 = guid,
                _ => return Ok(key),
            }
        }
        Ok(key)
    }

    /// Adds to the plan a mailbox the session did not find different (so both sides hold what
    /// this side holds), when this side holds it and it is not in the plan yet.
    fn load_equal(
        &mut self,
        key: &Key,
        sides: &mut BTreeMap<Key, (NodeHash, MailboxSide, MailboxSide)>,
        outcomes: &mut BTreeMap<Key, MailboxOutcome>,
    ) -> Result<(), SessionError> {
        if outcomes.contains_key(key) {
            return Ok(());
        }
        let (user, guid) = (&key.0, key.1);
        let side = self
            .local
            .mailbox_side(user, guid, Some(&BTreeSet::new()))?;
        if side.record.is_none() {
            return Ok(());
        }
        let hash = self
            .local
            .node(&NodeKey::Mailbox {
                user: user.clone(),
                guid,
            })?
            .map_or(NodeHash::EMPTY, |v| v.hash);
        outcomes.insert(key.clone(), merge_mailbox(&side, &side));
        sides.insert(key.clone(), (hash, side.clone(), side));
        let w = self.work.entry(key.clone()).or_default();
        w.remote_known = true;
        w.remote_node = Some(hash.truncated(self.window));
        Ok(())
    }

    /// When all the bodies the peer lacks fit in one batch, they travel inside the changes
    /// that need them (`WireChange::New`: MD5, digest and size follow from the body), not
    /// apart in PutBodies.
    fn inline_pushed(&mut self) -> Result<(), SessionError> {
        let total: u64 = self.push.values().sum();
        if self.push.is_empty() || total > super::wire::BODY_BATCH_BYTES || self.dry_run {
            return Ok(());
        }
        let push = std::mem::take(&mut self.push);
        for g in &mut self.remote_groups {
            for c in &mut g.changes {
                let WireChange::Message {
                    uid,
                    record,
                    body: None,
                } = c
                else {
                    continue;
                };
                if !push.contains_key(&record.digest) {
                    continue;
                }
                let body = self.local.body(&record.digest)?;
                self.report.body_bytes_sent += body.len() as u64;
                *c = WireChange::New {
                    uid: *uid,
                    internal_date: record.internal_date,
                    flags: std::mem::take(&mut record.flags),
                    appended: record.appended,
                    body,
                };
            }
        }
        Ok(())
    }

    fn count(&mut self, local: &ChangeCounts, remote: &ChangeCounts, outcome: &MailboxOutcome) {
        let r = &mut self.report;
        r.copied_from_peer += local.added;
        r.copied_to_peer += remote.added;
        r.expunged += local.expunged + remote.expunged;
        r.flag_updates += local.flag_updates + remote.flag_updates;
        r.uid_clashes_renumbered += outcome.stats.uid_clashes;
        r.late_copies += outcome.stats.late_copies;
    }

    /// Stages a batch of fetched bodies locally; a body that does not match its digest is
    /// left out, and the mailboxes that needed it are left alone (reported).
    fn stage_fetched(
        &mut self,
        digests: Vec<Digest>,
        bodies: Vec<Option<Vec<u8>>>,
    ) -> Result<(), SessionError> {
        let mut good = Vec::new();
        for (d, b) in digests.into_iter().zip(bodies) {
            match b {
                Some(bytes) if Digest::of(&bytes) == d => {
                    self.report.body_bytes_received += bytes.len() as u64;
                    good.push(bytes);
                }
                _ => {
                    self.bad.insert(d);
                }
            }
        }
        self.local.stage_bodies(&good)?;
        Ok(())
    }

    /// Applies this side's groups: those that need a body that never came are dropped
    /// whole, so their mailboxes stay as they were until the next session.
    fn apply_local(&mut self) -> Result<(), SessionError> {
        let bad = &self.bad;
        let groups: Vec<ChangeGroup> = std::mem::take(&mut self.local_groups);
        let (kept, dropped): (Vec<ChangeGroup>, Vec<ChangeGroup>) =
            groups.into_iter().partition(|g| {
                !g.changes.iter().any(
                    |c| matches!(c, Change::Message { record, .. } if bad.contains(&record.digest)),
                )
            });
        self.report.body_mismatches = self.bad.len() as u64;
        self.report.stale_mailboxes += dropped.len() as u64;
        let applied = self.local.apply_groups(&kept)?;
        self.report.stale_mailboxes += applied.iter().filter(|ok| !**ok).count() as u64;
        Ok(())
    }
}
