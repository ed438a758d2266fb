//! Crash loops with the real binary. Two `merkmail serve` processes on 127.0.0.1 (A and B,
//! peers of each other); at every kill point one of them (or a `merkmail import-maildir`) is
//! killed with SIGKILL at a random moment while it imports, takes writes, ships its journal,
//! applies the peer's journal, or reconciles after its journal overflowed. Then:
//!
//! - `merkmail verify` passes on the killed node's store before anything opens it again (the
//!   tree matches the records, counters and body references add up: nothing half-stored);
//! - the node starts again and the pair converges (bounded);
//! - every write that was acknowledged holds on both nodes: each message whose append was
//!   answered 2xx is there exactly once, each acknowledged expunge is gone, each
//!   acknowledged flag is set; no message exists that nobody tried to append; a killed import
//!   run again finishes with every message exactly once.
//!
//! `cargo test --test crash_loop` runs a handful of kill points (one of each kind);
//! `scripts/crash-loop --kills N [--seed S]` runs hundreds (`CRASH_KILLS`, `CRASH_SEED`,
//! test profile). A failure prints the seed and the kill point; the same seed replays the
//! same choices (the moments are real time, so the state killed may differ a little).

mod common;

use common::cluster::{self, body, finish, spawn_writer, Ledger};
use common::node::{self, Node};
use common::{command, run, scratch_dir, ChildGuard};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(60);
/// Past this many unshipped entries a node drops its journal for the peer: bursts larger than
/// this while the peer is down make the restart a Merkle reconciliation.
const JOURNAL_BOUND: usize = 40;
/// Messages in a Maildir imported (and killed) at an import kill point.
const IMPORT_N: usize = 3_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `import-maildir` into a stopped node, killed; run again, it finishes.
    Import,
    /// Writes on the node being killed.
    Writes,
    /// Writes on A while its journal ships to B; A killed.
    Shipping,
    /// B down, a backlog within the journal bound written on A; B started and killed while it
    /// receives and applies it.
    Applying,
    /// B down, a backlog past the journal bound on A (overflow); B started and one of the two
    /// killed while they reconcile.
    Reconciling,
}

const KINDS: [Kind; 5] = [
    Kind::Import,
    Kind::Writes,
    Kind::Shipping,
    Kind::Applying,
    Kind::Reconciling,
];

struct Loop {
    _root: tempfile::TempDir,
    nodes: [Node; 2],
    ledger: Arc<Mutex<Ledger>>,
    users: BTreeSet<String>,
    maildirs: PathBuf,
    rng: StdRng,
    imported: BTreeMap<String, BTreeSet<String>>,
    stats: Stats,
}

/// Where the import kills landed (from what the second run found already there).
#[derive(Debug, Default)]
struct Stats {
    import_none: usize,
    import_partial: usize,
    import_whole: usize,
}

impl Loop {
    fn new(seed: u64) -> Loop {
        let root = scratch_dir();
        let (pa, pb) = (common::free_port(), common::free_port());
        let extra = format!(
            "check_interval_s = 5\nbackoff_max_s = 1\njournal_bound = {JOURNAL_BOUND}\n\
             journal_batch = 16"
        );
        let setup = cluster::setup();
        let mut a = Node::new(root.path(), "a", pa, &[pb], &setup, &extra);
        let mut b = Node::new(root.path(), "b", pb, &[pa], &setup, &extra);
        for n in [&a, &b] {
            n.init();
        }
        a.start();
        b.start();
        let maildirs = root.path().join("maildirs");
        Loop {
            nodes: [a, b],
            _root: root,
            ledger: Arc::new(Mutex::new(Ledger::default())),
            users: BTreeSet::new(),
            maildirs,
            rng: StdRng::seed_from_u64(seed),
            imported: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    /// A moment to kill at: up to `max_ms` from now.
    fn pause(&mut self, max_ms: u64) {
        let ms = self.rng.random_range(0..=max_ms);
        std::thread::sleep(Duration::from_millis(ms));
    }

    fn user(&mut self, point: usize) -> String {
        let user = format!("crash{point:04}");
        self.users.insert(user.clone());
        user
    }

    fn kill_point(&mut self, point: usize, kind: Kind) {
        let label = format!("kill point {point} ({kind:?})");
        let user = self.user(point);
        let seed: u64 = self.rng.random();
        match kind {
            Kind::Import => {
                let victim = self.rng.random_range(0..2);
                let dir = self.maildir(&user, IMPORT_N);
                let node = &mut self.nodes[victim];
                node.kill_and_verify(&label);
                let data = node.dir.display().to_string();
                let maildir = dir.display().to_string();
                let args = ["import-maildir", "-q", "--data", &data, &user, &maildir];
                let mut cmd = command(args);
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                let import = ChildGuard::spawn(cmd);
                let ms = self.rng.random_range(0..=500);
                std::thread::sleep(Duration::from_millis(ms));
                let _ = import.kill();
                let node = &mut self.nodes[victim];
                node.assert_verifies(&label);
                // Run again: it must finish, importing nothing twice.
                let again = run(&args, None).ok();
                let said = format!("{}{}", again.stdout_str(), again.stderr);
                let present = said
                    .split("; ")
                    .find_map(|part| part.strip_suffix(" already present"))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or_else(|| panic!("{label}: unexpected import summary {said:?}"));
                self.stats.import_partial += usize::from(present > 0 && present < IMPORT_N);
                self.stats.import_none += usize::from(present == 0);
                self.stats.import_whole += usize::from(present == IMPORT_N);
                node.assert_verifies(&label);
                node.start();
            }
            Kind::Writes => {
                let victim = self.rng.random_range(0..2);
                let w = spawn_writer(&self.nodes[victim], &user, &user, seed, &self.ledger, 400);
                self.pause(1500);
                self.nodes[victim].kill_and_verify(&label);
                finish(w);
                self.nodes[victim].start();
            }
            Kind::Shipping => {
                let w = spawn_writer(&self.nodes[0], &user, &user, seed, &self.ledger, 400);
                self.pause(1200);
                self.nodes[0].kill_and_verify(&label);
                finish(w);
                self.nodes[0].start();
            }
            Kind::Applying | Kind::Reconciling => {
                let writes = if kind == Kind::Applying {
                    JOURNAL_BOUND / 2
                } else {
                    JOURNAL_BOUND * 3
                };
                self.nodes[1].kill_and_verify(&label);
                let w = spawn_writer(&self.nodes[0], &user, &user, seed, &self.ledger, writes);
                let _ = w.1.join();
                self.nodes[1].start();
                let victim = if kind == Kind::Applying {
                    1
                } else {
                    self.rng.random_range(0..2)
                };
                self.pause(if kind == Kind::Applying { 150 } else { 300 });
                self.nodes[victim].kill_and_verify(&label);
                self.nodes[victim].start();
            }
        }
        self.converge(&label);
        // The users this kill point wrote to; every user now and then and at the end.
        let all = point % 25 == 24;
        let users = if all {
            self.users.clone()
        } else {
            BTreeSet::from([user])
        };
        self.check(&label, &users);
    }

    /// A Maildir of `n` messages for `user` (their md5s are remembered for the check).
    fn maildir(&mut self, user: &str, n: usize) -> PathBuf {
        let dir = self.maildirs.join(user);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("maildir");
        }
        let mut md5s = BTreeSet::new();
        for i in 0..n {
            let b = body(&format!("{user}-import-{i}"));
            md5s.insert(common::md5_hex(&b));
            let name = format!("{}.M{i}P1.crash:2,S", 1_700_000_000 + i);
            std::fs::write(dir.join("cur").join(name), &b).expect("write message");
        }
        self.imported.insert(user.to_string(), md5s);
        dir
    }

    #[track_caller]
    fn converge(&self, label: &str) {
        node::converge(&[&self.nodes[0], &self.nodes[1]], CONVERGE, label);
    }

    #[track_caller]
    fn check(&self, label: &str, users: &BTreeSet<String>) {
        let ledger = self.ledger.lock().expect("ledger");
        let nodes = [&self.nodes[0], &self.nodes[1]];
        cluster::check(&ledger, &nodes, users, &self.imported, label);
    }
}

/// Runs `kills` kill points, cycling through the kinds in a seeded order.
fn crash_loop(seed: u64, kills: usize) -> BTreeMap<&'static str, usize> {
    eprintln!("crash loop: seed {seed}, {kills} kill points (replay: CRASH_SEED={seed})");
    let mut l = Loop::new(seed);
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let started = Instant::now();
    for point in 0..kills {
        // Every kind once in the first five points, then at random.
        let kind = match KINDS.get(point) {
            Some(kind) => *kind,
            None => KINDS[l.rng.random_range(0..KINDS.len())],
        };
        l.kill_point(point, kind);
        if point + 1 == kills {
            let users = l.users.clone();
            l.check(&format!("after kill point {point}"), &users);
        }
        *counts
            .entry(match kind {
                Kind::Import => "import",
                Kind::Writes => "writes",
                Kind::Shipping => "shipping",
                Kind::Applying => "applying",
                Kind::Reconciling => "reconciling",
            })
            .or_default() += 1;
        if (point + 1) % 10 == 0 {
            eprintln!(
                "crash loop: {} kill points survived in {:.0?}",
                point + 1,
                started.elapsed()
            );
        }
    }
    let ledger = l.ledger.lock().expect("ledger");
    eprintln!(
        "crash loop: seed {seed}: {kills} kill points survived ({counts:?}); {} appends \
         acknowledged of {} tried, {} expunges, {} flags; every one held",
        ledger.appended.len(),
        ledger.tried.len(),
        ledger.expunged.len(),
        ledger.seen.len()
    );
    eprintln!("crash loop: import kills: {:?}", l.stats);
    counts
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn every_kind_of_kill_point_once() {
    let counts = crash_loop(env_or("CRASH_SEED", 1), KINDS.len());
    assert_eq!(counts.values().sum::<usize>(), KINDS.len());
    assert_eq!(counts.len(), KINDS.len(), "{counts:?}");
}

/// `scripts/crash-loop` runs this with CRASH_KILLS in the hundreds.
#[test]
#[ignore]
fn many_kill_points() {
    let kills = env_or("CRASH_KILLS", 200) as usize;
    let counts = crash_loop(env_or("CRASH_SEED", 1), kills);
    assert_eq!(counts.values().sum::<usize>(), kills);
}
