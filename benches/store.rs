//! Benchmarks behind docs/PERFORMANCE.md: append throughput with and without the tree, one
//! flag change's tree update at a million messages, and opening stores of growing size.
//!
//! scripts/bench-core runs this binary several times and prints the medians. Run as
//! `store task <name> ...` it does a one-off job instead of running criterion (see `task`):
//! build the fixtures, write a Maildir, append 100 000 messages for `/usr/bin/time`, or take a
//! paired measurement. Paired tasks alternate the two configurations operation by operation,
//! so that load from other processes, and a disk whose latency changes from one second to the
//! next, hit both alike; they print one `key=value` line for the script to collect.
//!
//! Large stores are built once and cached under `target/bench-fixtures/` (or
//! `$MERKMAIL_BENCH_FIXTURES`); a store counts as built once its `complete` marker exists and
//! it opens with the expected number of messages.

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use merkmail::model::{inbox_guid, FlagName, FlagOp, MailboxGuid};
use merkmail::store::{NewMessage, Store, DB_FILE, FORMAT_VERSION};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

// ---------------------------------------------------------------------------------------------
// Message generators

/// A deterministic pseudo-random sequence (SplitMix64): the same picks on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A message of exactly `size` bytes whose headers make it unique (bodies are stored once per
/// digest, so identical bodies would measure deduplication instead of storage).
fn message(seq: u64, size: usize) -> Vec<u8> {
    let mut out = format!(
        "From: sender{seq}@example.org\r\nTo: rcpt@example.net\r\nSubject: benchmark message \
         {seq}\r\nMessage-ID: <{seq}.bench@example.org>\r\nDate: Mon, 1 Jan 2024 00:00:00 \
         +0000\r\n\r\n"
    )
    .into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    while out.len() < size {
        let take = line.len().min(size - out.len());
        out.extend_from_slice(&line[..take]);
    }
    out
}

fn new_message(seq: u64, size: usize) -> NewMessage {
    NewMessage {
        bytes: message(seq, size),
        internal_date: 1_704_067_200,
        ..NewMessage::default()
    }
}

/// Body size of fixture messages: small, so that a million of them build quickly.
const SMALL: usize = 256;
/// Body size of the append benchmark's messages.
const APPEND_SIZE: usize = 4096;

fn user_name(i: usize) -> String {
    format!("user{i:04}")
}

fn mailbox_name(j: usize) -> String {
    if j == 0 {
        "INBOX".to_string()
    } else {
        format!("Folder{j}")
    }
}

fn seen() -> FlagName {
    FlagName::parse("\\Seen").expect("a system flag")
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A store of `users` × `mailboxes` × `per_mailbox` small messages.
#[derive(Clone, Copy)]
struct Shape {
    users: usize,
    mailboxes: usize,
    per_mailbox: usize,
}

const SHAPE_10K: Shape = Shape {
    users: 10,
    mailboxes: 10,
    per_mailbox: 100,
};
const SHAPE_100K: Shape = Shape {
    users: 100,
    mailboxes: 10,
    per_mailbox: 100,
};
const SHAPE_1M: Shape = Shape {
    users: 1000,
    mailboxes: 10,
    per_mailbox: 100,
};

impl Shape {
    fn messages(&self) -> usize {
        self.users * self.mailboxes * self.per_mailbox
    }

    fn label(&self) -> String {
        match self.messages() {
            n if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}m", n / 1_000_000),
            n if n.is_multiple_of(1000) => format!("{}k", n / 1000),
            n => n.to_string(),
        }
    }

    fn dir(&self) -> PathBuf {
        // The format version is in the name: a store of another format is another fixture.
        fixtures_root().join(format!(
            "store-v{FORMAT_VERSION}-{}u-{}m-{}",
            self.users, self.mailboxes, self.per_mailbox
        ))
    }
}

/// target/bench-fixtures, found from this executable's path (target/release/deps/store-…).
fn fixtures_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MERKMAIL_BENCH_FIXTURES") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the bench knows its own path");
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("bench-fixtures"))
        .unwrap_or_else(|| PathBuf::from("target/bench-fixtures"))
}

/// The cached store of this shape, built first if missing or half-built.
fn fixture(shape: Shape) -> Result<PathBuf, Error> {
    let dir = shape.dir();
    let marker = dir.join("complete");
    if marker.exists() {
        // A fixture written by an older build of the same format version may still not open
        // (a table's type changed): then it is rebuilt.
        match Store::open(&dir).and_then(|s| s.counters()) {
            Ok(c) if c.messages == shape.messages() as u64 => return Ok(dir),
            Ok(c) => eprintln!(
                "fixture {} holds {} messages; rebuilding",
                dir.display(),
                c.messages
            ),
            Err(e) => eprintln!("fixture {} does not open ({e}); rebuilding", dir.display()),
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    eprintln!(
        "building fixture of {} messages in {} (once; cached)",
        shape.messages(),
        dir.display()
    );
    let started = Instant::now();
    let store = Store::init(&dir, "bench")?;
    let mut seq = 0u64;
    for u in 0..shape.users {
        let user = user_name(u);
        for j in 0..shape.mailboxes {
            let name = mailbox_name(j);
            if j > 0 {
                store.create_mailbox(&user, &name)?;
            }
            let batch = (0..shape.per_mailbox)
                .map(|_| {
                    seq += 1;
                    new_message(seq, SMALL)
                })
                .collect();
            store.append(&user, &name, batch)?;
        }
        if (u + 1).is_multiple_of(100) {
            eprintln!("  {} users, {:.0?}", u + 1, started.elapsed());
        }
    }
    let counters = store.counters()?;
    drop(store);
    if counters.messages != shape.messages() as u64 {
        return Err(format!("fixture holds {} messages", counters.messages).into());
    }
    std::fs::write(
        &marker,
        format!(
            "{} messages, built in {:.1?}\n",
            shape.messages(),
            started.elapsed()
        ),
    )?;
    eprintln!("  built in {:.1?}", started.elapsed());
    Ok(dir)
}

/// One message of a fixture, with its mailbox's GUID for direct tree access.
struct Target {
    user: String,
    mailbox: String,
    guid: MailboxGuid,
    uid: u32,
}

/// `n` messages of the fixture picked at random (the same ones every run).
fn pick_targets(store: &Store, shape: Shape, n: usize) -> Result<Vec<Target>, Error> {
    let mut rng = Rng(0x5eed);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let user = user_name(rng.below(shape.users));
        let mailbox = mailbox_name(rng.below(shape.mailboxes));
        let guid = if mailbox == "INBOX" {
            inbox_guid(&user)
        } else {
            store.mailbox(&user, &mailbox)?.guid
        };
        let uid = 1 + rng.below(shape.per_mailbox) as u32;
        out.push(Target {
            user,
            mailbox,
            guid,
            uid,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Figure 1: appends per second, with and without the tree

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Disk,
    Memory,
}

/// Users and mailboxes the append benchmark spreads its batches over, round robin.
const APPEND_USERS: usize = 4;
const APPEND_MAILBOXES: usize = 2;
/// A fresh store is started (untimed) once this many messages are held, so that every
/// configuration measures stores of the same range of sizes and the disk does not fill up.
const APPEND_RESTART_AFTER: u64 = 40_000;

struct AppendRig {
    backend: Backend,
    tree: bool,
    store: Option<Store>,
    dir: Option<tempfile::TempDir>,
    held: u64,
    seq: u64,
    turn: usize,
}

impl AppendRig {
    fn new(backend: Backend, tree: bool) -> AppendRig {
        AppendRig {
            backend,
            tree,
            store: None,
            dir: None,
            held: 0,
            seq: 0,
            turn: 0,
        }
    }

    fn restart(&mut self) -> Result<(), Error> {
        self.store = None;
        self.dir = None;
        let mut store = match self.backend {
            Backend::Disk => {
                let dir = tempfile::tempdir()?;
                let store = Store::init(dir.path(), "bench")?;
                self.dir = Some(dir);
                store
            }
            Backend::Memory => Store::in_memory("bench")?,
        };
        store.set_tree_maintenance_for_bench(self.tree);
        for u in 0..APPEND_USERS {
            for j in 1..APPEND_MAILBOXES {
                store.create_mailbox(&user_name(u), &mailbox_name(j))?;
            }
        }
        self.store = Some(store);
        self.held = 0;
        Ok(())
    }

    /// Appends `iters` batches, each one transaction, and returns the time spent in `append`.
    fn run(&mut self, iters: u64, batch: usize) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if self.store.is_none() || self.held >= APPEND_RESTART_AFTER {
                self.restart().expect("a fresh store");
            }
            let messages: Vec<NewMessage> = (0..batch)
                .map(|_| {
                    self.seq += 1;
                    new_message(self.seq, APPEND_SIZE)
                })
                .collect();
            let target = self.turn % (APPEND_USERS * APPEND_MAILBOXES);
            self.turn += 1;
            let user = user_name(target / APPEND_MAILBOXES);
            let mailbox = mailbox_name(target % APPEND_MAILBOXES);
            let store = self.store.as_ref().expect("started above");
            let started = Instant::now();
            let outcomes = store.append(&user, &mailbox, messages).expect("append");
            total += started.elapsed();
            black_box(outcomes);
            self.held += batch as u64;
        }
        total
    }
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(6));
    for batch in [100usize, 1000] {
        group.throughput(Throughput::Elements(batch as u64));
        for (backend, backend_name) in [(Backend::Disk, "disk"), (Backend::Memory, "memory")] {
            for (tree, tree_name) in [(true, "tree"), (false, "notree")] {
                let id = BenchmarkId::new(format!("{backend_name}/{tree_name}"), batch);
                let mut rig = AppendRig::new(backend, tree);
                group.bench_function(id, |b| b.iter_custom(|iters| rig.run(iters, batch)));
            }
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Figure 2: one flag change at a million messages

/// How many random messages the flag benchmarks cycle through.
const FLAG_TARGETS: usize = 4096;

/// Times `set_flags` alone: each call toggles \Seen on a random message in its own
/// transaction (committed, fsynced). Reading the current state to pick the toggle is untimed.
fn time_flag_changes(store: &Store, targets: &[Target], next: &mut usize, iters: u64) -> Duration {
    let flag = [seen()];
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = &targets[*next % targets.len()];
        *next += 1;
        let set = store
            .message(&t.user, &t.mailbox, t.uid)
            .expect("target exists")
            .record
            .flags
            .is_set("\\Seen");
        let op = if set { FlagOp::Remove } else { FlagOp::Add };
        let started = Instant::now();
        let flags = store
            .set_flags(&t.user, &t.mailbox, t.uid, op, &flag)
            .expect("set_flags");
        total += started.elapsed();
        black_box(flags);
    }
    total
}

/// Times the tree update for one changed message at a time, through the store's bench hook:
/// a real write transaction on the store file, the message rewritten untimed, the flush
/// timed, the transaction aborted (the fixture stays as it was).
fn time_tree_updates(store: &Store, targets: &[Target], next: &mut usize, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = &targets[*next % targets.len()];
        *next += 1;
        let times = store
            .time_tree_update_for_bench(&t.user, t.guid, t.uid, &[u8::MAX])
            .expect("tree update");
        total += times.iter().sum::<Duration>();
    }
    total
}

/// `Dirty::flush` visits nodes by rank (merkle/update.rs, `rank`): UID levels 0..=7, then the
/// mailbox (8), the user (9) and the top levels from the user buckets up to the root (10..=13).
/// `flush_through` stops after a given rank, which lets the breakdown time each stretch of the
/// path separately. The stretches, with the highest rank each one ends at:
const STRETCHES: [(&str, u8); 5] = [
    ("bucket_us", 0),
    ("uid_level1_us", 1),
    ("uid_levels2to7_us", 7),
    ("mailbox_user_us", 9),
    ("top4_us", u8::MAX),
];

/// Where one flag change's tree update spends its time at a million messages: like
/// `time_tree_updates`, but timing each stretch of the path from the bucket to the root.
/// Prints the median of each stretch and of their sum, in microseconds.
fn tree_breakdown(rounds: usize) -> Result<(), Error> {
    let shape = SHAPE_1M;
    let dir = fixture(shape)?;
    let store = Store::open(&dir)?;
    let targets = pick_targets(&store, shape, FLAG_TARGETS)?;
    let stops: Vec<u8> = STRETCHES.iter().map(|(_, rank)| *rank).collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); STRETCHES.len() + 1];
    for i in 0..rounds {
        let t = &targets[i % targets.len()];
        let stretch = store.time_tree_update_for_bench(&t.user, t.guid, t.uid, &stops)?;
        let mut total = 0.0;
        for (n, d) in stretch.iter().enumerate() {
            let us = d.as_secs_f64() * 1e6;
            times[n].push(us);
            total += us;
        }
        times[STRETCHES.len()].push(total);
    }
    let mut line = format!("tree-breakdown rounds={rounds}");
    for (n, (name, _)) in STRETCHES.iter().enumerate() {
        line += &format!(" {name}={:.1}", median(times[n].clone()));
    }
    line += &format!(" total_us={:.1}", median(times[STRETCHES.len()].clone()));
    println!("{line}");
    Ok(())
}

fn bench_flag_change(c: &mut Criterion) {
    let shape = SHAPE_1M;
    let mut group = c.benchmark_group("flag_change_1m");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    // Setup happens inside the closures, which criterion calls only for benchmarks that pass
    // the command line's filter; each state is dropped before the next one opens the file.
    let mut next = 0;

    let mut state: Option<(Store, Vec<Target>)> = None;
    group.bench_function("total/disk/tree", |b| {
        let (store, targets) = state.get_or_insert_with(|| {
            let store = Store::open(&fixture(shape).expect("fixture")).expect("open fixture");
            let targets = pick_targets(&store, shape, FLAG_TARGETS).expect("targets");
            (store, targets)
        });
        b.iter_custom(|iters| time_flag_changes(store, targets, &mut next, iters))
    });
    drop(state);

    // Tree maintenance off leaves a stale tree behind, so this runs on a throwaway copy.
    let mut state: Option<(Store, Vec<Target>, tempfile::TempDir)> = None;
    group.bench_function("total/disk/notree", |b| {
        let (store, targets, _scratch) = state.get_or_insert_with(|| {
            let dir = fixture(shape).expect("fixture");
            let scratch = tempfile::tempdir_in(fixtures_root()).expect("scratch dir");
            std::fs::copy(dir.join(DB_FILE), scratch.path().join(DB_FILE)).expect("copy");
            let mut store = Store::open(scratch.path()).expect("open copy");
            store.set_tree_maintenance_for_bench(false);
            let targets = pick_targets(&store, shape, FLAG_TARGETS).expect("targets");
            (store, targets, scratch)
        });
        b.iter_custom(|iters| time_flag_changes(store, targets, &mut next, iters))
    });
    drop(state);

    let mut state: Option<(Store, Vec<Target>)> = None;
    group.bench_function("tree_update/flush", |b| {
        let (store, targets) = state.get_or_insert_with(|| {
            let store = Store::open(&fixture(shape).expect("fixture")).expect("open fixture");
            let targets = pick_targets(&store, shape, FLAG_TARGETS).expect("targets");
            (store, targets)
        });
        b.iter_custom(|iters| time_tree_updates(store, targets, &mut next, iters))
    });
    drop(state);
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Figure 3: opening a store

fn bench_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for shape in [SHAPE_10K, SHAPE_100K, SHAPE_1M] {
        let mut dir: Option<PathBuf> = None;
        group.bench_function(shape.label(), |b| {
            let dir = dir.get_or_insert_with(|| fixture(shape).expect("fixture"));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let store = Store::open(dir).expect("open");
                    total += started.elapsed();
                    // Closing is not part of opening.
                    drop(black_box(store));
                }
                total
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// One-off tasks for scripts/bench-core

/// Messages in the memory figure, spread evenly over INBOX and nine folders of one user.
const IMPORT_MESSAGES: usize = 100_000;
const IMPORT_MAILBOXES: usize = 10;
/// Batch size of the library stand-in for the memory figure: import-maildir's batch size.
const IMPORT_BATCH: usize = 500;

/// Writes a Maildir++ of `IMPORT_MESSAGES` small messages: INBOX in cur/ and new/, folders
/// in .FolderN/. Every fourth message is marked seen.
fn make_maildir(root: &Path) -> Result<(), Error> {
    let per = IMPORT_MESSAGES / IMPORT_MAILBOXES;
    let mut seq = 0u64;
    for j in 0..IMPORT_MAILBOXES {
        let base = if j == 0 {
            root.to_path_buf()
        } else {
            root.join(format!(".{}", mailbox_name(j)))
        };
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(base.join(sub))?;
        }
        if j > 0 {
            std::fs::write(base.join("maildirfolder"), b"")?;
        }
        for i in 0..per {
            seq += 1;
            let stem = format!("{}.M{seq}P1.bench", 1_704_067_200 + seq);
            let path = if i % 10 == 9 {
                base.join("new").join(stem)
            } else {
                let flags = if seq.is_multiple_of(4) { "S" } else { "" };
                base.join("cur").join(format!("{stem}:2,{flags}"))
            };
            std::fs::write(path, message(seq, SMALL))?;
        }
    }
    Ok(())
}

/// Appends the same 100 000 messages through the library in batches, as `merkmail
/// import-maildir` does: the library's share of the import's memory, without the Maildir scan.
fn append_100k(dir: &Path) -> Result<(), Error> {
    let started = Instant::now();
    let store = Store::init(dir, "bench")?;
    let user = user_name(0);
    let per = IMPORT_MESSAGES / IMPORT_MAILBOXES;
    let mut seq = 0u64;
    for j in 0..IMPORT_MAILBOXES {
        let name = mailbox_name(j);
        if j > 0 {
            store.create_mailbox(&user, &name)?;
        }
        for _ in 0..per / IMPORT_BATCH {
            let batch = (0..IMPORT_BATCH)
                .map(|_| {
                    seq += 1;
                    new_message(seq, SMALL)
                })
                .collect();
            store.append(&user, &name, batch)?;
        }
    }
    eprintln!(
        "appended {} messages in {:.2?}",
        store.counters()?.messages,
        started.elapsed()
    );
    Ok(())
}

/// How peak memory grows with the amount appended: appends `count` messages of `size` bytes
/// to one mailbox in batches of `IMPORT_BATCH`, and every 100 000 messages prints the store
/// file's size and the process's peak RSS so far (VmHWM).
fn append_growth(count: usize, size: usize, dir: &Path) -> Result<(), Error> {
    let store = Store::init(dir, "bench")?;
    let user = user_name(0);
    let mut seq = 0u64;
    while (seq as usize) < count {
        let batch = (0..IMPORT_BATCH)
            .map(|_| {
                seq += 1;
                new_message(seq, size)
            })
            .collect();
        store.append(&user, "INBOX", batch)?;
        if (seq as usize).is_multiple_of(100_000) || seq as usize >= count {
            let status = std::fs::read_to_string("/proc/self/status")?;
            let peak_kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let file = std::fs::metadata(dir.join(DB_FILE))?.len();
            println!(
                "append-growth size={size} messages={seq} file_mib={:.1} peak_rss_mib={:.1}",
                file as f64 / 1048576.0,
                peak_kib as f64 / 1024.0
            );
        }
    }
    Ok(())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Paired measurement of the tree's share of appends: batches go alternately (ABBA) to a store
/// with the tree and one without, so that load from other processes hits both alike. Prints
/// one line: the median batch time of each and the overhead of the tree in percent.
fn ab_append(backend: Backend, batch: usize, rounds: usize) -> Result<(), Error> {
    let mut tree = AppendRig::new(backend, true);
    let mut plain = AppendRig::new(backend, false);
    // One untimed batch each, so that both stores exist before timing starts.
    tree.run(1, batch);
    plain.run(1, batch);
    let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round.is_multiple_of(2) {
            let a = tree.run(1, batch);
            (a, plain.run(1, batch))
        } else {
            let b = plain.run(1, batch);
            (tree.run(1, batch), b)
        };
        with.push(a.as_secs_f64() * 1e3);
        without.push(b.as_secs_f64() * 1e3);
        ratios.push(a.as_secs_f64() / b.as_secs_f64());
    }
    let (with, without) = (median(with), median(without));
    println!(
        "ab-append backend={} batch={batch} rounds={rounds} tree_ms={with:.3} notree_ms={without:.3} \
         tree_msgs_per_s={:.0} notree_msgs_per_s={:.0} overhead_pct={:.1} paired_overhead_pct={:.1}",
        if backend == Backend::Disk { "disk" } else { "memory" },
        batch as f64 / with * 1e3,
        batch as f64 / without * 1e3,
        (with / without - 1.0) * 100.0,
        (median(ratios) - 1.0) * 100.0,
    );
    Ok(())
}

/// Bytes this process has handed to write(2) and friends so far (from /proc/self/io).
fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Paired measurement of one flag change at a million messages, with and without the tree,
/// alternating on one copy of the fixture: time per committed change and bytes written per
/// commit. The copy's tree goes stale, so it is deleted afterwards.
fn ab_flags(rounds: usize) -> Result<(), Error> {
    let shape = SHAPE_1M;
    let dir = fixture(shape)?;
    let scratch = tempfile::tempdir_in(fixtures_root())?;
    std::fs::copy(dir.join(DB_FILE), scratch.path().join(DB_FILE))?;
    let mut store = Store::open(scratch.path())?;
    let targets = pick_targets(&store, shape, FLAG_TARGETS)?;
    let flag = [seen()];
    let (mut times, mut bytes) = ([Vec::new(), Vec::new()], [0u64; 2]);
    for i in 0..2 * rounds {
        let tree = matches!(i % 4, 0 | 3);
        store.set_tree_maintenance_for_bench(tree);
        let t = &targets[i % targets.len()];
        let set = store
            .message(&t.user, &t.mailbox, t.uid)?
            .record
            .flags
            .is_set("\\Seen");
        let op = if set { FlagOp::Remove } else { FlagOp::Add };
        let written = bytes_written();
        let started = Instant::now();
        store.set_flags(&t.user, &t.mailbox, t.uid, op, &flag)?;
        times[tree as usize].push(started.elapsed().as_secs_f64() * 1e6);
        bytes[tree as usize] += bytes_written() - written;
    }
    let [without, with] = times;
    let (with, without) = (median(with), median(without));
    println!(
        "ab-flags rounds={rounds} tree_us={with:.0} notree_us={without:.0} difference_us={:.0} \
         tree_bytes_per_commit={} notree_bytes_per_commit={}",
        with - without,
        bytes[1] / rounds as u64,
        bytes[0] / rounds as u64,
    );
    Ok(())
}

fn task(args: &[String]) -> Result<(), Error> {
    match args {
        [name] if name == "fixtures" => {
            for shape in [SHAPE_10K, SHAPE_100K, SHAPE_1M] {
                let dir = fixture(shape)?;
                println!("{}\t{}", shape.label(), dir.display());
            }
            Ok(())
        }
        [name, dir] if name == "make-maildir" => make_maildir(Path::new(dir)),
        [name, dir] if name == "append-100k" => append_100k(Path::new(dir)),
        [name, count, size, dir] if name == "append-growth" => {
            append_growth(count.parse()?, size.parse()?, Path::new(dir))
        }
        [name, backend, batch, rounds] if name == "ab-append" => {
            let backend = match backend.as_str() {
                "disk" => Backend::Disk,
                "memory" => Backend::Memory,
                other => return Err(format!("backend {other:?}: disk or memory").into()),
            };
            ab_append(backend, batch.parse()?, rounds.parse()?)
        }
        [name, rounds] if name == "ab-flags" => ab_flags(rounds.parse()?),
        [name, rounds] if name == "tree-breakdown" => tree_breakdown(rounds.parse()?),
        _ => Err(format!(
            "usage: store task fixtures | make-maildir DIR | append-100k DIR \
             | append-growth COUNT SIZE DIR \
             | ab-append disk|memory BATCH ROUNDS | ab-flags ROUNDS | tree-breakdown ROUNDS \
             (got {args:?})"
        )
        .into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("task") {
        if let Err(e) = task(&args[1..]) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_append(&mut c);
    bench_flag_change(&mut c);
    bench_open(&mut c);
    c.final_summary();
}
