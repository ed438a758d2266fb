//! The initiator's side of reconciliation, as a state machine that does no network I/O:
//! [`Session::next_round`] says what to ask the peer, [`Session::receive`] takes the answer.
//! It reads (and, at the end, writes) the local store directly.
//!
//! States: roots → level-synchronous descent (every differing node of a level in one round)
//! → mailbox records → UID-tree descent (jumping straight to a level of at most 16 nodes) →
//! entries → records → merge (clash rules) → bodies the local side lacks → apply locally, then
//! remotely → compare roots.

use super::plan::{changes_for, ChangeCounts};
use super::responder::{child_id, wire_key};
use super::wire::{ChildId, Reply, Request, RoundReply, RoundRequest, Summary, WIRE_VERSION};
use crate::merkle::{
    user_bucket_of, NodeHash, NodeKey, BUCKET_SHIFT, TOP_LEAF_LEVEL, UID_ROOT_LEVEL,
};
use crate::model::{
    merge_into, merge_mailbox, validate_user, Digest, MailboxGuid, MailboxOutcome, MailboxRecord,
    MailboxSide, MailboxTombstone,
};
use crate::store::{Change, ChangeGroup, Store, StoreError};
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
    Users(NodeKey),
    Mailbox(Key),
    UidLevel(Key, u8),
    UidChildren(Key, NodeKey),
    Entries(Key, u32),
    Records(Key),
    Full(Key),
    Bodies(Vec<Digest>),
    PutBodies,
    Apply,
}

#[derive(Debug, Default)]
struct Work {
    remote_node: Option<Summary>,
    remote_known: bool,
    remote_record: Option<MailboxRecord>,
    remote_tombstone: Option<MailboxTombstone>,
    full: bool,
    uids: BTreeSet<u32>,
    outstanding: usize,
    level_asked: bool,
    records_asked: bool,
    remote_side: Option<MailboxSide>,
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
    remote_groups: Vec<ChangeGroup>,
    /// Bodies to fetch from the peer, and to send it, with their sizes (for batching).
    fetch: BTreeMap<Digest, u64>,
    push: BTreeMap<Digest, u64>,
    /// Fetched bodies that did not match their digest.
    bad: BTreeSet<Digest>,
    applied_once: bool,
    local_applied: bool,
    /// Mailbox summaries that came with a user bucket's users (one round for two levels).
    prefetched: BTreeMap<String, Vec<(ChildId, Summary)>>,
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

/// The UID-tree level to ask for first: the lowest whose non-empty nodes number at most 16,
/// so the single-child chain above a small mailbox costs no round trips.
fn start_level(uidnext: u32) -> u8 {
    let mut buckets = u64::from(uidnext.saturating_sub(1) >> BUCKET_SHIFT) + 1;
    let mut level = 0;
    while buckets > 16 && level < UID_ROOT_LEVEL {
        buckets = buckets.div_ceil(16);
        level += 1;
    }
    level
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
            applied_once: false,
            local_applied: false,
            prefetched: BTreeMap::new(),
            report: SyncReport {
                dry_run,
                ..SyncReport::default()
            },
        };
        s.next
            .push((Ask::Root, Request::Root { root: root.hash.0 }));
        Ok(s)
    }

    fn trunc(&self, h: &NodeHash) -> [u8; 4] {
        h.truncated(self.window)
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
        if let Ask::Mailbox(k)
        | Ask::UidLevel(k, _)
        | Ask::UidChildren(k, _)
        | Ask::Entries(k, _)
        | Ask::Records(k)
        | Ask::Full(k) = &ask
        {
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
            (
                Ask::Root,
                Reply::Root {
                    equal, children, ..
                },
            ) => {
                if equal {
                    self.report.equal_after = true;
                    self.phase = Phase::Done;
                } else {
                    self.compare_children(&NodeKey::root(), children)?;
                }
            }
            (Ask::Children(node), Reply::Children { children }) => {
                self.compare_children(&node, children)?
            }
            (Ask::Users(bucket), Reply::Users { users }) => {
                let mut listed = Vec::with_capacity(users.len());
                for (user, summary, mailboxes) in users {
                    let children = mailboxes
                        .into_iter()
                        .map(|(g, s)| (ChildId::Mailbox(g), s))
                        .collect();
                    self.prefetched.insert(user.clone(), children);
                    listed.push((ChildId::User(user), summary));
                }
                self.compare_children(&bucket, listed)?;
                self.prefetched.clear();
            }
            (
                Ask::Mailbox(key),
                Reply::Mailbox {
                    record,
                    tombstone,
                    node,
                },
            ) => {
                if let Some(r) = &record {
                    if r.guid != key.1 {
                        return Err(protocol("a mailbox record under another GUID"));
                    }
                }
                let local = self
                    .local
                    .mailbox_side(&key.0, key.1, Some(&BTreeSet::new()))?;
                let w = self.done_with(&key)?;
                w.remote_known = true;
                w.remote_node = node;
                w.remote_record = record;
                w.remote_tombstone = tombstone;
                let same_validity = matches!((&local.record, &w.remote_record), (Some(a), Some(b)) if a.uidvalidity == b.uidvalidity);
                if !same_validity {
                    w.full = true;
                } else if !w.level_asked {
                    w.level_asked = true;
                    let next = local
                        .record
                        .as_ref()
                        .map_or(1, |r| r.uidnext)
                        .max(w.remote_record.as_ref().map_or(1, |r| r.uidnext));
                    let level = start_level(next);
                    self.ask(
                        Ask::UidLevel(key.clone(), level),
                        Request::UidLevel {
                            user: key.0.clone(),
                            guid: key.1,
                            level,
                        },
                    );
                }
            }
            (Ask::UidLevel(key, level), Reply::UidLevel { nodes }) => {
                if self.done_with(&key)?.full {
                    return Ok(());
                }
                let local: BTreeMap<u32, [u8; 4]> = self
                    .local
                    .uid_level(&key.0, key.1, level)?
                    .iter()
                    .map(|(i, v)| (*i, self.trunc(&v.hash)))
                    .collect();
                let remote: BTreeMap<u32, [u8; 4]> =
                    nodes.iter().map(|(i, s)| (*i, s.hash)).collect();
                self.compare_uid_nodes(&key, level, &local, &remote)?;
            }
            (Ask::UidChildren(key, node), Reply::Children { children }) => {
                if self.done_with(&key)?.full {
                    return Ok(());
                }
                let NodeKey::Uid { level, index, .. } = node else {
                    return Err(protocol("not a UID node"));
                };
                let to_index = |slot: u8| index.wrapping_mul(16).wrapping_add(u32::from(slot));
                let local: BTreeMap<u32, [u8; 4]> = self
                    .local
                    .children(&node)?
                    .iter()
                    .filter_map(|(k, v)| match k {
                        NodeKey::Uid { index, .. } => Some((*index, self.trunc(&v.hash))),
                        _ => None,
                    })
                    .collect();
                let mut remote = BTreeMap::new();
                for (id, s) in children {
                    match id {
                        ChildId::Slot(slot) if slot < 16 => {
                            remote.insert(to_index(slot), s.hash);
                        }
                        _ => return Err(protocol("a UID node's child must be a slot")),
                    }
                }
                self.compare_uid_nodes(&key, level.saturating_sub(1), &local, &remote)?;
            }
            (Ask::Entries(key, bucket), Reply::Entries { entries }) => {
                self.done_with(&key)?;
                let local: BTreeMap<u32, [u8; 4]> = self
                    .local
                    .bucket_entries(&key.0, key.1, bucket)?
                    .iter()
                    .map(|(u, h)| (*u, self.trunc(h)))
                    .collect();
                let (first, last) = uid_span(0, bucket);
                let remote: BTreeMap<u32, [u8; 4]> = entries
                    .into_iter()
                    .filter(|(u, _)| (first..=last).contains(u))
                    .collect();
                let w = self.work.entry(key).or_default();
                for uid in local.keys().chain(remote.keys()) {
                    if local.get(uid) != remote.get(uid) {
                        w.uids.insert(*uid);
                    }
                }
            }
            (
                Ask::Records(key),
                Reply::Records {
                    messages,
                    tombstones,
                },
            )
            | (
                Ask::Full(key),
                Reply::Full {
                    messages,
                    tombstones,
                },
            ) => {
                let w = self.done_with(&key)?;
                // Records may come in several answers (chunks of UIDs): add to what came.
                let mut side = w.remote_side.take().unwrap_or_else(|| MailboxSide {
                    record: w.remote_record.clone(),
                    tombstone: w.remote_tombstone.clone(),
                    ..Default::default()
                });
                let allowed = |uid: &u32| w.full || w.uids.contains(uid);
                for (uid, m) in messages {
                    if allowed(&uid) {
                        side.messages.insert(uid, m);
                    }
                }
                for (uid, t) in tombstones {
                    if allowed(&uid) {
                        side.expunged.entry(uid).or_default().push(t);
                    }
                }
                w.remote_side = Some(side);
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

    fn child_key(parent: &NodeKey, id: &ChildId) -> Result<NodeKey, SessionError> {
        Ok(match (parent, id) {
            (NodeKey::Top { level, index }, ChildId::Slot(s))
                if *level < TOP_LEAF_LEVEL && *s < 16 =>
            {
                NodeKey::Top {
                    level: level + 1,
                    index: index * 16 + u16::from(*s),
                }
            }
            (NodeKey::Top { level, index }, ChildId::User(user)) if *level == TOP_LEAF_LEVEL => {
                validate_user(user).map_err(|e| protocol(e.to_string()))?;
                if user_bucket_of(user) != *index {
                    return Err(protocol(format!(
                        "user {user:?} listed in the wrong bucket"
                    )));
                }
                NodeKey::user(user)
            }
            (NodeKey::User { user, .. }, ChildId::Mailbox(guid)) => NodeKey::Mailbox {
                user: user.clone(),
                guid: *guid,
            },
            _ => return Err(protocol(format!("child {id:?} cannot hang under {parent}"))),
        })
    }

    /// Compares a top-tree or user node's children with ours and follows every difference.
    fn compare_children(
        &mut self,
        parent: &NodeKey,
        remote: Vec<(ChildId, Summary)>,
    ) -> Result<(), SessionError> {
        let local: BTreeMap<ChildId, (NodeKey, [u8; 4])> = self
            .local
            .children(parent)?
            .iter()
            .map(|(k, v)| (child_id(k), (k.clone(), self.trunc(&v.hash))))
            .collect();
        let mut remote_map = BTreeMap::new();
        for (id, s) in remote {
            remote_map.insert(id, s);
        }
        let ids: BTreeSet<&ChildId> = local.keys().chain(remote_map.keys()).collect();
        for id in ids {
            match (local.get(id), remote_map.get(id)) {
                (Some((_, l)), Some(r)) if *l == r.hash => {}
                (Some((k, _)), r) => self.visit(k.clone(), r.copied(), true)?,
                (None, Some(r)) => {
                    let key = Self::child_key(parent, id)?;
                    self.visit(key, Some(*r), false)?;
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// Follows a differing node: ask the peer below it, or, where the peer has nothing,
    /// expand our own side down to the mailboxes.
    fn visit(
        &mut self,
        key: NodeKey,
        remote: Option<Summary>,
        local_present: bool,
    ) -> Result<(), SessionError> {
        match &key {
            NodeKey::Top { level, index } if *level == TOP_LEAF_LEVEL && remote.is_some() => {
                let bucket = *index;
                self.ask(Ask::Users(key), Request::Users { bucket });
            }
            NodeKey::User { user, .. }
                if remote.is_some() && self.prefetched.contains_key(user) =>
            {
                let mailboxes = self.prefetched.remove(user).unwrap_or_default();
                self.compare_children(&key, mailboxes)?;
            }
            NodeKey::Top { .. } | NodeKey::User { .. } => {
                if remote.is_some() {
                    let node = wire_key(&key);
                    self.ask(Ask::Children(key), Request::Children { node });
                } else {
                    for (child, _) in self.local.children(&key)? {
                        self.visit(child, None, true)?;
                    }
                }
            }
            NodeKey::Mailbox { user, guid } => {
                let k = (user.clone(), *guid);
                self.report.differing_mailboxes += 1;
                self.work.entry(k.clone()).or_default().remote_node = remote;
                self.ask(
                    Ask::Mailbox(k.clone()),
                    Request::Mailbox {
                        user: user.clone(),
                        guid: *guid,
                    },
                );
                if local_present && remote.is_some() {
                    // Ask for the UID tree in the same round; the record only confirms it.
                    let side = self
                        .local
                        .mailbox_side(user, *guid, Some(&BTreeSet::new()))?;
                    if let Some(r) = side.record {
                        let level = start_level(r.uidnext);
                        self.work.entry(k.clone()).or_default().level_asked = true;
                        self.ask(
                            Ask::UidLevel(k, level),
                            Request::UidLevel {
                                user: user.clone(),
                                guid: *guid,
                                level,
                            },
                        );
                    }
                }
            }
            NodeKey::Uid { .. } => return Err(protocol("UID nodes are compared per mailbox")),
        }
        Ok(())
    }

    /// Compares one level of a mailbox's UID tree and follows the differences downwards.
    fn compare_uid_nodes(
        &mut self,
        key: &Key,
        level: u8,
        local: &BTreeMap<u32, [u8; 4]>,
        remote: &BTreeMap<u32, [u8; 4]>,
    ) -> Result<(), SessionError> {
        let indexes: BTreeSet<u32> = local.keys().chain(remote.keys()).copied().collect();
        for index in indexes {
            let (l, r) = (local.get(&index), remote.get(&index));
            if l == r {
                continue;
            }
            if r.is_none() {
                // Only we have messages here; the peer may still hold tombstones for them.
                let (first, last) = uid_span(level, index);
                let uids = self.local.uids_in(&key.0, key.1, first, last)?;
                self.work.entry(key.clone()).or_default().uids.extend(uids);
            } else if level == 0 {
                self.ask(
                    Ask::Entries(key.clone(), index),
                    Request::Entries {
                        user: key.0.clone(),
                        guid: key.1,
                        bucket: index,
                    },
                );
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

    /// Moves the session on when a round has nothing left to ask in the current phase.
    fn advance(&mut self) -> Result<(), SessionError> {
        match self.phase {
            Phase::Discover => {
                let mut asks = Vec::new();
                for (key, w) in &mut self.work {
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
                                    guid: key.1,
                                },
                            ));
                        }
                    } else if !w.uids.is_empty() {
                        w.records_asked = true;
                        let uids: Vec<u32> = w.uids.iter().copied().collect();
                        for chunk in uids.chunks(RECORDS_PER_REQUEST) {
                            asks.push((
                                Ask::Records(key.clone()),
                                Request::Records {
                                    user: key.0.clone(),
                                    guid: key.1,
                                    uids: chunk.to_vec(),
                                },
                            ));
                        }
                    }
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
            let local = self.local.mailbox_side(
                &key.0,
                key.1,
                if w.full { None } else { Some(&w.uids) },
            )?;
            let remote = w.remote_side.clone().unwrap_or_else(|| MailboxSide {
                record: w.remote_record.clone(),
                tombstone: w.remote_tombstone.clone(),
                ..Default::default()
            });
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
                if !outcomes.contains_key(&wk) {
                    // Equal on both sides: both hold what we hold.
                    let side = self
                        .local
                        .mailbox_side(user, winner, Some(&BTreeSet::new()))?;
                    let hash = self
                        .local
                        .node(&NodeKey::Mailbox {
                            user: user.clone(),
                            guid: winner,
                        })?
                        .map_or(NodeHash::EMPTY, |v| v.hash);
                    outcomes.insert(wk.clone(), merge_mailbox(&side, &side));
                    sides.insert(wk.clone(), (hash, side.clone(), side));
                    let w = self.work.entry(wk).or_default();
                    w.remote_known = true;
                    w.remote_node = Some(Summary {
                        hash: hash.truncated(self.window),
                        count: 0,
                    });
                }
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
                        merge_into(wo, &mut lo, loser);
                    }
                    outcomes.insert((user.clone(), loser), lo);
                }
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
                .map_or(NodeHash::EMPTY.truncated(w), |s| s.hash);
            let local_digests: BTreeSet<Digest> =
                local.messages.values().map(|m| m.digest).collect();
            let local_store = self.local;
            let (mut fetch, mut push) = (Vec::new(), Vec::new());
            let (local_changes, lc) = changes_for(&key.0, local, outcome, |m| {
                // A body held anywhere here is enough: the store frees bodies only at the end
                // of a transaction, so one moving between mailboxes is never lost meanwhile.
                if !local_digests.contains(&m.digest)
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
                self.remote_groups.push(ChangeGroup {
                    user: key.0.clone(),
                    guid: key.1,
                    window: w,
                    expect: remote_expect,
                    changes: remote_changes,
                });
            }
        }
        self.report.mailboxes_changed = counts_changed;
        // Deletions last, so a body moving out of a deleted mailbox is still referenced when
        // the mailbox that receives it takes its reference.
        let deletes_last = |g: &ChangeGroup| {
            g.changes
                .iter()
                .any(|c| matches!(c, Change::DeleteMailbox { .. }))
        };
        self.local_groups.sort_by_key(deletes_last);
        self.remote_groups.sort_by_key(deletes_last);
        if self.dry_run {
            self.report.equal_after = false;
            self.phase = Phase::Done;
            return Ok(());
        }
        self.phase = Phase::Transfer;
        self.advance()
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
