//! Two (or more) real `merkmail serve` processes on 127.0.0.1, each on its own temporary data
//! directory, driven by the remote CLI: every clash kind reconciled by one session, in either
//! direction; tokens between peers; SIGKILL of a peer in the middle of a session; and the
//! peer API's answers to bad input.
//!
//! Loopback only. Every child is killed and reaped when its guard drops; every wait is bounded
//! in time (and every polling loop by its deadline).

mod common;

use common::{
    command, killed_by_signal, md5_hex, scratch_dir, spawn_for_first_line, stop_serve, ChildGuard,
    Raw, Run,
};
use merkmail::model::{Change, ChangeGroup};
use merkmail::model::{Digest, FlagSet, MailboxGuid, MailboxRecord, Md5, MessageRecord, Stamp};
use merkmail::sync::wire::{
    decode_reply, encode, GuidRef, Reply, Request, RoundRequest, WIRE_VERSION,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// What any one CLI command may take before the test gives up on it.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);
/// How long a server may take to print its `listening on` line, or to stop after SIGTERM.
const SERVER_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Processes: a bounded run of the CLI (children killed on drop by `ChildGuard`), and a served
// store.

/// A `merkmail` command started with its output captured, to be waited for with a bound.
struct Running {
    args: Vec<String>,
    proc: ChildGuard,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

fn reader(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

fn start<S: AsRef<OsStr>>(args: &[S]) -> Running {
    let shown = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let mut cmd = command(args);
    // `command` clears MERKMAIL_TOKEN and the log level; a peer token from the shell must not
    // reach the tests that leave it out on purpose either.
    cmd.env_remove("MERKMAIL_PEER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot start the merkmail binary");
    let stdout = reader(child.stdout.take().expect("stdout is piped"));
    let stderr = reader(child.stderr.take().expect("stderr is piped"));
    Running {
        args: shown,
        proc: ChildGuard::from_child(child),
        stdout: Some(stdout),
        stderr: Some(stderr),
    }
}

impl Running {
    /// Waits at most `limit` (then kills it and fails the test).
    #[track_caller]
    fn finish(mut self, limit: Duration) -> Run {
        let status = self.proc.wait_timeout(limit);
        let Some(status) = status else {
            panic!(
                "`merkmail {}` did not finish within {limit:?}",
                self.args.join(" ")
            );
        };
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().expect("reader"))
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().expect("reader"))
            .unwrap_or_default();
        Run {
            args: self.args.clone(),
            code: status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

/// Runs `merkmail ARGS…` to completion, bounded by [`COMMAND_LIMIT`].
#[track_caller]
fn run<S: AsRef<OsStr>>(args: &[S]) -> Run {
    start(args).finish(COMMAND_LIMIT)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn init(data: &Path, node: &str) {
    run(&["init", "--data", path(data), "--node-id", node]).ok();
}

/// `verify --data DIR` passes (the store must not be served at the time).
#[track_caller]
fn verify(data: &Path) {
    let out = run(&["verify", "--data", path(data)]).ok().stdout_str();
    assert!(out.starts_with("ok"), "verify {}: {out}", data.display());
}

/// Copies a (stopped) data directory, file by file.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("cannot create a data directory");
    for entry in std::fs::read_dir(from).expect("cannot read a data directory") {
        let entry = entry.expect("cannot read a directory entry");
        assert!(
            entry.file_type().expect("stat").is_file(),
            "a data directory holds files only: {}",
            entry.path().display()
        );
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("cannot copy a store");
    }
}

/// A running `merkmail serve` on 127.0.0.1:0.
struct Server {
    proc: ChildGuard,
    addr: SocketAddr,
    url: String,
    data: PathBuf,
    token: Option<String>,
    /// The mail API's token: the peer token with " admin" after it (they must differ).
    admin: Option<String>,
}

impl Server {
    /// Starts `merkmail serve` on `data` and waits (bounded) for its `listening on` line.
    /// Its log (stderr) goes to `DATA.log`, appended across restarts.
    fn start(data: &Path, token: Option<&str>) -> Server {
        let mut args = vec![
            "serve".to_string(),
            "--data".into(),
            path(data).into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        let admin = token.map(|t| format!("{t} admin"));
        if let (Some(t), Some(a)) = (token, &admin) {
            args.extend([
                "--token".into(),
                t.into(),
                "--admin-token".into(),
                a.clone(),
            ]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .expect("cannot open a server log");
        let mut cmd = command(&args);
        cmd.stdin(Stdio::null()).stderr(log);
        let (child, line) = spawn_for_first_line(cmd, SERVER_LIMIT);
        let proc = ChildGuard::from_child(child);
        assert!(
            !line.is_empty(),
            "serve on {} printed nothing within {SERVER_LIMIT:?}",
            data.display()
        );
        let addr: SocketAddr = common::listening_addr(&line)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "serve on {}: unexpected first line {line:?}; log:\n{}",
                    data.display(),
                    std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
                )
            });
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        Server {
            proc,
            addr,
            url: format!("http://{addr}"),
            data: data.to_path_buf(),
            token: token.map(str::to_string),
            admin,
        }
    }

    /// Runs a mail command against this server: `SUB… --url URL [--token T] REST…`.
    fn cli(&self, sub: &[&str], rest: &[&str]) -> Run {
        let mut args: Vec<&str> = sub.to_vec();
        args.extend(["--url", &self.url]);
        if let Some(t) = &self.admin {
            args.extend(["--token", t]);
        }
        args.extend_from_slice(rest);
        run(&args)
    }

    #[track_caller]
    fn append(&self, user: &str, mailbox: &str, files: &[&str], flags: Option<&str>) -> Vec<u32> {
        let mut rest = vec![user, mailbox];
        rest.extend_from_slice(files);
        if let Some(f) = flags {
            rest.extend(["--flags", f]);
        }
        common::parse_uids(&self.cli(&["append"], &rest).ok())
    }

    #[track_caller]
    fn flags(&self, user: &str, mailbox: &str, uid: u32, op: &str, flags: &str) {
        self.cli(&["flags"], &[user, mailbox, &uid.to_string(), op, flags])
            .ok();
    }

    #[track_caller]
    fn mailbox(&self, op: &str, rest: &[&str]) {
        self.cli(&["mailbox", op], rest).ok();
    }

    #[track_caller]
    fn root(&self) -> String {
        let out = self.cli(&["root"], &[]).ok().stdout_str();
        let root = out.trim_end().to_string();
        assert_eq!(root.len(), 64, "not a root: {out:?}");
        root
    }

    /// `list USER --json`, verbatim.
    #[track_caller]
    fn list(&self, user: &str) -> Value {
        self.cli(&["list"], &[user, "--json"]).ok().json()
    }

    /// `mailbox list USER --json`, verbatim.
    #[track_caller]
    fn mailboxes(&self, user: &str) -> Value {
        self.cli(&["mailbox", "list"], &[user, "--json"])
            .ok()
            .json()
    }

    /// `sync --url THIS --peer OTHER --json` with both servers' tokens.
    fn sync_with(&self, peer: &Server) -> Run {
        let mut args = vec!["sync", "--url", &self.url, "--peer", &peer.url, "--json"];
        if let Some(t) = &self.admin {
            args.extend(["--token", t]);
        }
        if let Some(t) = &peer.token {
            args.extend(["--peer-token", t]);
        }
        run(&args)
    }

    /// SIGTERM: the server must exit 0 within the bound. Returns its data directory.
    #[track_caller]
    fn stop(mut self) -> PathBuf {
        stop_serve(
            &format!("serve on {}", self.data.display()),
            &mut self.proc,
            SERVER_LIMIT,
        );
        self.data.clone()
    }

    /// SIGKILL. Returns its data directory.
    fn kill(self) -> PathBuf {
        let data = self.data.clone();
        let status = self.proc.kill();
        assert!(
            killed_by_signal(&status),
            "serve had exited by itself before the kill: {status:?}"
        );
        data
    }
}

/// The sync report, checked to be one and to say `equal_after`.
#[track_caller]
fn report(run: Run) -> Value {
    let report = run.ok().json();
    assert_eq!(report["equal_after"], true, "not equal after: {report}");
    report
}

fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field:?} in {v}"))
}

// ---------------------------------------------------------------------------------------------
// Mail: uniquely tagged messages, written once as files and known by MD5.

struct Mail {
    dir: tempfile::TempDir,
}

impl Mail {
    fn new() -> Mail {
        Mail { dir: scratch_dir() }
    }

    fn bytes(tag: &str) -> Vec<u8> {
        format!(
            "From: {tag}@example.org\r\nTo: alice@example.org\r\nSubject: {tag}\r\n\
             Message-ID: <{tag}@multinode.example.org>\r\n\r\nThis is {tag}.\r\n"
        )
        .into_bytes()
    }

    /// The file holding message `tag` (written on first use).
    fn file(&self, tag: &str) -> String {
        let p = self.dir.path().join(format!("{tag}.eml"));
        if !p.exists() {
            std::fs::write(&p, Mail::bytes(tag)).expect("cannot write a message file");
        }
        path(&p).to_string()
    }

    fn md5(tag: &str) -> String {
        md5_hex(&Mail::bytes(tag))
    }
}

/// One message of `list --json`, reduced to what the clash checks look at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    uid: u64,
    md5: String,
    digest: String,
    flags: Vec<String>,
    keywords: Vec<String>,
}

/// `list --json` grouped by mailbox name, each in UID order.
fn by_mailbox(list: &Value) -> BTreeMap<String, Vec<Seen>> {
    let mut out: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for m in list.as_array().expect("list --json prints an array") {
        let strings = |f: &str| -> Vec<String> {
            m[f].as_array()
                .unwrap_or_else(|| panic!("no {f} in {m}"))
                .iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        };
        out.entry(m["mailbox"].as_str().expect("mailbox").to_string())
            .or_default()
            .push(Seen {
                uid: num(m, "uid"),
                md5: m["md5"].as_str().expect("md5").to_string(),
                digest: m["digest"].as_str().expect("digest").to_string(),
                flags: strings("flags"),
                keywords: strings("keywords"),
            });
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The clash scenario: the same base on both servers, then divergence of every kind.

const ALICE: &str = "alice";
const BOB: &str = "bob";

/// What the divergence left to check afterwards.
struct Diverged {
    /// The GUIDs of the two "Archive" mailboxes (A's, B's).
    archives: (String, String),
    /// The two messages that took UID 7 of alice's INBOX, one on each side.
    clash: (String, String),
}

fn guid_of(mailboxes: &Value, name: &str) -> String {
    mailboxes
        .as_array()
        .expect("mailbox list --json prints an array")
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no mailbox {name} in {mailboxes}"))["guid"]
        .as_str()
        .expect("guid")
        .to_string()
}

/// Loads the same mail into both servers (through A, then a sync), then makes them diverge
/// in every way the clash rules cover. Commands run one after another, so the stamps (hybrid
/// logical clocks on one machine) follow the order written here.
fn diverge(a: &Server, b: &Server, mail: &Mail) -> Diverged {
    let f = |tag: &str| mail.file(tag);
    // The base, through A.
    assert_eq!(
        a.append(
            ALICE,
            "INBOX",
            &[&f("m1"), &f("m2"), &f("m3"), &f("m4")],
            None
        ),
        [1, 2, 3, 4]
    );
    assert_eq!(
        a.append(ALICE, "INBOX", &[&f("m5")], Some("\\Seen,\\Flagged")),
        [5]
    );
    assert_eq!(a.append(ALICE, "INBOX", &[&f("m6")], Some("\\Draft")), [6]);
    for name in ["Projects", "Trash", "Old", "Sent"] {
        a.mailbox("create", &[ALICE, name]);
    }
    assert_eq!(
        a.append(ALICE, "Projects", &[&f("m7"), &f("m8")], None),
        [1, 2]
    );
    assert_eq!(a.append(ALICE, "Trash", &[&f("m9")], None), [1]);
    assert_eq!(a.append(ALICE, "Old", &[&f("m10")], None), [1]);
    assert_eq!(
        a.append(BOB, "INBOX", &[&f("m11"), &f("m12")], None),
        [1, 2]
    );
    let first = report(a.sync_with(b));
    assert_eq!(num(&first, "copied_to_peer"), 12, "{first}");
    assert_eq!(a.root(), b.root(), "the base is not the same on both");
    for user in [ALICE, BOB] {
        assert_eq!(a.list(user), b.list(user));
    }

    // New mail on each side, in different mailboxes.
    assert_eq!(a.append(BOB, "INBOX", &[&f("m14")], None), [3]);
    assert_eq!(b.append(ALICE, "Sent", &[&f("m15")], None), [1]);
    // A UID clash: both sides give UID 7 of alice's INBOX to different mail.
    assert_eq!(a.append(ALICE, "INBOX", &[&f("m16")], None), [7]);
    assert_eq!(b.append(ALICE, "INBOX", &[&f("m17")], None), [7]);
    // Expunges on A.
    a.cli(&["expunge"], &[ALICE, "INBOX", "1", "2"]).ok();
    // Flags: one side each on different messages…
    a.flags(ALICE, "INBOX", 3, "--add", "\\Flagged");
    b.flags(ALICE, "INBOX", 4, "--add", "$Label1");
    // …both sides on the same message, different flags (per-flag merge): m5 had \Seen \Flagged.
    a.flags(ALICE, "INBOX", 5, "--remove", "\\Seen");
    a.flags(ALICE, "INBOX", 5, "--add", "$A");
    b.flags(ALICE, "INBOX", 5, "--remove", "\\Flagged");
    b.flags(ALICE, "INBOX", 5, "--add", "\\Answered");
    // …and both sides on the same flag (last writer wins): m6 had \Draft.
    b.flags(ALICE, "INBOX", 6, "--remove", "\\Draft");
    a.flags(ALICE, "INBOX", 6, "--remove", "\\Draft");
    a.flags(ALICE, "INBOX", 6, "--add", "\\Draft"); // A set it last: set
    a.flags(ALICE, "INBOX", 6, "--add", "\\Flagged");
    b.flags(ALICE, "INBOX", 6, "--add", "\\Flagged");
    b.flags(ALICE, "INBOX", 6, "--remove", "\\Flagged"); // B cleared it last: cleared
                                                         // A rename on A, while B changes a message in the same mailbox.
    a.mailbox("rename", &[ALICE, "Projects", "Work"]);
    b.flags(ALICE, "Projects", 1, "--add", "\\Seen");
    // "Archive" created on both sides, different mail in each.
    a.mailbox("create", &[ALICE, "Archive"]);
    assert_eq!(a.append(ALICE, "Archive", &[&f("m18")], None), [1]);
    b.mailbox("create", &[ALICE, "Archive"]);
    assert_eq!(b.append(ALICE, "Archive", &[&f("m19")], None), [1]);
    // Trash deleted on A, and B adds mail to it afterwards: it must survive.
    a.mailbox("delete", &[ALICE, "Trash"]);
    assert_eq!(b.append(ALICE, "Trash", &[&f("m20")], None), [2]);
    // Old deleted on B, untouched on A: it must go.
    b.mailbox("delete", &[ALICE, "Old"]);

    assert_ne!(a.root(), b.root());
    Diverged {
        archives: (
            guid_of(&a.mailboxes(ALICE), "Archive"),
            guid_of(&b.mailboxes(ALICE), "Archive"),
        ),
        clash: (Mail::md5("m16"), Mail::md5("m17")),
    }
}

fn seen(
    uid: u64,
    tag: &str,
    flags: &[&str],
    keywords: &[&str],
) -> (u64, String, Vec<String>, Vec<String>) {
    (
        uid,
        Mail::md5(tag),
        flags.iter().map(|s| s.to_string()).collect(),
        keywords.iter().map(|s| s.to_string()).collect(),
    )
}

fn plain(v: &[Seen]) -> Vec<(u64, String, Vec<String>, Vec<String>)> {
    v.iter()
        .map(|s| (s.uid, s.md5.clone(), s.flags.clone(), s.keywords.clone()))
        .collect()
}

fn md5s(v: &[Seen]) -> BTreeSet<String> {
    v.iter().map(|s| s.md5.clone()).collect()
}

/// Checks every specific outcome of [`diverge`] on one server.
#[track_caller]
fn check_outcome(s: &Server, d: &Diverged) {
    let mailboxes = s.mailboxes(ALICE);
    let names = common::str_fields(&mailboxes, "name");
    // Work is Projects renamed; Old is gone; one Archive; Trash survived.
    assert_eq!(
        names,
        ["INBOX", "Archive", "Sent", "Trash", "Work"],
        "on {}",
        s.url
    );
    // The two Archives merged into the one made first (the same-name rule).
    let archive = guid_of(&mailboxes, "Archive");
    let parse = |g: &String| g.parse::<MailboxGuid>().expect("a GUID");
    let first =
        merkmail::model::same_name_winner(ALICE, [parse(&d.archives.0), parse(&d.archives.1)])
            .expect("two GUIDs");
    assert_eq!(
        archive,
        first.to_hex(),
        "the merged Archive is not the one made first"
    );

    let alice = by_mailbox(&s.list(ALICE));
    let inbox = &alice["INBOX"];
    // Expunged (1, 2) gone; flags merged per flag; the clash (UID 7) renumbered.
    assert_eq!(
        plain(&inbox[..4]),
        [
            seen(3, "m3", &["\\Flagged"], &[]),
            seen(4, "m4", &[], &["$Label1"]),
            seen(5, "m5", &["\\Answered"], &["$A"]),
            seen(6, "m6", &["\\Draft"], &[]),
        ],
        "INBOX on {}: {inbox:#?}",
        s.url
    );
    let clash = &inbox[4..];
    assert_eq!(clash.len(), 2, "INBOX on {}: {inbox:#?}", s.url);
    assert_eq!(
        md5s(clash),
        BTreeSet::from([d.clash.0.clone(), d.clash.1.clone()]),
        "both clashing messages kept"
    );
    assert!(
        clash[0].uid >= 8 && clash[1].uid > clash[0].uid,
        "renumbered above both UIDNEXTs (8): {clash:?}"
    );
    assert!(
        clash[0].digest < clash[1].digest,
        "renumbered in digest order: {clash:?}"
    );
    assert!(clash
        .iter()
        .all(|m| m.flags.is_empty() && m.keywords.is_empty()));

    assert_eq!(plain(&alice["Sent"]), [seen(1, "m15", &[], &[])]);
    assert_eq!(
        plain(&alice["Work"]),
        [seen(1, "m7", &["\\Seen"], &[]), seen(2, "m8", &[], &[])],
        "Work on {}",
        s.url
    );
    let archived = &alice["Archive"];
    assert_eq!(
        md5s(archived),
        BTreeSet::from([Mail::md5("m18"), Mail::md5("m19")]),
        "Archive on {}: {archived:#?}",
        s.url
    );
    assert_eq!(archived.len(), 2);
    assert_eq!(
        md5s(&alice["Trash"]),
        BTreeSet::from([Mail::md5("m9"), Mail::md5("m20")]),
        "Trash on {} (deleted on A, added to on B afterwards)",
        s.url
    );
    assert_eq!(alice.len(), 5, "mailboxes holding mail: {:?}", alice.keys());
    let everywhere: BTreeSet<String> = alice.values().flat_map(|v| md5s(v)).collect();
    for gone in ["m1", "m2", "m10"] {
        assert!(
            !everywhere.contains(&Mail::md5(gone)),
            "{gone} should be gone on {}",
            s.url
        );
    }
    let bob = by_mailbox(&s.list(BOB));
    assert_eq!(
        plain(&bob["INBOX"]),
        [
            seen(1, "m11", &[], &[]),
            seen(2, "m12", &[], &[]),
            seen(3, "m14", &[], &[]),
        ]
    );
}

/// What a server shows: its root, and each user's `list --json` and `mailbox list --json`.
#[derive(Debug, PartialEq)]
struct Shown {
    root: String,
    users: Vec<(Value, Value)>,
}

fn shown(s: &Server, users: &[&str]) -> Shown {
    Shown {
        root: s.root(),
        users: users.iter().map(|u| (s.list(u), s.mailboxes(u))).collect(),
    }
}

/// Both servers show exactly the same thing: root, every user's messages and mailboxes.
/// Returns what they show.
#[track_caller]
fn assert_same(a: &Server, b: &Server, users: &[&str]) -> Shown {
    let (x, y) = (shown(a, users), shown(b, users));
    assert_eq!(x.root, y.root, "roots differ");
    for (user, (x, y)) in users.iter().zip(x.users.iter().zip(&y.users)) {
        assert_eq!(x.0, y.0, "list {user} --json differs");
        assert_eq!(x.1, y.1, "mailbox list {user} --json differs");
    }
    x
}

#[test]
fn every_clash_kind_between_two_servers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mail = Mail::new();
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&da, "node-a");
    init(&db, "node-b");
    let a = Server::start(&da, None);
    let b = Server::start(&db, None);
    let d = diverge(&a, &b, &mail);

    let r = report(a.sync_with(&b));
    eprintln!("clash scenario, sync --url A --peer B: {r}");
    assert!(num(&r, "uid_clashes_renumbered") >= 1, "{r}");
    assert!(
        num(&r, "copied_to_peer") >= 1 && num(&r, "copied_from_peer") >= 1,
        "{r}"
    );
    assert!(
        num(&r, "expunged") >= 1 && num(&r, "flag_updates") >= 1,
        "{r}"
    );
    assert!(num(&r, "mailboxes_changed") >= 1, "{r}");
    assert_eq!(num(&r, "stale_mailboxes"), 0, "{r}");
    assert!(num(&r, "rounds") >= 2 && num(&r, "rounds") <= 64, "{r}");

    assert_same(&a, &b, &[ALICE, BOB]);
    check_outcome(&a, &d);
    check_outcome(&b, &d);

    // Nothing left to do: one round trip.
    let again = report(a.sync_with(&b));
    assert_eq!(num(&again, "rounds"), 1, "{again}");
    assert_eq!(
        num(&again, "body_bytes_sent") + num(&again, "body_bytes_received"),
        0
    );

    // Both stores are sound once stopped.
    verify(&a.stop());
    verify(&b.stop());
}

#[test]
fn the_direction_of_the_session_does_not_matter() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mail = Mail::new();
    let dirs: Vec<PathBuf> = ["a1", "b1", "a2", "b2"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    init(&dirs[0], "node-a");
    init(&dirs[1], "node-b");
    // Diverge once, then copy both stores, so the two sessions start from identical states
    // (GUIDs and stamps included).
    let d = {
        let a = Server::start(&dirs[0], None);
        let b = Server::start(&dirs[1], None);
        let d = diverge(&a, &b, &mail);
        a.stop();
        b.stop();
        d
    };
    copy_dir(&dirs[0], &dirs[2]);
    copy_dir(&dirs[1], &dirs[3]);
    let servers: Vec<Server> = dirs.iter().map(|d| Server::start(d, None)).collect();
    let (a1, b1, a2, b2) = (&servers[0], &servers[1], &servers[2], &servers[3]);
    assert_eq!(a1.root(), a2.root());
    assert_eq!(b1.root(), b2.root());

    let from_a = report(a1.sync_with(b1));
    let from_b = report(b2.sync_with(a2));
    eprintln!("from A: {from_a}\nfrom B: {from_b}");
    // What moved one way from A moved the other way from B.
    assert_eq!(
        num(&from_a, "copied_to_peer"),
        num(&from_b, "copied_from_peer")
    );
    assert_eq!(
        num(&from_a, "copied_from_peer"),
        num(&from_b, "copied_to_peer")
    );
    assert_eq!(
        num(&from_a, "uid_clashes_renumbered"),
        num(&from_b, "uid_clashes_renumbered")
    );
    let mut ends = Vec::new();
    for (x, y) in [(a1, b1), (a2, b2)] {
        ends.push(assert_same(x, y, &[ALICE, BOB]));
        check_outcome(x, &d);
    }
    // The two runs end in the same state: same lists, same mailboxes, same root.
    assert_eq!(ends[0], ends[1], "A→B and B→A end differently");
}

// ---------------------------------------------------------------------------------------------
// Tokens.

#[test]
fn sync_needs_the_right_tokens_and_changes_nothing_without_them() {
    const TA: &str = "token-of-a";
    const TB: &str = "token-of-b";
    let tmp = tempfile::tempdir().expect("tempdir");
    let mail = Mail::new();
    let (da, db, dc) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    init(&da, "node-a");
    init(&db, "node-b");
    init(&dc, "node-c");
    // A local store (sync --data) with mail of its own.
    run(&[
        "append",
        "--data",
        path(&dc),
        "carol",
        "INBOX",
        &mail.file("c1"),
    ])
    .ok();
    let root_c = || {
        run(&["root", "--data", path(&dc)])
            .ok()
            .stdout_str()
            .trim_end()
            .to_string()
    };
    let c_before = root_c();

    let a = Server::start(&da, Some(TA));
    let b = Server::start(&db, Some(TB));
    a.append(ALICE, "INBOX", &[&mail.file("a1"), &mail.file("a2")], None);
    b.append(BOB, "INBOX", &[&mail.file("b1")], None);
    let (ra, rb) = (a.root(), b.root());
    assert_ne!(ra, rb);

    let sync = |own: Option<&str>, peer: Option<&str>| {
        let mut args = vec!["sync", "--url", &a.url, "--peer", &b.url, "--json"];
        if let Some(t) = own {
            args.extend(["--token", t]);
        }
        if let Some(t) = peer {
            args.extend(["--peer-token", t]);
        }
        run(&args)
    };
    // The local store C syncing with B.
    let sync_c = |more: &[&str]| {
        let mut args = vec!["sync", "--data", path(&dc), "--peer", &b.url];
        args.extend(more);
        run(&args)
    };
    let admin_a = a.admin.clone().expect("A has an admin token");
    let aa = Some(admin_a.as_str());
    let refusals = [
        ("no peer token", sync(aa, None)),
        ("wrong peer token", sync(aa, Some("wrong"))),
        ("A's token given to B", sync(aa, Some(TA))),
        ("no token for A", sync(None, Some(TB))),
        ("wrong token for A", sync(Some("wrong"), Some(TB))),
        (
            "A's peer token as its admin token",
            sync(Some(TA), Some(TB)),
        ),
        (
            "local store, wrong peer token",
            sync_c(&["--token", "wrong"]),
        ),
        ("local store, no peer token", sync_c(&[])),
    ];
    for (what, out) in refusals {
        assert!(out.stdout.is_empty(), "{what}: printed a report");
        let line = out.error(&[]);
        assert!(
            line.contains("401") || line.to_lowercase().contains("unauthorized"),
            "{what}: the error does not name 401/unauthorized: {line}"
        );
        for t in [TA, TB] {
            assert!(!line.contains(t), "{what}: the error shows a token: {line}");
        }
        assert_eq!(a.root(), ra, "{what}: A changed");
        assert_eq!(b.root(), rb, "{what}: B changed");
        eprintln!("{what}: {line}");
    }
    assert_eq!(root_c(), c_before, "the local store changed");

    // The right tokens: both ways of running sync converge.
    let r = report(sync(aa, Some(TB)));
    assert_eq!(num(&r, "copied_to_peer"), 2, "{r}");
    assert_eq!(num(&r, "copied_from_peer"), 1, "{r}");
    assert_same(&a, &b, &[ALICE, BOB]);
    let r = report(sync_c(&["--token", TB, "--json"]));
    assert_eq!(num(&r, "copied_from_peer"), 3, "{r}");
    assert_eq!(num(&r, "copied_to_peer"), 1, "{r}");
    assert_eq!(root_c(), b.root());
}

// ---------------------------------------------------------------------------------------------
// SIGKILL in the middle of a session.

#[derive(Clone, Copy, Debug)]
enum Side {
    A,
    B,
}

/// A data directory's store file: its size and modification time, which change as soon as a
/// write transaction reaches the file.
fn file_state(data: &Path) -> Option<(u64, SystemTime)> {
    let mut newest: Option<(u64, SystemTime)> = None;
    for entry in std::fs::read_dir(data).ok()? {
        let meta = entry.ok()?.metadata().ok()?;
        let t = meta.modified().ok()?;
        let (len, when) = newest.unwrap_or((0, SystemTime::UNIX_EPOCH));
        newest = Some((len + meta.len(), when.max(t)));
    }
    newest
}

/// Every message of every user, by MD5 (a count per MD5).
fn md5_counts(shown: &Shown) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (list, _) in &shown.users {
        for m in list.as_array().expect("array") {
            *out.entry(m["md5"].as_str().expect("md5").to_string())
                .or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn a_peer_killed_mid_session_leaves_both_stores_valid_and_the_next_session_converges() {
    const ON_A: usize = 2_000; // alice's, on A only
    const ON_B: usize = 500; // bob's, on B only
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = scratch_dir();
    // The stores, built with --data (one append per mailbox) before any server runs.
    let (a0, b0) = (tmp.path().join("a0"), tmp.path().join("b0"));
    init(&a0, "node-a");
    init(&b0, "node-b");
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    let mut batch = |data: &Path, user: &str, mailbox: &str, prefix: &str, n: usize| {
        let paths: Vec<String> = (0..n)
            .map(|i| {
                let bytes = format!(
                    "From: {prefix}{i}@example.org\r\nSubject: {prefix} {i}\r\n\r\n{}\r\n",
                    format!("{prefix} {i} ").repeat(20)
                )
                .into_bytes();
                *expected.entry(md5_hex(&bytes)).or_insert(0) += 1;
                let p = files.path().join(format!("{prefix}{i}.eml"));
                std::fs::write(&p, bytes).expect("cannot write a message file");
                path(&p).to_string()
            })
            .collect();
        if mailbox != "INBOX" {
            run(&["mailbox", "create", "--data", path(data), user, mailbox]).ok();
        }
        let mut args = vec!["append", "--data", path(data), user, mailbox];
        args.extend(paths.iter().map(String::as_str));
        let uids = common::parse_uids(&run(&args).ok());
        assert_eq!(uids.len(), n);
    };
    batch(&a0, ALICE, "INBOX", "a-inbox-", ON_A / 2);
    batch(&a0, ALICE, "Lists", "a-lists-", ON_A / 2);
    batch(&b0, BOB, "INBOX", "b-inbox-", ON_B);
    assert_eq!(expected.values().sum::<usize>(), ON_A + ON_B);
    assert!(
        expected.values().all(|&n| n == 1),
        "the messages are distinct"
    );
    let users = [ALICE, BOB];

    // Each kill: which server dies, and when: the moment the named server's store file
    // changes, i.e. while that side commits the session's changes (A applies first, then B).
    let kills = [
        (Side::A, Side::A), // the initiator, during its own commit
        (Side::B, Side::A), // the peer, while the initiator commits (before B got anything)
        (Side::B, Side::B), // the peer, during its own commit
    ];
    let mut interrupted = 0;
    for (i, (victim, watch)) in kills.into_iter().enumerate() {
        let (da, db) = (
            tmp.path().join(format!("a{}", i + 1)),
            tmp.path().join(format!("b{}", i + 1)),
        );
        copy_dir(&a0, &da);
        copy_dir(&b0, &db);
        let a = Server::start(&da, None);
        let b = Server::start(&db, None);
        let watched = match watch {
            Side::A => &da,
            Side::B => &db,
        };
        let before = file_state(watched);
        let began = Instant::now();
        let mut sync = start(&["sync", "--url", &a.url, "--peer", &b.url, "--json"]);
        // Bounded: a session this size takes well under a second; give it ten.
        let deadline = began + Duration::from_secs(10);
        let mut changed = false;
        while Instant::now() < deadline {
            if file_state(watched) != before {
                changed = true;
                break;
            }
            if sync.proc.try_wait().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let running = sync.proc.try_wait().is_none();
        let at = began.elapsed();
        let (killed, survivor) = match victim {
            Side::A => (a.kill(), b),
            Side::B => (b.kill(), a),
        };
        // The sync command ends by itself, promptly, whatever the kill interrupted.
        let out = sync.finish(Duration::from_secs(20));
        let other = survivor.stop();
        let outcome = if out.success() {
            let r = report(out);
            format!("the session had finished: {r}")
        } else {
            interrupted += 1;
            format!("sync failed: {}", out.error(&[]))
        };
        eprintln!(
            "kill {}: {victim:?} at {at:?} ({}; sync {}), {outcome}",
            i + 1,
            if changed {
                format!("{watch:?}'s store had changed")
            } else {
                format!("{watch:?}'s store had not changed")
            },
            if running { "running" } else { "done" },
        );
        // Both stores are sound: the killed one as the kill left it, the other stopped.
        verify(&killed);
        verify(&other);
        // Restarted on the same directories, the next session converges and loses nothing.
        let a = Server::start(&da, None);
        let b = Server::start(&db, None);
        let r = report(a.sync_with(&b));
        eprintln!("kill {}: the next session: {r}", i + 1);
        let both = assert_same(&a, &b, &users);
        assert_eq!(
            md5_counts(&both),
            expected,
            "after kill {}: the mail on both sides is not all the mail there was",
            i + 1
        );
        verify(&a.stop());
        verify(&b.stop());
    }
    assert!(
        interrupted >= 1,
        "no kill landed inside a session (the machine is too fast for {} messages?)",
        ON_A + ON_B
    );
}

// ---------------------------------------------------------------------------------------------
// The peer API's answers to bad input, on a real server.

const PEER_TOKEN: &str = "peer api token";

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`), read until the server
/// closes or 10 s pass. No half-close: hyper drops a connection whose reading side ends
/// before it has answered. Write errors are ignored: a server may answer and close before it has
/// read everything sent (an oversize body).
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    Raw::parse(&buf)
}

fn post(addr: SocketAddr, path: &str, token: Option<&str>, content_type: &str, body: &[u8]) -> Raw {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    raw(addr, &head, body)
}

fn round(s: &Server, body: &[u8]) -> Raw {
    post(
        s.addr,
        "/v1/sync/round",
        Some(PEER_TOKEN),
        "application/x-merkmail-sync",
        body,
    )
}

fn encoded(requests: Vec<Request>) -> Vec<u8> {
    encode(&RoundRequest {
        version: WIRE_VERSION,
        window: 0,
        requests,
    })
}

/// The server answers /healthz, and its root is `root`.
#[track_caller]
fn still_fine(s: &Server, root: &str, after: &str) {
    let h = raw(
        s.addr,
        "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(
        (h.status, h.body.as_slice()),
        (200, &b"ok"[..]),
        "after {after}"
    );
    assert_eq!(s.root(), root, "after {after}: the root moved");
}

/// A fresh node `node-s` under `dir`, serving the peer API with the peer token, and the
/// messages to feed it: the start of the tests that talk to one server as a hostile peer.
fn lone_peer_server(dir: &Path) -> (Mail, Server) {
    let mail = Mail::new();
    let data = dir.join("s");
    init(&data, "node-s");
    let s = Server::start(&data, Some(PEER_TOKEN));
    (mail, s)
}

#[test]
fn the_peer_api_refuses_bad_input_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mail, s) = lone_peer_server(tmp.path());
    s.append(ALICE, "INBOX", &[&mail.file("p1"), &mail.file("p2")], None);
    let root = s.root();
    let mut root_bytes = [0u8; 32];
    hex::decode_to_slice(&root, &mut root_bytes).expect("hex root");
    // A valid first round: the answer says "equal".
    let valid = encoded(vec![Request::Root { root: root_bytes }]);
    let ok = round(&s, &valid);
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    match decode_reply(&ok.body).expect("a reply").replies.as_slice() {
        [Reply::Root { equal: true, .. }] => {}
        other => panic!("unexpected reply {other:?}"),
    }

    // No token, a wrong token, a wrong token on a path that does not exist: the same 401.
    let ct = "application/x-merkmail-sync";
    let refused = [
        post(s.addr, "/v1/sync/round", None, ct, &valid),
        post(s.addr, "/v1/sync/round", Some("wrong"), ct, &valid),
        post(s.addr, "/v1/sync/start", None, "application/json", b"{}"),
        post(s.addr, "/v1/sync/nope", Some("wrong"), ct, &valid),
    ];
    for r in &refused {
        assert_eq!(r.status, 401, "{}", r.head);
        assert_eq!(r.body, refused[0].body, "401 bodies differ");
        assert!(r.error().contains("unauthorized"), "{}", r.error());
    }
    still_fine(&s, &root, "401s");

    let user_guid = {
        let g = guid_of(&s.mailboxes(ALICE), "INBOX");
        g.parse::<MailboxGuid>().expect("a GUID")
    };
    let mut version_two = valid.clone();
    version_two[0] = WIRE_VERSION + 1;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "garbage",
            b"\xff\xfe this is not postcard \x00\x01".to_vec(),
            400,
            "",
        ),
        ("an empty body", Vec::new(), 400, ""),
        (
            "a truncated round",
            valid[..valid.len() - 5].to_vec(),
            400,
            "",
        ),
        ("another wire version", version_two, 400, "version"),
        (
            "a node that does not exist",
            encoded(vec![Request::Children {
                node: merkmail::sync::wire::WireKey::Top {
                    level: 99,
                    index: 0,
                },
            }]),
            400,
            "",
        ),
        (
            "an invalid user name",
            encoded(vec![Request::Full {
                user: "../etc".into(),
                guid: GuidRef::Full(user_guid),
            }]),
            400,
            "",
        ),
        (
            // A change whose body does not match its digest.
            "a body that is not what its digest says",
            {
                let (expect, mailbox) = mailbox_state(&s, ALICE, user_guid);
                let mut raised = mailbox;
                raised.uidnext = 51;
                apply_round(
                    user_guid,
                    expect,
                    vec![
                        Change::Mailbox {
                            user: ALICE.into(),
                            record: raised,
                        },
                        new_message(user_guid, 50, &Mail::bytes("p9"), Mail::bytes("p8")),
                    ],
                )
            },
            400,
            "digest",
        ),
    ];
    for (what, body, status, needle) in &cases {
        let r = round(&s, body);
        assert_eq!(
            r.status,
            *status,
            "{what}: {} {}",
            r.head,
            String::from_utf8_lossy(&r.body)
        );
        let e = r.error();
        assert!(e.contains(needle), "{what}: {e}");
        eprintln!("{what}: {} {e}", r.status);
        still_fine(&s, &root, what);
    }

    // Over the 64 MiB limit: refused from Content-Length, before any of it is read.
    let head = format!(
        "POST /v1/sync/round HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Authorization: Bearer {PEER_TOKEN}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        64 * 1024 * 1024 + 1
    );
    let r = raw(s.addr, &head, &valid);
    assert_eq!(r.status, 413, "{}", r.head);
    r.error();
    still_fine(&s, &root, "an oversize Content-Length");
    // …and as it streams past the limit (chunked, no length given).
    let head = format!(
        "POST /v1/sync/round HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Authorization: Bearer {PEER_TOKEN}\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut body = Vec::new();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..65 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let began = Instant::now();
    let r = raw(s.addr, &head, &body);
    assert_eq!(r.status, 413, "{}", r.head);
    eprintln!("streamed oversize refused in {:?}", began.elapsed());
    still_fine(&s, &root, "an oversize streamed body");

    // Routes and methods.
    let r = round_path(&s, "POST", "/v1/sync/nope", &valid);
    assert_eq!(r.status, 404, "{}", r.head);
    r.error();
    let r = round_path(&s, "GET", "/v1/sync/round", b"");
    assert_eq!(r.status, 405, "{}", r.head);
    assert!(r.head.to_lowercase().contains("allow: post"), "{}", r.head);
    r.error();
    let r = round_path(&s, "GET", "/v1/sync/start", b"");
    assert_eq!(r.status, 405, "{}", r.head);
    still_fine(&s, &root, "404 and 405");

    // /v1/sync/start: malformed JSON, a field it does not take, a peer nobody listens on.
    let start = |body: &[u8]| {
        post(
            s.addr,
            "/v1/sync/start",
            s.admin.as_deref(),
            "application/json",
            body,
        )
    };
    for (what, body) in [
        ("malformed JSON", &b"{\"peer\": "[..]),
        ("not JSON", b"peer=http://127.0.0.1:1"),
        ("no peer", b"{\"dry_run\": true}"),
        (
            "an unknown field",
            b"{\"peer\": \"http://127.0.0.1:1\", \"force\": true}",
        ),
    ] {
        let r = start(body);
        assert_eq!(r.status, 400, "{what}: {}", r.head);
        eprintln!("start, {what}: {}", r.error());
        still_fine(&s, &root, what);
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let peer = format!("http://127.0.0.1:{port}");
    let began = Instant::now();
    let r = start(format!("{{\"peer\": \"{peer}\"}}").as_bytes());
    let took = began.elapsed();
    assert!(
        (500..600).contains(&r.status),
        "an unreachable peer: {}",
        r.head
    );
    let e = r.error();
    assert!(
        e.contains(&format!("127.0.0.1:{port}")),
        "does not name the peer: {e}"
    );
    assert!(
        took < Duration::from_secs(5),
        "an unreachable peer took {took:?}"
    );
    eprintln!("start, unreachable peer: {} in {took:?}: {e}", r.status);
    still_fine(&s, &root, "an unreachable peer");

    // The control: the same changes with the real body are applied (so the refusal above was
    // about the body, not about a stale `expect`), and the store stays sound.
    let good = Mail::bytes("p9");
    let (expect, mut mailbox) = mailbox_state(&s, ALICE, user_guid);
    mailbox.uidnext = 51;
    let r = round(
        &s,
        &apply_round(
            user_guid,
            expect,
            vec![
                Change::Mailbox {
                    user: ALICE.into(),
                    record: mailbox,
                },
                new_message(user_guid, 50, &good, good.clone()),
            ],
        ),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    match decode_reply(&r.body).expect("reply").replies.as_slice() {
        [Reply::Applied { applied, .. }] => assert_eq!(applied, &[true]),
        other => panic!("unexpected reply {other:?}"),
    }
    assert_ne!(s.root(), root);
    let listed = by_mailbox(&s.list(ALICE));
    assert!(listed["INBOX"]
        .iter()
        .any(|m| m.uid == 50 && m.md5 == md5_hex(&good)));
    verify(&s.stop());
}

/// [`lone_peer_server`] with one message in alice's INBOX: the server, the INBOX's GUID and
/// the root.
fn lone_peer_with_one_message(dir: &Path) -> (Server, MailboxGuid, String) {
    let (mail, s) = lone_peer_server(dir);
    s.append(ALICE, "INBOX", &[&mail.file("p1")], None);
    let guid: MailboxGuid = guid_of(&s.mailboxes(ALICE), "INBOX")
        .parse()
        .expect("a GUID");
    let root = s.root();
    (s, guid, root)
}

/// A mailbox as a peer sees it: its node hash (window 0), which an Apply must `expect`, and
/// its record.
fn mailbox_state(s: &Server, user: &str, guid: MailboxGuid) -> ([u8; 4], MailboxRecord) {
    let r = round(
        s,
        &encoded(vec![Request::Mailbox {
            user: user.into(),
            guid: GuidRef::Full(guid),
        }]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    match decode_reply(&r.body).expect("reply").replies.as_slice() {
        [Reply::Mailbox {
            node: Some(n),
            record: Some(record),
            ..
        }] => (n.hash, record.clone()),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// A Message change for alice's mailbox `guid` at `uid`: the record describes `real`, the
/// change carries `body`.
fn new_message(guid: MailboxGuid, uid: u32, real: &[u8], body: Vec<u8>) -> Change {
    Change::Message {
        user: ALICE.into(),
        guid,
        uid,
        record: MessageRecord {
            md5: Md5::of(real),
            digest: Digest::of(real),
            size: real.len() as u64,
            internal_date: 1_700_000_000,
            flags: FlagSet::default(),
            appended: Stamp {
                ms: 1_700_000_000_000,
                counter: 0,
                node: 9,
            },
        },
        body: Some(body),
    }
}

/// One round holding one Apply of one group (alice's mailbox `guid`, window 0).
fn apply_round(guid: MailboxGuid, expect: [u8; 4], changes: Vec<Change>) -> Vec<u8> {
    encoded(vec![Request::Apply {
        groups: vec![ChangeGroup {
            user: ALICE.into(),
            guid,
            window: 0,
            expect,
            changes,
        }
        .into()],
    }])
}

/// A peer's Apply that puts a message at or above the mailbox's UIDNEXT without raising it
/// is either refused (4xx, nothing changed) or applied so that the store stays sound.
#[test]
fn an_apply_above_uidnext_leaves_a_sound_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mail, s) = lone_peer_server(tmp.path());
    assert_eq!(
        s.append(ALICE, "INBOX", &[&mail.file("p1"), &mail.file("p2")], None),
        [1, 2]
    );
    let guid: MailboxGuid = guid_of(&s.mailboxes(ALICE), "INBOX")
        .parse()
        .expect("a GUID");
    let root = s.root();
    let (expect, _) = mailbox_state(&s, ALICE, guid);
    let good = Mail::bytes("p9");
    let r = round(
        &s,
        &apply_round(
            guid,
            expect,
            vec![new_message(guid, 50, &good, good.clone())],
        ),
    );
    eprintln!("{} {}", r.head, String::from_utf8_lossy(&r.body));
    if r.status == 200 {
        // Taken: then UIDNEXT must have moved past it, as every other way in does.
        verify(&s.stop());
    } else {
        assert!((400..500).contains(&r.status), "{}", r.head);
        r.error();
        still_fine(&s, &root, "an Apply above UIDNEXT");
        verify(&s.stop());
    }
}

/// A peer's change stamped far ahead of this node's clock (a clock set a day wrong, or a
/// hostile peer's stamp near `Stamp::MAX_MS`, year 10889) is not applied: the round is
/// answered, the group reported not applied, and nothing changes (docs/PROTOCOL.md,
/// "Clocks"). The same change stamped in the past is applied.
#[test]
fn a_change_stamped_far_ahead_of_the_clock_is_not_applied() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (s, guid, root) = lone_peer_with_one_message(tmp.path());
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let good = Mail::bytes("p9");
    let changes = |appended_ms: u64, flag_ms: u64| {
        let (expect, mut mailbox) = mailbox_state(&s, ALICE, guid);
        mailbox.uidnext = mailbox.uidnext.max(51);
        let mut message = new_message(guid, 50, &good, good.clone());
        if let Change::Message { record, .. } = &mut message {
            record.appended.ms = appended_ms;
            let seen = merkmail::model::FlagName::parse("\\Seen").expect("flag");
            record.flags = FlagSet::initial(
                &[seen],
                Stamp {
                    ms: flag_ms,
                    counter: 0,
                    node: 9,
                },
            );
        }
        apply_round(
            guid,
            expect,
            vec![
                Change::Mailbox {
                    user: ALICE.into(),
                    record: mailbox,
                },
                message,
            ],
        )
    };
    let applied = |r: &Raw| -> Vec<bool> {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        match decode_reply(&r.body).expect("reply").replies.as_slice() {
            [Reply::Applied { applied, .. }] => applied.clone(),
            other => panic!("unexpected reply {other:?}"),
        }
    };
    let past = 1_700_000_000_000;
    for (what, appended, flag) in [
        ("an append stamped a day ahead", now_ms + 86_400_000, past),
        ("a flag stamped in year 10889", past, Stamp::MAX_MS),
    ] {
        let r = round(&s, &changes(appended, flag));
        assert_eq!(applied(&r), [false], "{what}");
        still_fine(&s, &root, what);
    }
    // The control: stamped in the past, the same change applies.
    let r = round(&s, &changes(past, past));
    assert_eq!(applied(&r), [true], "stamped in the past");
    assert_ne!(s.root(), root);
    let listed = by_mailbox(&s.list(ALICE));
    assert!(listed["INBOX"]
        .iter()
        .any(|m| m.uid == 50 && m.flags.iter().any(|f| f == "\\Seen")));
    verify(&s.stop());
}

/// An Apply commits by itself, so a request after it that the responder refuses could not
/// take it back: a round with a request after its Apply, or with two Applies, is refused
/// (400) before anything in it runs, and changes nothing. Found while fixing fuzzing's bug 8
/// (docs/RELIABILITY.md §3). The same Apply as the round's last request applies.
#[test]
fn a_round_with_anything_after_its_apply_is_refused_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (s, guid, root) = lone_peer_with_one_message(tmp.path());
    let good = Mail::bytes("p9");
    let apply = || {
        let (expect, mut mailbox) = mailbox_state(&s, ALICE, guid);
        mailbox.uidnext = mailbox.uidnext.max(51);
        let group: merkmail::sync::wire::ApplyGroup = ChangeGroup {
            user: ALICE.into(),
            guid,
            window: 0,
            expect,
            changes: vec![
                Change::Mailbox {
                    user: ALICE.into(),
                    record: mailbox,
                },
                new_message(guid, 50, &good, good.clone()),
            ],
        }
        .into();
        Request::Apply {
            groups: vec![group],
        }
    };
    let root_bytes = |r: &str| -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&r[2 * i..2 * i + 2], 16).expect("a hex root");
        }
        out
    };
    for (what, requests) in [
        (
            "a Root question after the Apply",
            vec![
                apply(),
                Request::Root {
                    root: root_bytes(&root),
                },
            ],
        ),
        ("two Applies", vec![apply(), apply()]),
    ] {
        let r = round(&s, &encoded(requests));
        assert_eq!(r.status, 400, "{what}: {}", r.head);
        r.error();
        still_fine(&s, &root, what);
    }
    // The control: the same Apply last in its round applies.
    let r = round(
        &s,
        &encoded(vec![
            Request::Root {
                root: root_bytes(&root),
            },
            apply(),
        ]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    match decode_reply(&r.body).expect("reply").replies.as_slice() {
        [Reply::Root { .. }, Reply::Applied { applied, .. }] => assert_eq!(applied, &[true]),
        other => panic!("unexpected reply {other:?}"),
    }
    assert_ne!(s.root(), root);
    verify(&s.stop());
}

fn round_path(s: &Server, method: &str, path: &str, body: &[u8]) -> Raw {
    // `/v1/sync/start` is an admin route: it wants the admin token, the rest the peer token.
    let token = match (path, &s.admin) {
        ("/v1/sync/start", Some(admin)) => admin.as_str(),
        _ => PEER_TOKEN,
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/x-merkmail-sync\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    raw(s.addr, &head, body)
}
