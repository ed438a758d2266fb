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

use common::{command, killed_by_signal, run, scratch_dir, ChildGuard};
use merkmail::net::client::{BlockingClient, ClientConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PEER_TOKEN: &str = "crash-peer-secret";
const ADMIN_TOKEN: &str = "crash-admin-secret";
const CONVERGE: Duration = Duration::from_secs(60);
const START: Duration = Duration::from_secs(30);
/// Past this many unshipped entries a node drops its journal for the peer: bursts larger than
/// this while the peer is down make the restart a Merkle reconciliation.
const JOURNAL_BOUND: usize = 40;
/// Messages in a Maildir imported (and killed) at an import kill point.
const IMPORT_N: usize = 3_000;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

struct Node {
    name: &'static str,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    proc: Option<ChildGuard>,
}

impl Node {
    fn new(root: &Path, name: &'static str, port: u16, peer: u16) -> Node {
        let dir = root.join(name);
        let config = root.join(format!("{name}.toml"));
        let text = format!(
            "node_id = \"{name}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\
             peer_token = \"{PEER_TOKEN}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             check_interval_s = 5\nbackoff_max_s = 1\njournal_bound = {JOURNAL_BOUND}\n\
             journal_batch = 16\n\
             [[peer]]\nurl = \"http://127.0.0.1:{peer}\"\n",
            dir.display()
        );
        std::fs::write(&config, text).expect("write config");
        Node {
            name,
            port,
            dir,
            config,
            proc: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open log");
        let mut cmd = command(["serve", "--config", &self.config.display().to_string()]);
        cmd.env("MERKMAIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().expect("start serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START).unwrap_or_default();
        assert!(
            line.starts_with("listening on 127.0.0.1:"),
            "{}: unexpected first line {line:?}; log:\n{}",
            self.name,
            self.log_tail()
        );
        self.proc = Some(ChildGuard::from_child(child));
    }

    fn running(&self) -> bool {
        self.proc.is_some()
    }

    /// SIGKILL, then `verify` on the store as the crash left it.
    #[track_caller]
    fn kill_and_verify(&mut self, point: &str) {
        if let Some(proc) = self.proc.take() {
            let status = proc.kill();
            assert!(killed_by_signal(&status), "{}: {status:?}", self.name);
        }
        self.verify(point);
    }

    #[track_caller]
    fn verify(&self, point: &str) {
        let out = run(&["verify", "--data", &self.dir.display().to_string()], None);
        assert!(
            out.success(),
            "{point}: verify failed on {} after SIGKILL:\n{}\n{}",
            self.name,
            out.stdout_str(),
            out.stderr
        );
    }

    fn client(&self) -> BlockingClient {
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        };
        BlockingClient::new(&self.url(), Some(ADMIN_TOKEN), config).expect("client")
    }

    fn root(&self) -> Option<String> {
        let (status, body) = self.client().get("/v1/mail/root").ok()?;
        if !status.is_success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&body).ok()?;
        v.get("root").and_then(Value::as_str).map(str::to_string)
    }

    /// A user's live messages: md5 → (count, flags of the last one seen).
    #[track_caller]
    fn messages(&self, user: &str) -> BTreeMap<String, (usize, Vec<String>)> {
        let (status, body) = self
            .client()
            .get(&format!("/v1/mail/users/{user}/messages"))
            .expect("list messages");
        let mut out: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
        if status.as_u16() == 404 {
            return out; // the user never got a message
        }
        assert!(status.is_success(), "{}: list {user}: {status}", self.name);
        let v: Value = serde_json::from_slice(&body).expect("message list JSON");
        let list = v
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .or_else(|| v.as_array().cloned())
            .expect("a list of messages");
        for m in list {
            let md5 = m["md5"].as_str().expect("md5").to_string();
            let flags: Vec<String> = m["flags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let e = out.entry(md5).or_insert((0, Vec::new()));
            e.0 += 1;
            e.1 = flags;
        }
        out
    }
}

/// What writers were told succeeded, and everything they tried.
#[derive(Default)]
struct Ledger {
    /// md5 of every message a writer tried to append (acknowledged or not).
    tried: BTreeSet<String>,
    /// md5 → user, for appends answered 2xx.
    appended: BTreeMap<String, String>,
    expunged: BTreeSet<String>,
    seen: BTreeSet<String>,
}

fn body(tag: &str) -> Vec<u8> {
    format!(
        "From: crash@example.org\r\nSubject: {tag}\r\nMessage-ID: <{tag}@crash>\r\n\r\n\
         this message must survive: {tag}\r\n{}\r\n",
        "x".repeat(200)
    )
    .into_bytes()
}

/// Writes to `url` until `stop` or the server goes away: appends one message at a time
/// (some in batches of 5), and now and then expunges or flags one it appended before.
/// Everything answered 2xx goes in the ledger.
fn writer(
    url: String,
    user: String,
    tag: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    max_writes: usize,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let Ok(client) = BlockingClient::new(&url, Some(ADMIN_TOKEN), config) else {
        return;
    };
    let mut mine: Vec<(u32, String)> = Vec::new();
    let base = format!("/v1/mail/users/{user}/mailboxes/INBOX");
    for n in 0..max_writes {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let roll: u32 = rng.random_range(0..10);
        if roll < 2 && !mine.is_empty() {
            let i = rng.random_range(0..mine.len());
            let (uid, md5) = mine.swap_remove(i);
            let expunge = roll == 0;
            let answer = if expunge {
                client.post(
                    &format!("{base}/expunge"),
                    "application/json",
                    format!("{{\"uids\":[{uid}]}}").into_bytes(),
                )
            } else {
                client.post(
                    &format!("{base}/messages/{uid}/flags?add=%5CSeen"),
                    "application/json",
                    Vec::new(),
                )
            };
            match answer {
                Ok((status, _)) if status.is_success() => {
                    let mut l = ledger.lock().expect("ledger");
                    if expunge {
                        l.expunged.insert(md5);
                    } else {
                        l.seen.insert(md5);
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
            continue;
        }
        let count = if roll == 9 { 5 } else { 1 };
        let bodies: Vec<Vec<u8>> = (0..count)
            .map(|k| body(&format!("{tag}-{n}-{k}")))
            .collect();
        let md5s: Vec<String> = bodies.iter().map(|b| common::md5_hex(b)).collect();
        ledger
            .lock()
            .expect("ledger")
            .tried
            .extend(md5s.iter().cloned());
        let (content_type, payload) = if count == 1 {
            ("message/rfc822", bodies[0].clone())
        } else {
            let mut p = Vec::new();
            for b in &bodies {
                p.extend_from_slice(&(b.len() as u32).to_be_bytes());
                p.extend_from_slice(b);
            }
            ("application/vnd.merkmail.messages", p)
        };
        match client.post(&format!("{base}/messages"), content_type, payload) {
            Ok((status, reply)) if status.is_success() => {
                let v: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
                let uids: Vec<u32> = v["uids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_u64())
                            .map(|u| u as u32)
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(uids.len(), count, "append answered {v}");
                let mut l = ledger.lock().expect("ledger");
                for (uid, md5) in uids.into_iter().zip(md5s) {
                    l.appended.insert(md5.clone(), user.clone());
                    mine.push((uid, md5));
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Starts a writer thread; returns its stop flag and handle.
fn spawn_writer(
    node: &Node,
    user: &str,
    tag: &str,
    seed: u64,
    ledger: &Arc<Mutex<Ledger>>,
    max_writes: usize,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (url, user, tag, stop, ledger) = (
            node.url(),
            user.to_string(),
            tag.to_string(),
            Arc::clone(&stop),
            Arc::clone(ledger),
        );
        std::thread::spawn(move || writer(url, user, tag, seed, stop, ledger, max_writes))
    };
    (stop, handle)
}

fn finish(writer: (Arc<AtomicBool>, std::thread::JoinHandle<()>)) {
    writer.0.store(true, Ordering::Relaxed);
    let _ = writer.1.join();
}

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
        let (pa, pb) = (free_port(), free_port());
        let mut a = Node::new(root.path(), "a", pa, pb);
        let mut b = Node::new(root.path(), "b", pb, pa);
        for n in [&a, &b] {
            run(
                &[
                    "init",
                    "--data",
                    &n.dir.display().to_string(),
                    "--node-id",
                    n.name,
                ],
                None,
            )
            .ok();
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
                node.verify(&label);
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
                node.verify(&label);
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
        let deadline = Instant::now() + CONVERGE;
        loop {
            let (ra, rb) = (self.nodes[0].root(), self.nodes[1].root());
            if ra.is_some() && ra == rb {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{label}: no convergence within {CONVERGE:?} ({ra:?} vs {rb:?})\n\
                     a:\n{}\nb:\n{}",
                    self.nodes[0].log_tail(),
                    self.nodes[1].log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every acknowledged write holds on both nodes; nothing appears that nobody wrote.
    #[track_caller]
    fn check(&self, label: &str, users: &BTreeSet<String>) {
        let ledger = self.ledger.lock().expect("ledger");
        for node in &self.nodes {
            assert!(node.running(), "{label}: {} is not running", node.name);
            let lists: BTreeMap<&String, _> = users.iter().map(|u| (u, node.messages(u))).collect();
            for (user, live) in &lists {
                let imported = self.imported.get(*user);
                for (md5, (count, flags)) in live {
                    let known =
                        ledger.tried.contains(md5) || imported.is_some_and(|set| set.contains(md5));
                    assert!(
                        known,
                        "{label}: {} holds a message of {user} nobody wrote (md5 {md5})",
                        node.name
                    );
                    assert_eq!(
                        *count, 1,
                        "{label}: {} holds message {md5} of {user} {count} times",
                        node.name
                    );
                    if ledger.seen.contains(md5) {
                        assert!(
                            flags.iter().any(|f| f == "\\Seen"),
                            "{label}: {}: acknowledged \\Seen missing on {md5} ({flags:?})",
                            node.name
                        );
                    }
                }
                for md5 in imported.into_iter().flatten() {
                    assert!(
                        live.contains_key(md5),
                        "{label}: {}: imported message {md5} of {user} missing",
                        node.name
                    );
                }
            }
            for (md5, user) in ledger.appended.iter().filter(|(_, u)| users.contains(*u)) {
                let present = lists.get(user).is_some_and(|l| l.contains_key(md5));
                if ledger.expunged.contains(md5) {
                    assert!(
                        !present,
                        "{label}: {}: acknowledged expunge of {md5} ({user}) undone",
                        node.name
                    );
                } else {
                    assert!(
                        present,
                        "{label}: {}: acknowledged append {md5} ({user}) lost",
                        node.name
                    );
                }
            }
        }
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
