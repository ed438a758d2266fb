//! The simulated cluster: peers (real stores on redb files), a seeded network that drops,
//! delays, duplicates and reorders what travels, partitions, crashes and restarts, and the
//! random mail operations. Every decision comes from one `StdRng` seeded with the run's seed
//! and the time is simulated, so a seed replays exactly.

use super::oracle::{Appended, ClientViews, Oracle};
use super::random_ops::{msg, BOXES, USERS};
use merkmail::daemon::tombstones::Purge;
use merkmail::model::{Digest, FlagName, FlagOp, MailboxGuid};
use merkmail::store::{Store, StoreError};
use merkmail::sync::journal_wire::{decode_batch, encode_batch};
use merkmail::sync::responder::answer;
use merkmail::sync::wire::{decode_request, encode, Reply};
use merkmail::sync::{run, DriveError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where simulated time starts (ms since the epoch).
const EPOCH_MS: u64 = 1_700_000_000_000;
/// Flags the writers set and clear.
const FLAGS: [&str; 4] = ["\\Seen", "\\Flagged", "\\Answered", "$Label1"];
/// Users the writers work on: the bootstrapped ones, and one that no peer holds at the start
/// (its first mail and logins happen during the run, on peers that have not caught up).
const SIM_USERS: [&str; 3] = ["ann", "ben", LATE_USER];
const LATE_USER: &str = "cat";
/// The late user's folder that Dovecot made on several servers with one GUID (as after a
/// dsync migration), each with its own UIDVALIDITY.
const DOVECOT_FOLDER: &str = "Archive";
const DOVECOT_FOLDER_GUID: MailboxGuid = MailboxGuid([0xa7; 16]);
/// Settling gives up after this many rounds of "ship every journal, apply, session every pair".
const SETTLE_ROUNDS: usize = 12;

/// How hostile one run is; drawn from the seed.
#[derive(Clone, Debug)]
pub struct Settings {
    pub peers: usize,
    pub steps: usize,
    /// Chance that a packet (session round, answer, batch, ack) is lost.
    pub drop: f64,
    /// Chance that a packet travels twice (the copy later, so also out of order).
    pub duplicate: f64,
    pub max_delay_ms: u64,
    /// Per step.
    pub crash: f64,
    /// Chance that a peer crashes right after storing a journal batch, before applying it.
    pub crash_after_receive: f64,
    /// Per step: split the cluster in two, or heal it.
    pub partition: f64,
    pub journal_bound: u64,
    pub batch_entries: usize,
    pub skew_ms: u64,
    /// How long a tombstone is kept at least (simulated ms; the daemon's
    /// `tombstone_retention`). Each peer runs the daemon's purge rule every quarter of it.
    /// `None`: tombstones are kept for ever (the simulation as it ran before issue 14).
    pub retention_ms: Option<u64>,
    /// Per step: a peer stops for longer than the retention, then comes back with its store.
    pub outage: f64,
    /// Per step: a peer is removed from every other peer's configuration (at most one per
    /// run) and never comes back with its store.
    pub removal: f64,
}

impl Settings {
    pub fn draw(rng: &mut StdRng, steps: usize) -> Settings {
        let calm = rng.random_bool(0.15);
        let pick = |rng: &mut StdRng, hi: f64| if calm { 0.0 } else { rng.random_range(0.0..hi) };
        Settings {
            peers: rng.random_range(3..=5),
            steps,
            drop: pick(rng, 0.2),
            duplicate: pick(rng, 0.2),
            max_delay_ms: rng.random_range(0..=300),
            crash: pick(rng, 0.03),
            crash_after_receive: pick(rng, 0.15),
            partition: pick(rng, 0.04),
            journal_bound: [6, 40, 100_000][rng.random_range(0..3)],
            batch_entries: rng.random_range(1..=16),
            skew_ms: rng.random_range(0..=400),
            retention_ms: None,
            outage: 0.0,
            removal: 0.0,
        }
    }

    /// The tombstone-forgetting scenarios (issue 14), drawn from their own generator so that
    /// a seed without them replays exactly as it did before they existed.
    fn draw_forgetting(&mut self, rng: &mut StdRng) {
        let calm = self.crash == 0.0 && self.partition == 0.0 && self.drop == 0.0;
        let pick = |rng: &mut StdRng, hi: f64| if calm { 0.0 } else { rng.random_range(0.0..hi) };
        self.retention_ms = Some(rng.random_range(150..=1_500));
        self.outage = pick(rng, 0.006);
        self.removal = pick(rng, 0.002);
    }
}

/// Faults injected, by kind.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub drops: u64,
    /// Packets lost because a partition or a crashed peer stood in the way.
    pub cut_off: u64,
    pub duplicates: u64,
    /// Packets delivered after one sent later on the same link.
    pub reorders: u64,
    pub partitions: u64,
    pub crashes: u64,
    /// Crashes right after storing a journal batch, before applying it.
    pub crashes_before_apply: u64,
    /// Crashes of a session's initiator in the middle of the session.
    pub crashes_mid_session: u64,
    /// Peers stopped on purpose for longer than the retention (long outages).
    pub long_outages: u64,
    /// Restarts after being down longer than the retention (long outages and crashes).
    pub outages_past_retention: u64,
    /// Peers removed from every other peer's configuration (never back with their store).
    pub peers_removed: u64,
}

impl Faults {
    pub fn add(&mut self, o: &Faults) {
        self.drops += o.drops;
        self.cut_off += o.cut_off;
        self.duplicates += o.duplicates;
        self.reorders += o.reorders;
        self.partitions += o.partitions;
        self.crashes += o.crashes;
        self.crashes_before_apply += o.crashes_before_apply;
        self.crashes_mid_session += o.crashes_mid_session;
        self.long_outages += o.long_outages;
        self.outages_past_retention += o.outages_past_retention;
        self.peers_removed += o.peers_removed;
    }
}

/// What the cluster did.
#[derive(Clone, Debug, Default)]
pub struct Activity {
    pub ops_ok: u64,
    pub ops_refused: u64,
    pub appends: u64,
    pub expunges: u64,
    pub mailbox_deletes: u64,
    pub sessions: u64,
    pub sessions_equal: u64,
    pub sessions_unequal: u64,
    pub sessions_failed: u64,
    /// Sessions that failed with something other than the transport (protocol, store).
    pub sessions_error: u64,
    pub round_replays: u64,
    pub batches_received: u64,
    pub entries_applied: u64,
    pub entries_dropped: u64,
    pub checks_owed: u64,
    pub responder_errors: u64,
    pub settle_rounds: u64,
    /// Logins of the late user on a peer (its Dovecot making INBOX or a folder, empty if the
    /// peer has not caught up, with its own UIDVALIDITY).
    pub logins: u64,
    /// UIDVALIDITY changes a client saw on a mailbox that held mail (a conflict lost).
    pub uidvalidity_changes: u64,
    /// Looks at every peer's mailboxes by the IMAP-promise checks.
    pub client_looks: u64,
    /// Mailboxes holding mail that a same-name merge took away, as the looks saw them.
    pub full_merges: u64,
    /// Logins that had the late user's Dovecot make `Lists` with a GUID of its own (Dovecot's
    /// layout, this peer's clock) where the peer did not hold it yet: the same name under
    /// several GUIDs, some empty.
    pub folders_autocreated: u64,
    /// Messages sessions renumbered because one side's UIDNEXT had passed them.
    pub renumbered_below_uidnext: u64,
    /// Messages sessions moved again because the other side held only a move tombstone of
    /// them, its destination gone (finding 14).
    pub moves_redone: u64,
    /// Passes of the tombstone purge rule (every peer, every quarter of the retention).
    pub purge_passes: u64,
    /// Message and mailbox tombstones the rule forgot.
    pub tombstones_purged: u64,
    pub mailbox_tombstones_purged: u64,
    /// Tombstones past their retention that a pass kept because some configured peer was
    /// not known to hold them, summed over passes (a tombstone held for three passes counts
    /// three times), and the most one pass held.
    pub tombstones_held_back: u64,
    pub held_back_peak: u64,
    /// Passes that held something back for a peer that was down at the time.
    pub held_back_for_a_down_peer: u64,
}

impl Activity {
    pub fn add(&mut self, o: &Activity) {
        self.ops_ok += o.ops_ok;
        self.ops_refused += o.ops_refused;
        self.appends += o.appends;
        self.expunges += o.expunges;
        self.mailbox_deletes += o.mailbox_deletes;
        self.sessions += o.sessions;
        self.sessions_equal += o.sessions_equal;
        self.sessions_unequal += o.sessions_unequal;
        self.sessions_failed += o.sessions_failed;
        self.sessions_error += o.sessions_error;
        self.round_replays += o.round_replays;
        self.batches_received += o.batches_received;
        self.entries_applied += o.entries_applied;
        self.entries_dropped += o.entries_dropped;
        self.checks_owed += o.checks_owed;
        self.responder_errors += o.responder_errors;
        self.settle_rounds += o.settle_rounds;
        self.logins += o.logins;
        self.uidvalidity_changes += o.uidvalidity_changes;
        self.client_looks += o.client_looks;
        self.full_merges += o.full_merges;
        self.folders_autocreated += o.folders_autocreated;
        self.renumbered_below_uidnext += o.renumbered_below_uidnext;
        self.moves_redone += o.moves_redone;
        self.purge_passes += o.purge_passes;
        self.tombstones_purged += o.tombstones_purged;
        self.mailbox_tombstones_purged += o.mailbox_tombstones_purged;
        self.tombstones_held_back += o.tombstones_held_back;
        self.held_back_peak = self.held_back_peak.max(o.held_back_peak);
        self.held_back_for_a_down_peer += o.held_back_for_a_down_peer;
    }
}

/// The result of one seed.
pub struct Outcome {
    pub seed: u64,
    pub settings: Settings,
    pub faults: Faults,
    pub activity: Activity,
    pub violations: Vec<String>,
    /// Sessions that ended with an error other than the transport's (not violations: the
    /// next session repairs; worth a look when one keeps coming).
    pub session_errors: Vec<String>,
    pub trace: Vec<String>,
}

struct Peer {
    id: String,
    url: String,
    dir: PathBuf,
    /// `None` while crashed. Shared so that a session can hold its initiator's store while
    /// the rest of the world goes on; a crash waits until nobody else holds it.
    store: Option<Rc<Store>>,
    clock: Arc<AtomicU64>,
    skew_ms: u64,
    /// The step at which a crashed peer comes back, and the time before which it does not
    /// (a long outage).
    down_until: u64,
    down_until_ms: u64,
    /// When it went down (simulated ms), to count outages past the retention.
    down_since_ms: u64,
    incarnation: u64,
    /// Removed from every other peer's configuration: never comes back.
    removed: bool,
    /// The peers this one has configured (indices).
    configured: BTreeSet<usize>,
    /// The daemon's tombstone rule, in memory (a restart starts it afresh): its memory of
    /// due tombstones, per peer the horizon (this peer's clock, ms; `None` since the start),
    /// and when its next pass is due (this peer's clock).
    purge: Purge,
    horizons: Vec<Option<u64>>,
    next_purge_ms: u64,
}

enum Packet {
    Batch {
        bytes: Vec<u8>,
        last: u64,
    },
    Ack {
        acked: u64,
        last: u64,
    },
    /// A late copy of a session round: the responder answers it again, the answer goes nowhere.
    Round {
        bytes: Vec<u8>,
    },
}

struct InFlight {
    from: usize,
    to: usize,
    /// Order of sending on this link, to count reorders.
    sent: u64,
    packet: Packet,
}

pub struct World {
    seed: u64,
    settings: Settings,
    rng: StdRng,
    /// Decides the forgetting scenarios (long outages, removals) apart from `rng`.
    aside: StdRng,
    /// Whether logins make folders of their own ([`World::login`]).
    autocreate: bool,
    now: u64,
    step: u64,
    peers: Vec<Peer>,
    _dir: tempfile::TempDir,
    queue: BTreeMap<(u64, u64), InFlight>,
    next_seq: u64,
    link_sent: BTreeMap<(usize, usize), u64>,
    link_delivered: BTreeMap<(usize, usize), u64>,
    side: Vec<u8>,
    /// Sessions a journal apply (or a restart) asked for: (initiator, peer).
    owed: BTreeSet<(usize, usize)>,
    /// The initiator of the session in progress (sessions do not nest).
    in_session: Option<usize>,
    crash_pending: Option<usize>,
    quiet: bool,
    bodies: u64,
    oracle: Oracle,
    views: ClientViews,
    /// The last line SIM_WATCH logged.
    watched: Option<String>,
    /// The last line SIM_WATCH_BOX logged.
    watched_box: Option<String>,
    faults: Faults,
    activity: Activity,
    violations: Vec<String>,
    session_errors: Vec<String>,
    trace: Vec<String>,
}

/// A temporary directory on tmpfs when there is one: every redb commit fsyncs, and on a disk
/// that would dominate the run.
fn scratch() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("merkmail-sim")
            .tempdir_in(shm)
        {
            return Ok(dir);
        }
    }
    tempfile::Builder::new().prefix("merkmail-sim").tempdir()
}

impl World {
    /// A run of `seed`; `forgetting: false` runs a seed as it ran before the forgetting scenarios existed
    /// (tombstones kept for ever, no long outage, no removal): the reduced seeds of earlier
    /// findings replay exactly. `autocreate: false` leaves out the folders logins make
    /// ([`World::login`]), as seeds ran before issue 12's item 6.
    pub fn with(
        seed: u64,
        steps: usize,
        forgetting: bool,
        autocreate: bool,
    ) -> Result<World, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut settings = Settings::draw(&mut rng, steps);
        let mut aside = StdRng::seed_from_u64(seed ^ 0x7f0e_6e77_1a9e_5eed);
        if forgetting {
            settings.draw_forgetting(&mut aside);
        }
        let dir = scratch().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let mut peers = Vec::new();
        for k in 0..settings.peers {
            let id = format!("p{k}");
            let path = dir.path().join(&id);
            let clock = Arc::new(AtomicU64::new(EPOCH_MS));
            let mut store = Store::init(&path, &id).map_err(|e| format!("init {id}: {e}"))?;
            store.simulate_environment(
                Arc::clone(&clock),
                seed.wrapping_mul(31).wrapping_add(k as u64),
            );
            peers.push(Peer {
                url: format!("sim://{id}"),
                id,
                dir: path,
                store: Some(Rc::new(store)),
                clock,
                skew_ms: rng.random_range(0..=settings.skew_ms),
                down_until: 0,
                down_until_ms: 0,
                down_since_ms: 0,
                incarnation: 0,
                removed: false,
                configured: (0..settings.peers).filter(|&j| j != k).collect(),
                purge: Purge::default(),
                horizons: vec![None; settings.peers],
                next_purge_ms: 0,
            });
        }
        let mut world = World {
            seed,
            side: vec![0; settings.peers],
            settings,
            rng,
            aside,
            autocreate,
            now: EPOCH_MS,
            step: 0,
            peers,
            _dir: dir,
            queue: BTreeMap::new(),
            next_seq: 0,
            link_sent: BTreeMap::new(),
            link_delivered: BTreeMap::new(),
            owed: BTreeSet::new(),
            in_session: None,
            crash_pending: None,
            quiet: false,
            bodies: 0,
            oracle: Oracle::default(),
            views: ClientViews::default(),
            watched: None,
            watched_box: None,
            faults: Faults::default(),
            activity: Activity::default(),
            violations: Vec::new(),
            session_errors: Vec::new(),
            trace: Vec::new(),
        };
        for k in 0..world.peers.len() {
            world.register(k)?;
        }
        world.tick(0);
        world.bootstrap();
        Ok(world)
    }

    /// The cluster starts with both users and a few mailboxes and messages everywhere, made
    /// on one peer and copied by sessions, so that writers find something to work on.
    fn bootstrap(&mut self) {
        self.quiet = true;
        for _ in 0..6 {
            self.mail_op_with(0, Some(0));
        }
        for user in USERS {
            for mailbox in &BOXES[1..3] {
                if let Some(s) = self.store(0) {
                    let result = s.create_mailbox(user, mailbox);
                    self.log(format!("p0: create {user}/{mailbox} → {result:?}"));
                }
            }
        }
        for _ in 0..10 {
            self.mail_op_with(0, Some(0));
        }
        for k in 1..self.peers.len() {
            self.session(0, k);
        }
        self.quiet = false;
    }

    /// Runs the whole scenario: the active phase, then settling, then the checks.
    pub fn run(mut self) -> Outcome {
        let trace = format!("settings {:?}", self.settings);
        self.trace.push(trace);
        for _ in 0..self.settings.steps {
            self.step();
        }
        let settled = self.settle();
        self.look();
        if !settled {
            let roots = self.roots();
            self.violations.push(format!(
                "the cluster did not settle within {SETTLE_ROUNDS} rounds: roots {roots:?}"
            ));
        }
        let stores = self.live_stores();
        let view: Vec<(&str, &Store)> = stores.iter().map(|(n, s)| (n.as_str(), &**s)).collect();
        let found = self.oracle.check(&view);
        self.violations.extend(found);
        self.activity.uidvalidity_changes = self.views.uidvalidity_changes;
        self.activity.client_looks = self.views.looks;
        self.activity.full_merges = self.views.full_merges;
        Outcome {
            seed: self.seed,
            settings: self.settings.clone(),
            faults: self.faults.clone(),
            activity: self.activity.clone(),
            violations: std::mem::take(&mut self.violations),
            session_errors: std::mem::take(&mut self.session_errors),
            trace: std::mem::take(&mut self.trace),
        }
    }

    /// The stores of the peers that are up, with their ids.
    fn live_stores(&self) -> Vec<(String, Rc<Store>)> {
        self.peers
            .iter()
            .filter_map(|p| p.store.as_ref().map(|s| (p.id.clone(), Rc::clone(s))))
            .collect()
    }

    fn log(&mut self, line: String) {
        let t = self.now - EPOCH_MS;
        self.trace.push(format!("[{} t={t}] {line}", self.step));
    }

    /// IMAP clients on every peer look at every mailbox; what they must never see is a
    /// violation ([`ClientViews`]).
    fn look(&mut self) {
        let stores = self.live_stores();
        let view: Vec<(&str, &Store)> = stores.iter().map(|(n, s)| (n.as_str(), &**s)).collect();
        let found = self.views.look(&view, &self.oracle);
        // SIM_WATCH=label (with SIM_TRACE): where that message is live, whenever it changes.
        if let Some(label) = std::env::var_os("SIM_WATCH").and_then(|l| l.into_string().ok()) {
            let digest = Digest::of(&msg(&label).bytes);
            let places: Vec<String> = view
                .iter()
                .map(|(n, s)| {
                    let at = super::oracle::live_messages(s)
                        .ok()
                        .and_then(|mut l| l.remove(&digest))
                        .unwrap_or_default();
                    format!("{n}: {at:?}")
                })
                .collect();
            let line = format!("watch {label}: {}", places.join("; "));
            if self.watched.as_ref() != Some(&line) {
                self.watched = Some(line.clone());
                self.log(line);
            }
        }
        // SIM_WATCH_BOX=user/mailbox (with SIM_TRACE): that mailbox's record on every peer
        // (GUID, UIDVALIDITY, UIDNEXT, live messages), whenever it changes.
        if let Some(watch) = std::env::var_os("SIM_WATCH_BOX").and_then(|l| l.into_string().ok()) {
            let (user, mailbox) = watch.split_once('/').unwrap_or((watch.as_str(), "INBOX"));
            let records: Vec<String> = view
                .iter()
                .map(|(n, s)| match s.mailbox(user, mailbox) {
                    Ok(m) => {
                        let live = s.list_messages(user, Some(mailbox)).map_or(0, |l| l.len());
                        format!(
                            "{n}: {} uidvalidity {} uidnext {} live {live}",
                            super::oracle::hex(&m.guid.0),
                            m.uidvalidity,
                            m.uidnext
                        )
                    }
                    Err(e) => format!("{n}: {e}"),
                })
                .collect();
            let line = format!("watch {watch}: {}", records.join("; "));
            if self.watched_box.as_ref() != Some(&line) {
                self.watched_box = Some(line.clone());
                self.log(line);
            }
        }
        for v in found {
            self.violation(v);
        }
    }

    fn violation(&mut self, what: String) {
        self.log(format!("VIOLATION {what}"));
        self.violations.push(what);
    }

    fn store(&self, k: usize) -> Option<Rc<Store>> {
        self.peers[k].store.clone()
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.peers[a].store.is_some()
            && self.peers[b].store.is_some()
            && self.side[a] == self.side[b]
    }

    fn register(&mut self, k: usize) -> Result<(), String> {
        let others: Vec<String> = self.peers[k]
            .configured
            .iter()
            .map(|&j| self.peers[j].url.clone())
            .collect();
        let store = self.store(k).ok_or("register: peer down")?;
        store
            .journal_register_peers(&others, self.settings.journal_bound)
            .map_err(|e| format!("register {}: {e}", self.peers[k].id))
    }

    /// Moves time on and every peer's clock with it (each with its own skew).
    fn tick(&mut self, ms: u64) {
        self.now += ms;
        for p in &self.peers {
            p.clock.store(self.now + p.skew_ms, Ordering::SeqCst);
        }
    }

    /// Two distinct peers, neither removed.
    fn pair(&mut self) -> (usize, usize) {
        let present = self.present();
        let n = present.len();
        let i = self.rng.random_range(0..n);
        let j = (i + self.rng.random_range(1..n)) % n;
        (present[i], present[j])
    }

    /// The peers not removed from the cluster (at least two: a removal leaves two or more).
    fn present(&self) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&k| !self.peers[k].removed)
            .collect()
    }

    /// Peer `k`'s clock (what its store stamps with and its daemon reads).
    fn clock(&self, k: usize) -> u64 {
        self.now + self.peers[k].skew_ms
    }

    /// Every peer that is up and whose purge is due runs the daemon's tombstone rule: the
    /// tombstones older than the retention, forgotten once every configured peer's horizon
    /// is past the time they were first seen due (docs/PROTOCOL.md "Forgetting tombstones").
    fn purge_due(&mut self) {
        for k in 0..self.peers.len() {
            let Some(retention) = self.settings.retention_ms else {
                return;
            };
            let now = self.clock(k);
            if self.peers[k].next_purge_ms > now {
                continue;
            }
            let Some(s) = self.store(k) else { continue };
            self.peers[k].next_purge_ms = now + (retention / 4).max(1);
            let aged = match s.tombstones_older_than(now.saturating_sub(retention)) {
                Ok(aged) => aged,
                Err(e) => {
                    let id = self.peers[k].id.clone();
                    self.violation(format!("error: {id}: tombstones_older_than: {e}"));
                    continue;
                }
            };
            let configured: Vec<usize> = self.peers[k].configured.iter().copied().collect();
            let horizons: Vec<Option<u64>> = configured
                .iter()
                .map(|&j| self.peers[k].horizons[j])
                .collect();
            let decision = self.peers[k].purge.pass(aged, now, &horizons);
            self.activity.purge_passes += 1;
            let waiting = self.peers[k].purge.waiting() as u64;
            self.activity.tombstones_held_back += waiting;
            self.activity.held_back_peak = self.activity.held_back_peak.max(waiting);
            if configured
                .iter()
                .zip(&decision.held_back)
                .any(|(&j, h)| h.tombstones > 0 && self.peers[j].store.is_none())
            {
                self.activity.held_back_for_a_down_peer += 1;
            }
            if decision.forget.is_empty() {
                continue;
            }
            match s.forget_tombstones(&decision.forget) {
                Ok(p) => {
                    self.activity.tombstones_purged += p.tombstones;
                    self.activity.mailbox_tombstones_purged += p.mailbox_tombstones;
                    let line = format!(
                        "purge {}: forgot {} tombstone(s), {} mailbox tombstone(s); {waiting} held back",
                        self.peers[k].id, p.tombstones, p.mailbox_tombstones
                    );
                    self.log(line);
                }
                Err(e) => {
                    let id = self.peers[k].id.clone();
                    self.violation(format!("error: {id}: forget_tombstones: {e}"));
                }
            }
        }
    }

    /// A peer stops for longer than the retention (an outage), then comes back with its
    /// store as it was.
    fn long_outage(&mut self) {
        let present = self.present();
        let k = present[self.aside.random_range(0..present.len())];
        let Some(retention) = self.settings.retention_ms else {
            return;
        };
        if self.peers[k].store.is_none() || self.in_session == Some(k) {
            return;
        }
        let factor = self.aside.random_range(1.2..3.0);
        let down_ms = (retention as f64 * factor) as u64;
        self.peers[k].store = None;
        self.peers[k].down_until = self.step;
        self.peers[k].down_until_ms = self.now + down_ms;
        self.peers[k].down_since_ms = self.now;
        self.faults.long_outages += 1;
        let line = format!("outage {} (down {down_ms} ms)", self.peers[k].id);
        self.log(line);
    }

    /// A peer is taken out of the cluster: stopped, and removed from every other peer's
    /// configuration (each restarts its daemon with the new list, so its purge rule starts
    /// afresh and no longer waits for it). It never comes back with its store
    /// (docs/CONFIG.md). What only it held goes with it: the oracle stops expecting its
    /// appends that no other peer holds, and its writers' expunges that some other peer
    /// holds live.
    fn remove_peer(&mut self) {
        let present = self.present();
        if present.len() <= 2 || self.peers.iter().any(|p| p.removed) {
            return;
        }
        let r = present[self.aside.random_range(0..present.len())];
        // Only while every other peer is up, so that the oracle can see what went with it.
        if self.in_session.is_some()
            || present
                .iter()
                .any(|&k| k != r && self.peers[k].store.is_none())
        {
            return;
        }
        let others: Vec<(String, Rc<Store>)> = present
            .iter()
            .filter(|&&k| k != r)
            .filter_map(|&k| {
                self.peers[k]
                    .store
                    .as_ref()
                    .map(|s| (self.peers[k].id.clone(), Rc::clone(s)))
            })
            .collect();
        let view: Vec<&Store> = others.iter().map(|(_, s)| &**s).collect();
        let id = self.peers[r].id.clone();
        self.oracle.peer_removed(&id, &view);
        drop(view);
        drop(others);
        self.peers[r].store = None;
        self.peers[r].removed = true;
        self.faults.peers_removed += 1;
        self.owed.retain(|&(i, j)| i != r && j != r);
        for k in present.into_iter().filter(|&k| k != r) {
            self.peers[k].configured.remove(&r);
            self.peers[k].purge = Purge::default();
            self.peers[k].horizons = vec![None; self.peers.len()];
            if self.peers[k].store.is_some() {
                if let Err(e) = self.register(k) {
                    self.violation(e);
                }
            }
        }
        self.log(format!("remove {id} from every configuration"));
    }

    /// One step of the active phase (also run between a session's messages).
    fn step(&mut self) {
        self.step += 1;
        let ms = self.rng.random_range(1..=15);
        self.tick(ms);
        self.deliver_due();
        self.restart_due();
        self.purge_due();
        let r = self.rng.random_range(0..100u32);
        let n = self.peers.len();
        match r {
            0..=39 => {
                let k = self.rng.random_range(0..n);
                self.mail_op(k);
            }
            40..=54 => {
                let (i, j) = self.pair();
                self.ship(i, j);
            }
            55..=64 => {
                let k = self.rng.random_range(0..n);
                let max = self.rng.random_range(1..=16);
                self.apply(k, max);
            }
            65..=72 if self.in_session.is_none() => {
                let (i, j) = match self.owed.iter().next().copied() {
                    Some(p) if self.rng.random_bool(0.5) => {
                        self.owed.remove(&p);
                        p
                    }
                    _ => self.pair(),
                };
                self.session(i, j);
            }
            _ => {}
        }
        if self.rng.random_bool(self.settings.crash) {
            let k = self.rng.random_range(0..n);
            self.crash(k);
        }
        if self.rng.random_bool(self.settings.partition) {
            self.partition_or_heal();
        }
        if self.aside.random_bool(self.settings.outage) {
            self.long_outage();
        }
        if self.aside.random_bool(self.settings.removal) {
            self.remove_peer();
        }
        self.look();
    }

    fn partition_or_heal(&mut self) {
        if self.side.iter().all(|s| *s == 0) {
            let n = self.peers.len();
            // A proper, non-empty subset goes to side 1.
            let mask = self.rng.random_range(1..(1u32 << n) - 1);
            self.side = (0..n).map(|k| ((mask >> k) & 1) as u8).collect();
            self.faults.partitions += 1;
            let side = format!("partition {:?}", self.side);
            self.log(side);
        } else {
            self.side = vec![0; self.peers.len()];
            self.log("heal".into());
        }
    }

    fn crash(&mut self, k: usize) {
        if self.peers[k].store.is_none() {
            return;
        }
        if self.in_session == Some(k) {
            // The session holds the store: it ends at its next message, then the crash.
            self.crash_pending = Some(k);
            return;
        }
        self.peers[k].store = None;
        let down = self.rng.random_range(0..=30);
        self.peers[k].down_until = self.step + down;
        self.peers[k].down_until_ms = 0;
        self.peers[k].down_since_ms = self.now;
        self.faults.crashes += 1;
        self.log(format!("crash {} (down {down} steps)", self.peers[k].id));
        if down == 0 {
            self.restart(k);
        }
    }

    fn restart_due(&mut self) {
        for k in 0..self.peers.len() {
            let p = &self.peers[k];
            if p.store.is_none()
                && !p.removed
                && p.down_until <= self.step
                && p.down_until_ms <= self.now
            {
                self.restart(k);
            }
        }
    }

    /// Reopens a crashed peer's store (what redb kept), checks it, and starts it as the
    /// daemon would: peers registered, a check owed with every peer.
    fn restart(&mut self, k: usize) {
        let down = self.now.saturating_sub(self.peers[k].down_since_ms);
        if self.settings.retention_ms.is_some_and(|r| down > r) {
            self.faults.outages_past_retention += 1;
        }
        let n = self.peers.len();
        let p = &mut self.peers[k];
        // The daemon's purge rule lives in memory: it starts afresh.
        p.purge = Purge::default();
        p.horizons = vec![None; n];
        p.next_purge_ms = 0;
        p.incarnation += 1;
        let seed = self
            .seed
            .wrapping_mul(31)
            .wrapping_add(k as u64)
            .wrapping_add(p.incarnation << 32);
        let store = match Store::open(&p.dir) {
            Ok(mut s) => {
                s.simulate_environment(Arc::clone(&p.clock), seed);
                s
            }
            Err(e) => {
                let id = p.id.clone();
                self.violation(format!("error: {id}: cannot reopen after a crash: {e}"));
                return;
            }
        };
        match store.verify() {
            Ok(r) if r.is_ok() => {}
            Ok(r) => {
                let id = self.peers[k].id.clone();
                self.violation(format!(
                    "error: {id}: verify after restart: {:?}",
                    r.problems
                ));
            }
            Err(e) => {
                let id = self.peers[k].id.clone();
                self.violation(format!("error: {id}: verify after restart failed: {e}"));
            }
        }
        self.peers[k].store = Some(Rc::new(store));
        if let Err(e) = self.register(k) {
            self.violation(e);
        }
        let id = self.peers[k].id.clone();
        self.log(format!("restart {id}"));
        let configured: Vec<usize> = self.peers[k].configured.iter().copied().collect();
        for j in configured {
            self.owed.insert((k, j));
        }
    }

    /// Puts a packet on the wire: maybe lost, maybe twice, each copy after its own delay.
    fn send(&mut self, from: usize, to: usize, packet: Packet) {
        if !self.quiet && self.rng.random_bool(self.settings.drop) {
            self.faults.drops += 1;
            return;
        }
        let copy = if !self.quiet && self.rng.random_bool(self.settings.duplicate) {
            self.faults.duplicates += 1;
            Some(match &packet {
                Packet::Batch { bytes, last } => Packet::Batch {
                    bytes: bytes.clone(),
                    last: *last,
                },
                Packet::Ack { acked, last } => Packet::Ack {
                    acked: *acked,
                    last: *last,
                },
                Packet::Round { bytes } => Packet::Round {
                    bytes: bytes.clone(),
                },
            })
        } else {
            None
        };
        for packet in std::iter::once(packet).chain(copy) {
            let delay = if self.quiet {
                0
            } else {
                self.rng.random_range(0..=self.settings.max_delay_ms)
            };
            let sent = self.link_sent.entry((from, to)).or_insert(0);
            *sent += 1;
            let sent = *sent;
            self.next_seq += 1;
            self.queue.insert(
                (self.now + delay, self.next_seq),
                InFlight {
                    from,
                    to,
                    sent,
                    packet,
                },
            );
        }
    }

    fn deliver_due(&mut self) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now && !self.quiet {
                break;
            }
            let packet = entry.remove();
            self.deliver(packet);
        }
    }

    fn deliver(&mut self, p: InFlight) {
        let link = (p.from, p.to);
        let seen = self.link_delivered.entry(link).or_insert(0);
        if p.sent < *seen {
            self.faults.reorders += 1;
        }
        *seen = (*seen).max(p.sent);
        if !self.reachable(p.from, p.to) {
            self.faults.cut_off += 1;
            return;
        }
        match p.packet {
            Packet::Batch { bytes, last } => self.receive(p.from, p.to, &bytes, last),
            Packet::Ack { acked, last } => {
                let Some(s) = self.store(p.to) else { return };
                let url = self.peers[p.from].url.clone();
                if let Err(e) = s.journal_ack(&url, acked.min(last)) {
                    self.violation(format!(
                        "error: {}: journal_ack failed: {e}",
                        self.peers[p.to].id
                    ));
                }
            }
            Packet::Round { bytes } => {
                self.activity.round_replays += 1;
                let _ = self.respond(p.from, p.to, &bytes);
            }
        }
    }

    /// The journal shipper of `i` toward `j`: one batch after the cursor.
    fn ship(&mut self, i: usize, j: usize) {
        let Some(s) = self.store(i) else { return };
        let url = self.peers[j].url.clone();
        let max = self.rng.random_range(1..=self.settings.batch_entries);
        let position = match s.journal_peer(&url) {
            Ok(p) => p,
            Err(e) => {
                self.violation(format!("error: {}: journal_peer: {e}", self.peers[i].id));
                return;
            }
        };
        let batch = match s.journal_batch(&url, max, 64 << 10) {
            Ok(b) => b,
            Err(e) => {
                self.violation(format!("error: {}: journal_batch: {e}", self.peers[i].id));
                return;
            }
        };
        if batch.entries.is_empty() {
            // Records that name nothing shippable any more: move past them (as the daemon).
            if batch.last_seq > position.cursor {
                if let Err(e) = s.journal_ack(&url, batch.last_seq) {
                    self.violation(format!("error: {}: journal_ack: {e}", self.peers[i].id));
                }
            }
            return;
        }
        let last = batch.last_seq;
        let line = format!(
            "ship {}→{} seq {}..={} ({} entries)",
            self.peers[i].id,
            self.peers[j].id,
            batch.first_seq,
            last,
            batch.entries.len()
        );
        self.log(line);
        let bytes = encode_batch(&batch);
        self.send(i, j, Packet::Batch { bytes, last });
    }

    fn receive(&mut self, from: usize, to: usize, bytes: &[u8], last: u64) {
        let Some(s) = self.store(to) else { return };
        let batch = match decode_batch(bytes) {
            Ok(b) => b,
            Err(e) => {
                self.violation(format!(
                    "error: a batch from {} does not decode: {e}",
                    self.peers[from].id
                ));
                return;
            }
        };
        match s.journal_receive(&batch) {
            Ok(acked) => {
                self.activity.batches_received += 1;
                self.send(to, from, Packet::Ack { acked, last });
            }
            Err(e) => {
                self.violation(format!(
                    "error: {}: journal_receive: {e}",
                    self.peers[to].id
                ));
                return;
            }
        }
        drop(s);
        if !self.quiet && self.rng.random_bool(self.settings.crash_after_receive) {
            self.faults.crashes_before_apply += 1;
            self.crash(to);
        }
    }

    /// The applier of `k`: up to `max` inbound entries.
    fn apply(&mut self, k: usize, max: usize) -> u64 {
        let Some(s) = self.store(k) else { return 0 };
        match s.journal_apply_inbound(max) {
            Ok(done) => {
                self.activity.entries_applied += done.applied;
                self.activity.entries_dropped += done.dropped;
                for sender in &done.check_with {
                    if let Some(j) = self.peers.iter().position(|p| &p.id == sender) {
                        self.activity.checks_owed += 1;
                        self.owed.insert((k, j));
                    }
                }
                if done.applied + done.dropped > 0 {
                    let line = format!(
                        "apply {}: {} applied, {} dropped, owes {:?}",
                        self.peers[k].id, done.applied, done.dropped, done.check_with
                    );
                    self.log(line);
                    drop(s);
                    self.look();
                }
                done.remaining
            }
            Err(e) => {
                self.violation(format!(
                    "error: {}: journal_apply_inbound: {e}",
                    self.peers[k].id
                ));
                0
            }
        }
    }

    /// The responder of `j` answers one round of `i`'s. When the round's root equalled its
    /// own, `j`'s tombstone horizon for `i` moves to the time before it read its store (as
    /// the daemon's `roots_equal` hook does).
    fn respond(&mut self, i: usize, j: usize, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let Some(s) = self.store(j) else {
            return Err("the peer is down".into());
        };
        let round = match decode_request(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.violation(format!("error: a session round does not decode: {e}"));
                return Err(e.to_string());
            }
        };
        let at_ms = self.clock(j);
        match answer(&*s, &round) {
            Ok(reply) => {
                let equal = reply
                    .replies
                    .iter()
                    .any(|r| matches!(r, Reply::Root { equal: true, .. }));
                if equal && self.peers[j].configured.contains(&i) {
                    let h = &mut self.peers[j].horizons[i];
                    *h = Some(h.map_or(at_ms, |h| h.max(at_ms)));
                }
                Ok(encode(&reply))
            }
            Err(e) => {
                self.activity.responder_errors += 1;
                if matches!(e, StoreError::Corrupt(_)) {
                    self.violation(format!("error: {}: responder: {e}", self.peers[j].id));
                } else {
                    let line = format!("{} answers an error: {e}", self.peers[j].id);
                    self.log(line);
                }
                Err(e.to_string())
            }
        }
    }

    /// A few steps of the rest of the world, while a session's message is on the way.
    fn meanwhile(&mut self) {
        if self.quiet {
            return;
        }
        let steps = self.rng.random_range(0..=2);
        for _ in 0..steps {
            self.step();
        }
    }

    /// One session round through the network: the request may be lost, delayed (the world
    /// moves on), answered twice (now, and once more later), and the answer lost or delayed.
    fn round(&mut self, i: usize, j: usize, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        self.meanwhile();
        if self.crash_pending == Some(i) {
            return Err("the initiator crashed".into());
        }
        if !self.reachable(i, j) {
            self.faults.cut_off += 1;
            return Err("the peer cannot be reached".into());
        }
        if !self.quiet && self.rng.random_bool(self.settings.drop) {
            self.faults.drops += 1;
            return Err("the request was lost".into());
        }
        if !self.quiet && self.rng.random_bool(self.settings.duplicate) {
            // A copy that reaches the responder again later; its answer goes nowhere.
            self.faults.duplicates += 1;
            let copy = bytes.clone();
            let delay = self.rng.random_range(0..=self.settings.max_delay_ms * 4);
            let sent = self.link_sent.entry((i, j)).or_insert(0);
            *sent += 1;
            let sent = *sent;
            self.next_seq += 1;
            self.queue.insert(
                (self.now + delay, self.next_seq),
                InFlight {
                    from: i,
                    to: j,
                    sent,
                    packet: Packet::Round { bytes: copy },
                },
            );
        }
        let mut reply = self.respond(i, j, &bytes)?;
        if !self.quiet && self.rng.random_bool(self.settings.duplicate) {
            // A retry whose first answer was lost: the responder answers the same round again,
            // and the initiator sees the second answer.
            self.faults.duplicates += 1;
            reply = self.respond(i, j, &bytes)?;
        }
        self.meanwhile();
        if self.crash_pending == Some(i) {
            return Err("the initiator crashed".into());
        }
        if !self.reachable(i, j) {
            self.faults.cut_off += 1;
            return Err("the answer was cut off".into());
        }
        if !self.quiet && self.rng.random_bool(self.settings.drop) {
            self.faults.drops += 1;
            return Err("the answer was lost".into());
        }
        Ok(reply)
    }

    /// A Merkle session from `i` with `j`, as the daemon's checker runs it.
    /// A Merkle session from peer i with peer j; then the oracle notes the mailbox merges it
    /// made (a mailbox revived later sheds its merge tombstone, so they are noted as they
    /// happen).
    fn session(&mut self, i: usize, j: usize) -> Option<bool> {
        let out = self.session_inner(i, j);
        let stores: Vec<Rc<Store>> = self.peers.iter().filter_map(|p| p.store.clone()).collect();
        let view: Vec<&Store> = stores.iter().map(|s| &**s).collect();
        self.oracle.note_merges(&view);
        drop(view);
        drop(stores);
        self.look();
        out
    }

    fn session_inner(&mut self, i: usize, j: usize) -> Option<bool> {
        let local = self.store(i)?;
        // The responder must be up when the session starts.
        self.store(j)?;
        let url = self.peers[j].url.clone();
        let head_at_start = local.journal_head().ok()?;
        // The check's start on the initiator's clock: its tombstone horizon for the peer
        // moves there when the session ends with equal roots.
        let at_ms = self.clock(i);
        let window = self.rng.random_range(0..32u8);
        self.activity.sessions += 1;
        self.in_session = Some(i);
        let result = run(&*local, window, false, |bytes| self.round(i, j, bytes));
        self.in_session = None;
        let (pi, pj) = (self.peers[i].id.clone(), self.peers[j].id.clone());
        let equal = match result {
            Ok(report) => {
                self.activity.renumbered_below_uidnext += report.late_copies;
                self.activity.moves_redone += report.moves_redone;
                if report.equal_after {
                    self.activity.sessions_equal += 1;
                    if self.peers[i].configured.contains(&j) {
                        let h = &mut self.peers[i].horizons[j];
                        *h = Some(h.map_or(at_ms, |h| h.max(at_ms)));
                    }
                    if let Err(e) = local.journal_merkle_done(&url, head_at_start) {
                        self.violation(format!("error: {pi}: journal_merkle_done: {e}"));
                    }
                } else {
                    self.activity.sessions_unequal += 1;
                }
                let line = format!(
                    "session {pi}→{pj}: equal_after {} (copied {}/{}, expunged {}, flags {}, clashes {}, stale {})",
                    report.equal_after,
                    report.copied_to_peer,
                    report.copied_from_peer,
                    report.expunged,
                    report.flag_updates,
                    report.uid_clashes_renumbered,
                    report.stale_mailboxes
                );
                self.log(line);
                Some(report.equal_after)
            }
            Err(DriveError::Transport(e)) => {
                self.activity.sessions_failed += 1;
                self.log(format!("session {pi}→{pj}: transport: {e}"));
                None
            }
            Err(e) => {
                self.activity.sessions_error += 1;
                if matches!(
                    e,
                    DriveError::Session(merkmail::sync::SessionError::Store(StoreError::Corrupt(
                        _
                    )))
                ) {
                    self.violation(format!("error: session {pi}→{pj}: {e}"));
                } else {
                    self.session_errors.push(e.to_string());
                    self.log(format!("session {pi}→{pj}: error: {e}"));
                }
                None
            }
        };
        drop(local);
        if let Some(k) = self.crash_pending.take() {
            self.faults.crashes_mid_session += 1;
            self.crash(k);
        }
        equal
    }

    /// A random mail operation on peer `k`, as a writer would do it; what it was told goes
    /// into the oracle.
    fn mail_op(&mut self, k: usize) {
        self.mail_op_with(k, None);
    }

    /// `kind` forces the operation (0: append).
    fn mail_op_with(&mut self, k: usize, kind: Option<u32>) {
        let Some(s) = self.store(k) else { return };
        // The bootstrap (quiet) makes only the first users.
        let users: &[&str] = if self.quiet { &USERS } else { &SIM_USERS };
        let user = users[self.rng.random_range(0..users.len())];
        if user == LATE_USER && kind.is_none() && self.rng.random_bool(0.15) {
            self.login(k, &s);
            return;
        }
        // Mostly a mailbox the peer has; sometimes any name (creates, refusals).
        let held: Vec<String> = s
            .list_mailboxes(user)
            .map(|l| l.into_iter().map(|m| m.name).collect())
            .unwrap_or_default();
        let pick = self.rng.random_range(0..BOXES.len() + held.len() * 4);
        let mailbox: &str = match pick.checked_sub(BOXES.len()) {
            Some(h) => held[h / 4].as_str(),
            None => BOXES[pick],
        };
        let mailbox = mailbox.to_string();
        let mailbox = mailbox.as_str();
        let id = self.peers[k].id.clone();
        let r = kind.unwrap_or_else(|| self.rng.random_range(0..100u32));
        let (what, result): (String, Result<(), StoreError>) = match r {
            0..=39 => {
                self.bodies += 1;
                let label = format!("s{}-{}", self.seed, self.bodies);
                let m = msg(&label);
                let digest = Digest::of(&m.bytes);
                let result = s.append(user, mailbox, vec![m]).and_then(|out| {
                    let guid = s.mailbox(user, mailbox)?.guid;
                    let uid = out.first().map_or(0, |o| o.uid);
                    self.oracle.appended.insert(
                        digest,
                        Appended {
                            label: label.clone(),
                            user: user.into(),
                            mailbox: mailbox.into(),
                            guid,
                            uid,
                            step: self.step,
                            peer: id.clone(),
                        },
                    );
                    self.activity.appends += 1;
                    Ok((uid, guid))
                });
                (
                    format!("append {label} to {user}/{mailbox} → {result:?}"),
                    result.map(|_| ()),
                )
            }
            40..=59 => {
                let flag = FLAGS[self.rng.random_range(0..FLAGS.len())];
                let on = self.rng.random_bool(0.6);
                let pick = self.rng.random_range(0..1000usize);
                let result = s.list_messages(user, Some(mailbox)).and_then(|l| {
                    let Some(m) = l.get(pick % l.len().max(1)) else {
                        return Ok(None);
                    };
                    let op = if on { FlagOp::Add } else { FlagOp::Remove };
                    let name = FlagName::parse(flag)?;
                    s.set_flags(user, mailbox, m.uid, op, &[name])?;
                    Ok(Some(m.uid))
                });
                (
                    format!("flag {user}/{mailbox} uid {result:?} {flag} {on}"),
                    result.map(|_| ()),
                )
            }
            60..=74 => {
                let pick = self.rng.random_range(0..1000usize);
                let result = s.list_messages(user, Some(mailbox)).and_then(|l| {
                    let Some(m) = l.get(pick % l.len().max(1)) else {
                        return Ok(None);
                    };
                    s.expunge(user, mailbox, &[m.uid])?;
                    self.oracle.expunged.insert(
                        m.record.digest,
                        super::oracle::Expunged {
                            user: user.to_string(),
                            guid: m.guid,
                            uid: m.uid,
                            peer: id.clone(),
                        },
                    );
                    self.activity.expunges += 1;
                    let label = self
                        .oracle
                        .appended
                        .get(&m.record.digest)
                        .map_or("?".to_string(), |a| a.label.clone());
                    Ok(Some((m.uid, label)))
                });
                (
                    format!("expunge {user}/{mailbox} uid {result:?}"),
                    result.map(|_| ()),
                )
            }
            75..=84 => {
                let result = s.create_mailbox(user, mailbox).map(|_| ());
                (format!("create {user}/{mailbox} → {result:?}"), result)
            }
            85..=91 => {
                let to = BOXES[self.rng.random_range(0..BOXES.len())];
                let result = s
                    .rename_mailbox(user, mailbox, to)
                    .and_then(|()| Ok(s.mailbox(user, to)?.guid));
                (
                    format!("rename {user}/{mailbox} to {to} → {result:?}"),
                    result.map(|_| ()),
                )
            }
            92..=96 => {
                let result = s.mailbox(user, mailbox).and_then(|record| {
                    let held = s.list_messages(user, Some(mailbox))?;
                    let guid = record.guid;
                    s.delete_mailbox(user, mailbox)?;
                    self.oracle
                        .deleted_mailboxes
                        .insert((user.to_string(), record.guid), self.step);
                    for m in held {
                        self.oracle.deleted_with_mailbox.insert(m.record.digest);
                    }
                    self.activity.mailbox_deletes += 1;
                    Ok(guid)
                });
                (
                    format!("delete {user}/{mailbox} → {result:?}"),
                    result.map(|_| ()),
                )
            }
            _ => {
                let on = self.rng.random_bool(0.5);
                let result = s.subscribe(user, mailbox, on);
                (
                    format!("subscribe {user}/{mailbox} {on} → {result:?}"),
                    result,
                )
            }
        };
        match &result {
            Ok(()) => self.activity.ops_ok += 1,
            Err(StoreError::Corrupt(e)) => {
                let e = e.clone();
                self.violation(format!("error: {id}: {what}: corrupt: {e}"));
            }
            Err(_) => self.activity.ops_refused += 1,
        }
        self.log(format!("{id}: {what}"));
    }

    /// The late user logs in on peer `k`: its Dovecot makes INBOX, or the folder it shares
    /// a GUID for, with a UIDVALIDITY from its own clock, which the store adopts while the
    /// mailbox is pristine here (`prepare_import`, as a scan does). On a peer that has not
    /// caught up the mailbox is empty, and its UIDVALIDITY (later, so larger) must not win.
    ///
    /// A third of the logins make `Lists` instead, with a GUID this peer's Dovecot makes now
    /// (Dovecot's layout: its clock's time, then its own bytes), as Dovecot autocreates Sent
    /// or Trash: where the peer does not hold `Lists` yet, the same name now has several
    /// GUIDs across peers, some empty, some filled by writers later, and the same-name rule
    /// must keep the one made first everywhere alike.
    fn login(&mut self, k: usize, s: &Store) {
        let clock = self.now + self.peers[k].skew_ms;
        let kind = if self.autocreate {
            self.rng.random_range(0..3)
        } else {
            // As before: the same draws, so that earlier seeds replay.
            2 * u32::from(!self.rng.random_bool(0.5))
        };
        let (mailbox, guid) = match kind {
            0 => (DOVECOT_FOLDER, Some(DOVECOT_FOLDER_GUID)),
            1 => {
                let secs = u32::try_from(clock / 1000).unwrap_or(u32::MAX);
                let nanos = (clock % 1000) as u32 * 1_000_000 + self.rng.random_range(0..1_000_000);
                let mut unique = [0u8; 8];
                unique[0] = k as u8;
                unique[1..].copy_from_slice(&self.rng.random::<[u8; 7]>());
                self.activity.folders_autocreated += 1;
                ("Lists", Some(MailboxGuid::from_time(secs, nanos, unique)))
            }
            _ => ("INBOX", None),
        };
        let folder = mailbox != "INBOX";
        let uidvalidity = u32::try_from(clock / 1000)
            .unwrap_or(u32::MAX)
            .wrapping_add(k as u32 * 101);
        let result = s.prepare_import(LATE_USER, mailbox, Some(uidvalidity), !folder, guid);
        match &result {
            Ok(_) => {
                self.activity.ops_ok += 1;
                self.activity.logins += 1;
            }
            Err(StoreError::Corrupt(e)) => {
                let what = format!("error: {}: login: corrupt: {e}", self.peers[k].id);
                self.violation(what);
            }
            Err(_) => self.activity.ops_refused += 1,
        }
        let line = format!(
            "{}: login {LATE_USER}/{mailbox} (UIDVALIDITY {uidvalidity}) → {result:?}",
            self.peers[k].id
        );
        self.log(line);
    }

    fn roots(&self) -> Vec<(String, String)> {
        self.peers
            .iter()
            .filter(|p| !p.removed)
            .map(|p| {
                let root = p
                    .store
                    .as_ref()
                    .and_then(|s| s.root().ok())
                    .map_or("down".into(), |r| super::oracle::hex(&r.hash.0));
                (p.id.clone(), root)
            })
            .collect()
    }

    /// Heals the network, restarts every peer, delivers what is in flight, then repeats
    /// "ship every journal, apply everything, a session between every pair" until nothing
    /// moves (bounded). Returns whether the cluster settled.
    fn settle(&mut self) -> bool {
        self.quiet = true;
        self.log("settle".into());
        self.side = vec![0; self.peers.len()];
        for k in 0..self.peers.len() {
            if self.peers[k].store.is_none() && !self.peers[k].removed {
                self.restart(k);
            }
        }
        self.deliver_due();
        let n = self.peers.len();
        let present = self.present();
        for _ in 0..SETTLE_ROUNDS {
            self.activity.settle_rounds += 1;
            self.tick(1_000);
            for &i in &present {
                for &j in &present {
                    if i == j {
                        continue;
                    }
                    for _ in 0..1_000 {
                        let before = self
                            .store(i)
                            .and_then(|s| s.journal_peer(&self.peers[j].url).ok());
                        self.ship(i, j);
                        self.deliver_due();
                        let after = self
                            .store(i)
                            .and_then(|s| s.journal_peer(&self.peers[j].url).ok());
                        if before.map(|p| p.cursor) == after.map(|p| p.cursor) {
                            break;
                        }
                    }
                }
            }
            for k in 0..n {
                for _ in 0..1_000 {
                    if self.apply(k, 64) == 0 {
                        break;
                    }
                }
            }
            let owed = std::mem::take(&mut self.owed);
            for (i, j) in owed {
                self.session(i, j);
            }
            for (x, &i) in present.iter().enumerate() {
                for &j in &present[x + 1..] {
                    self.session(i, j);
                }
            }
            self.look();
            if self.settled() {
                return true;
            }
        }
        false
    }

    fn settled(&self) -> bool {
        let roots = self.roots();
        if roots.windows(2).any(|w| w[0].1 != w[1].1) || !self.queue.is_empty() {
            return false;
        }
        self.peers.iter().filter(|p| !p.removed).all(|p| {
            p.store.as_ref().is_some_and(|s| {
                s.journal_peers()
                    .is_ok_and(|peers| peers.iter().all(|(_, j)| j.depth == 0))
                    && s.journal_senders()
                        .is_ok_and(|senders| senders.iter().all(|(_, j)| j.pending == 0))
            })
        })
    }
}
