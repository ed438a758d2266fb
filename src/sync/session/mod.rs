//! The initiator's side of reconciliation, as a state machine that does no I/O of its own:
//! [`Session::next_round`] says what to ask the peer, [`Session::receive`] takes the answer.
//! It reads (and, at the end, writes) local state only through [`Replica`], so it runs the
//! same over a store and over a model in memory.
//!
//! States: roots → level-synchronous descent (every differing node of a level in one round)
//! → mailbox records → UID-tree descent (jumping straight to a level of at most 16 nodes) →
//! entries → records → merge (clash rules) → bodies the local side lacks → apply locally, then
//! remotely → compare roots. Each phase has its own file: `discovery` (roots, top levels,
//! users, mailboxes, the UID-tree descent), `records` (bucket runs, records and tombstones),
//! `plan` (the merge and both sides' change groups), `transfer` (bodies both ways, the applies).
//!
//! **Chunks.** What a session holds grows with the records it plans, so it plans, transfers and
//! applies a bounded share of the difference at a time: discovery runs once, then the users whose
//! mailboxes differ are taken in chunks of about [`MESSAGES_PER_CHUNK`] messages (a user is never
//! split: the clash rules that span mailboxes — one name under two GUIDs, merged-into chains —
//! stay within one user), each chunk asked for its records, planned, transferred and applied on
//! both sides before the next one's records are asked for. Memory is then bounded by the chunk
//! (or by the largest user), not by the store.

mod discovery;
mod plan;
mod records;
mod transfer;

use super::replica::Replica;
use super::wire::{
    fp, ApplyGroup, Fp, GuidRef, Reply, Request, RoundReply, RoundRequest, WIRE_VERSION,
};
use crate::merkle::{NodeHash, NodeKey};
use crate::model::{no_progress, ChangeGroup, Progress};
use crate::model::{Digest, MailboxGuid, MailboxRecord, MailboxSide, MailboxTombstone};
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    /// Body rounds sent while the answer to the round before was being taken (staged): the
    /// driver's overlap ([`Session::next_round_ahead`]).
    pub rounds_ahead: u64,
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
    /// Messages one side lacked below its UIDNEXT (nothing held there): renumbered on both
    /// sides, since that side's IMAP clients never look below the UIDNEXT they saw. (The
    /// name is from when they were copied there.)
    pub late_copies: u64,
    /// Messages one side held where the other had only a move tombstone of them, the move's
    /// destination nowhere in the session: moved again, on both sides (docs/PROTOCOL.md,
    /// the clash table).
    pub moves_redone: u64,
    /// Chunks the difference was planned and applied in (see the module's doc), and the most
    /// message records (both sides') one chunk's plan held at once.
    pub plan_chunks: u64,
    pub largest_plan_messages: u64,
    pub duration_ms: u64,
    pub equal_after: bool,
    pub dry_run: bool,
}

impl SyncReport {
    /// Adds what an earlier session of the same sync moved and cost (round trips, bytes, copies,
    /// expunges, flag updates, clashes, late copies and moves redone, changed mailboxes,
    /// time); the outcome fields
    /// (`equal_after`, stale mailboxes, mismatches) stay this session's.
    pub fn add_work_of(&mut self, earlier: &SyncReport) {
        self.rounds += earlier.rounds;
        self.rounds_ahead += earlier.rounds_ahead;
        self.bytes_sent += earlier.bytes_sent;
        self.bytes_received += earlier.bytes_received;
        self.body_bytes_sent += earlier.body_bytes_sent;
        self.body_bytes_received += earlier.body_bytes_received;
        self.copied_to_peer += earlier.copied_to_peer;
        self.copied_from_peer += earlier.copied_from_peer;
        self.expunged += earlier.expunged;
        self.flag_updates += earlier.flag_updates;
        self.uid_clashes_renumbered += earlier.uid_clashes_renumbered;
        self.late_copies += earlier.late_copies;
        self.moves_redone += earlier.moves_redone;
        self.mailboxes_changed += earlier.mailboxes_changed;
        self.plan_chunks += earlier.plan_chunks;
        self.largest_plan_messages = self
            .largest_plan_messages
            .max(earlier.largest_plan_messages);
        self.duration_ms += earlier.duration_ms;
    }
}

type Key = (String, MailboxGuid);

/// UIDs asked for in one Records question (the peer accepts up to `wire::MAX_ITEMS`).
const RECORDS_PER_REQUEST: usize = 50_000;
/// Change groups travel in Apply rounds of about this many encoded bytes (a group is never
/// split): what the peer decodes and applies in one transaction.
const APPLY_BATCH_BYTES: usize = 4 << 20;
/// Each side applies the groups in transactions of about this many changes (a group whole):
/// this side's, and the peer's Apply rounds.
const LOCAL_APPLY_CHANGES: usize = 4_096;
/// About how many message records (both sides' estimates) one chunk plans at once; a user
/// larger than this is a chunk of its own.
pub const MESSAGES_PER_CHUNK: u64 = 20_000;
/// At most this many rounds are asked and not yet answered: a body round may be asked before
/// the answer to the one before it is taken ([`Session::next_round_ahead`]), so the peer reads
/// and sends the next batch of bodies while this side hashes and stages the last one. Each
/// round in flight holds one batch of about `wire::BODY_BATCH_BYTES`.
pub const ROUNDS_IN_FLIGHT: usize = 2;

#[derive(Clone, Debug)]
enum Ask {
    Root,
    Children(NodeKey),
    /// A user bucket, with the users we listed in it (the answer names them by position) and,
    /// per user, the mailbox GUIDs we listed (the answer names mailboxes by position in that
    /// list, which our own writes may have changed by the time it arrives).
    Users(u16, Vec<String>, Vec<Vec<MailboxGuid>>),
    Mailbox(Key),
    UidChildren(Key, NodeKey),
    /// Records, with the buckets compared in the same question.
    Records(Key, Vec<u32>),
    Full(Key),
    Bodies(Vec<Digest>),
    PutBodies(Vec<Digest>),
    /// An Apply, with the mailboxes of its groups in order (the answer says per group
    /// whether it applied).
    Apply(Vec<(String, GuidRef)>),
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
    /// The peer's UIDNEXT and (when it said) its message count: what bounds the records a
    /// whole mailbox or a tail brings (for the chunks).
    remote_next: u32,
    remote_count: Option<u64>,
}

impl Work {
    fn covers(&self, uid: u32) -> bool {
        self.full
            || (self.tail && uid >= self.limit)
            || self.uids.contains(&uid)
            || self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&uid))
    }

    /// At most how many records the peer's answers and our side bring into the plan for this
    /// mailbox (`local_count`: our mailbox's messages), never more than what decides a chunk.
    fn estimate(&self, local_count: u64) -> u64 {
        let cap = MESSAGES_PER_CHUNK;
        if self.full {
            let remote = match (&self.remote_record, self.remote_count) {
                (None, _) => 0,
                (Some(_), Some(n)) => n,
                (Some(_), None) => u64::from(self.remote_next.saturating_sub(1)),
            };
            return local_count.saturating_add(remote);
        }
        let ranges: u64 = self
            .ranges
            .iter()
            .map(|(a, b)| (u64::from(*b) - u64::from(*a) + 1).min(cap))
            .sum();
        let tail = if self.tail && self.remote_next > self.local_next {
            u64::from(self.remote_next - self.limit.min(self.remote_next))
        } else {
            0
        };
        2 * (self.uids.len() as u64 + ranges.min(cap) + tail.min(cap))
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
    local: &'a dyn Replica,
    window: u8,
    dry_run: bool,
    phase: Phase,
    next: Vec<(Ask, Request)>,
    /// The questions of the rounds asked and not yet answered, oldest first: one round, or up
    /// to [`ROUNDS_IN_FLIGHT`] body rounds ([`Session::next_round_ahead`]).
    asked: VecDeque<Vec<Ask>>,
    work: BTreeMap<Key, Work>,
    local_groups: Vec<ChangeGroup>,
    remote_groups: Vec<ApplyGroup>,
    /// Bodies to fetch from the peer, and to send it, with their sizes (for batching).
    fetch: BTreeMap<Digest, u64>,
    push: BTreeMap<Digest, u64>,
    /// Fetched bodies that did not match their digest.
    bad: BTreeSet<Digest>,
    /// For progress: per body still to move either way, how many copied messages use it.
    waiting: BTreeMap<Digest, u64>,
    /// Bodies that came with records (staged already).
    prefetched: BTreeSet<Digest>,
    /// Bodies held here in another mailbox than the one whose change takes them.
    held_elsewhere: BTreeSet<Digest>,
    applied_once: bool,
    local_applied: bool,
    /// Mailboxes whose group here takes the peer's UIDVALIDITY: it waits for the peer's
    /// group for the same mailbox to pass its guard (`confirm`), held in `deferred` until
    /// the answer that says so (finding 16 of docs/RELIABILITY.md).
    confirm: BTreeSet<Key>,
    deferred: Vec<ChangeGroup>,
    /// The chunk being planned: its users, and the records their mailboxes were estimated to
    /// bring; the mailboxes of the users left for later chunks (found by discovery, records
    /// not asked yet); the chunk's budget; messages copied in the chunks before.
    admitted: BTreeSet<String>,
    chunk_estimate: u64,
    later: BTreeMap<Key, Work>,
    chunk_budget: u64,
    copied_before: u64,
    pub report: SyncReport,
}

impl<'a> Session<'a> {
    /// A session with the given hash window (pick it at random per session).
    pub fn new(
        local: &'a dyn Replica,
        window: u8,
        dry_run: bool,
    ) -> Result<Session<'a>, SessionError> {
        let root = local.root()?;
        let mut s = Session {
            local,
            window,
            dry_run,
            phase: Phase::Discover,
            next: Vec::new(),
            asked: VecDeque::new(),
            work: BTreeMap::new(),
            local_groups: Vec::new(),
            remote_groups: Vec::new(),
            fetch: BTreeMap::new(),
            push: BTreeMap::new(),
            bad: BTreeSet::new(),
            waiting: BTreeMap::new(),
            prefetched: BTreeSet::new(),
            held_elsewhere: BTreeSet::new(),
            applied_once: false,
            local_applied: false,
            confirm: BTreeSet::new(),
            deferred: Vec::new(),
            admitted: BTreeSet::new(),
            chunk_estimate: 0,
            later: BTreeMap::new(),
            chunk_budget: MESSAGES_PER_CHUNK,
            copied_before: 0,
            report: SyncReport {
                dry_run,
                ..SyncReport::default()
            },
        };
        s.next
            .push((Ask::Root, Request::Root { root: root.hash.0 }));
        Ok(s)
    }

    /// Plans at most about `messages` records per chunk (tests; the default is
    /// [`MESSAGES_PER_CHUNK`]). Call it before the first round.
    pub fn set_chunk_budget(&mut self, messages: u64) {
        self.chunk_budget = messages.max(1);
    }

    /// The chunk under way, counted from 0: the driver bounds the rounds of each.
    pub fn chunk(&self) -> u64 {
        self.report.plan_chunks
    }

    /// How far the session has come, in messages copied either way: before a chunk's plan,
    /// those of the chunks before and the messages whose bodies came with their records;
    /// after it, of the messages the plans so far copy, those whose bodies have moved (or
    /// needed no move); all of them once the applies are done. The total is known once the
    /// last chunk is planned. `bytes` is left to the driver, which sees them.
    pub fn progress(&self) -> Progress {
        if self.phase == Phase::Discover {
            return Progress {
                done: self.copied_before + self.prefetched.len() as u64,
                total: None,
                bytes: 0,
            };
        }
        let total = self.report.copied_from_peer + self.report.copied_to_peer;
        let done = match self.phase {
            _ if self.dry_run => 0,
            Phase::Done => total,
            _ => total.saturating_sub(self.waiting.values().sum()),
        };
        if self.later.is_empty() {
            Progress::of(done, total, 0)
        } else {
            Progress {
                done,
                total: None,
                bytes: 0,
            }
        }
    }

    /// A chunk is over (applied on both sides, or planned in a dry run): the session is done,
    /// or the next chunk starts with the users left for later.
    fn finish_chunk(&mut self) -> Result<(), SessionError> {
        self.report.plan_chunks += 1;
        if self.later.is_empty() {
            self.phase = Phase::Done;
            return Ok(());
        }
        self.work = std::mem::take(&mut self.later);
        self.admitted.clear();
        self.chunk_estimate = 0;
        self.prefetched.clear();
        self.held_elsewhere.clear();
        self.local_groups.clear();
        self.remote_groups.clear();
        self.fetch.clear();
        self.push.clear();
        self.waiting.clear();
        self.bad.clear();
        self.applied_once = false;
        self.local_applied = false;
        self.confirm.clear();
        self.deferred.clear();
        self.copied_before = self.report.copied_from_peer + self.report.copied_to_peer;
        self.phase = Phase::Discover;
        Ok(())
    }

    /// These bodies have moved: the messages that wait for them count as copied.
    fn moved(&mut self, digests: &[Digest]) {
        for d in digests {
            self.waiting.remove(d);
        }
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
        self.asked.push_back(asks);
        Ok(Some(RoundRequest {
            version: WIRE_VERSION,
            window: self.window,
            requests,
        }))
    }

    /// The next round, asked before the answers to the rounds in flight are taken, or `None`
    /// when it has to wait for them. Only a round of bodies is asked ahead: while bodies are
    /// left to move either way, the next batch does not depend on any answer (the Apply that
    /// may ride with the last batch is answered after the batches before it, in order, and
    /// this side applies only once it has taken them). At most [`ROUNDS_IN_FLIGHT`] rounds
    /// are in flight; once the answers are in, [`Session::next_round`] goes on.
    pub fn next_round_ahead(&mut self) -> Result<Option<RoundRequest>, SessionError> {
        if !self.may_ask_ahead() {
            return Ok(None);
        }
        self.next_round()
    }

    /// Whether [`Session::next_round_ahead`] would ask a round now.
    pub fn may_ask_ahead(&self) -> bool {
        let more_bodies = !self.fetch.is_empty() || !self.push.is_empty();
        self.phase == Phase::Transfer
            && more_bodies
            && self.next.is_empty()
            && self.asked.len() < ROUNDS_IN_FLIGHT
    }

    /// Rounds asked whose answers have not been taken yet.
    pub fn in_flight(&self) -> usize {
        self.asked.len()
    }

    /// Takes the peer's answer to the oldest round in flight.
    pub fn receive(&mut self, reply: RoundReply) -> Result<(), SessionError> {
        self.receive_observed(reply, &mut no_progress)
    }

    /// [`Session::receive`], telling `progress` how far the session has come before it applies
    /// its own changes (which can take a while after a large copy).
    pub fn receive_observed(
        &mut self,
        reply: RoundReply,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), SessionError> {
        let asked = self
            .asked
            .pop_front()
            .ok_or_else(|| protocol("an answer to no question"))?;
        if reply.replies.len() != asked.len() {
            return Err(protocol(format!(
                "{} answers to {} questions",
                reply.replies.len(),
                asked.len()
            )));
        }
        for (ask, answer) in asked.into_iter().zip(reply.replies) {
            self.take(ask, answer, progress)?;
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

    /// One answer, handed to the phase that asked for it.
    fn take(
        &mut self,
        ask: Ask,
        answer: Reply,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), SessionError> {
        match (ask, answer) {
            (Ask::Root, Reply::Root { equal, children }) => self.take_root(equal, &children),
            (Ask::Children(node), Reply::Children { children }) => {
                self.compare_top(&node, &children)
            }
            (Ask::Users(bucket, listed, sent), Reply::Users { users }) => {
                self.take_users(bucket, &listed, &sent, users)
            }
            (
                Ask::Mailbox(key),
                Reply::Mailbox {
                    record,
                    tombstone,
                    node,
                },
            ) => self.take_mailbox_record(&key, record, tombstone, node),
            (Ask::UidChildren(key, node), Reply::Children { children }) => {
                self.take_uid_children(&key, node, &children)
            }
            (
                Ask::Records(key, buckets),
                Reply::Records {
                    runs,
                    messages,
                    tombstones,
                },
            ) => self.take_compared(&key, buckets, runs, messages, tombstones),
            (
                Ask::Full(key),
                Reply::Full {
                    messages,
                    tombstones,
                },
            ) => {
                self.done_with(&key)?;
                self.take_records(&key, messages, tombstones)
            }
            (Ask::Bodies(digests), Reply::Bodies { bodies }) => self.take_bodies(digests, bodies),
            (Ask::PutBodies(digests), Reply::Staged { .. }) => {
                self.moved(&digests);
                Ok(())
            }
            (Ask::Apply(sent), Reply::Applied { applied, root }) => {
                self.take_applied(&sent, &applied, root, progress)
            }
            (ask, _) => Err(protocol(format!("an answer of the wrong kind to {ask:?}"))),
        }
    }

    /// Queues the next questions once every answer of the last round is in.
    fn advance(&mut self) -> Result<(), SessionError> {
        match self.phase {
            Phase::Discover => {
                self.ask_records()?;
                if self.next.is_empty() && self.work.values().all(|w| w.outstanding == 0) {
                    self.plan()?;
                }
                Ok(())
            }
            Phase::Transfer => self.queue_transfer(),
            Phase::Apply => {
                self.queue_apply();
                Ok(())
            }
            Phase::Done => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SyncReport;

    #[test]
    fn the_work_of_an_earlier_session_adds_up_and_the_outcome_stays_this_ones() {
        let earlier = SyncReport {
            rounds: 3,
            uid_clashes_renumbered: 1,
            late_copies: 2,
            moves_redone: 4,
            stale_mailboxes: 5,
            equal_after: false,
            ..SyncReport::default()
        };
        let mut now = SyncReport {
            rounds: 1,
            late_copies: 1,
            moves_redone: 1,
            equal_after: true,
            ..SyncReport::default()
        };
        now.add_work_of(&earlier);
        assert_eq!(
            (
                now.rounds,
                now.uid_clashes_renumbered,
                now.late_copies,
                now.moves_redone
            ),
            (4, 1, 3, 5)
        );
        assert_eq!((now.stale_mailboxes, now.equal_after), (0, true));
    }
}
