//! The daemon with real processes: three `merkmail serve` on 127.0.0.1, each with a config
//! file naming the others. Writes travel through the replication journal; a node killed with
//! SIGKILL catches up when it starts again without waiting for the check interval (which the
//! tests set to an hour); an overflowing journal falls back to a Merkle session; `sync` mode
//! waits for a peer or falls back; the operator routes and the admin-token rule.
//!
//! Every wait is a bounded poll; nothing here asserts how fast anything was.

mod common;

use common::node::{message_file, peer_of, poll, Node, Setup, HOURLY_CHECKS};
use common::{run, scratch_dir};
use merkmail::status::{Mode, Outcome, StatusView, Trigger};
use std::path::Path;
use std::time::{Duration, Instant};

const PEER_TOKEN: &str = "peer-secret";
const ADMIN_TOKEN: &str = "admin-secret";
/// How long a cluster gets to converge (it usually takes well under a second).
const CONVERGE: Duration = Duration::from_secs(30);

/// A node of these tests: an hour between checks, `extra` config lines of its own.
fn node(root: &Path, name: &str, port: u16, peers: &[u16], extra: &str) -> Node {
    let setup = Setup {
        config: HOURLY_CHECKS,
        ..Setup::http(PEER_TOKEN, ADMIN_TOKEN)
    };
    Node::new(root, name, port, peers, &setup, extra)
}

/// Polls until every node has the same root, and returns it.
#[track_caller]
fn converge(nodes: &[&Node], within: Duration) -> String {
    common::node::converge(nodes, within, "the cluster")
}

#[test]
fn three_nodes_replicate_and_a_killed_node_catches_up_at_start() {
    let tmp = scratch_dir();
    let root = tmp.path();
    let ports = [
        common::free_port(),
        common::free_port(),
        common::free_port(),
    ];
    let mut a = node(root, "a", ports[0], &[ports[1], ports[2]], "");
    let mut b = node(root, "b", ports[1], &[ports[0], ports[2]], "");
    let mut c = node(root, "c", ports[2], &[ports[0], ports[1]], "");
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    // Writes on every node reach the others through the journal (the check interval is an
    // hour: only the start-up checks and the journal can move mail).
    let m1 = a.append("alice", "INBOX", &message_file(root, "m1"));
    b.cli(&["mailbox", "create"], &["alice", "Work"]).ok();
    c.append("bob", "INBOX", &message_file(root, "m2"));
    converge(&[&a, &b, &c], CONVERGE);
    b.cli(
        &["flags"],
        &["alice", "INBOX", &m1.to_string(), "--add", "\\Seen"],
    )
    .ok();
    let root_before = converge(&[&a, &b, &c], CONVERGE);
    assert_eq!(a.list("alice"), c.list("alice"));
    let seen = c.list("alice");
    assert!(seen.to_string().contains("\\\\Seen"), "{seen}");
    let sa = a.status();
    assert!(
        sa.peers.iter().all(|p| p.journal.shipped_total >= 1),
        "a shipped its journal to both: {sa:?}"
    );

    // C dies hard; A and B keep taking writes, some of them on the same messages.
    c.kill();
    let m3 = a.append("alice", "INBOX", &message_file(root, "m3"));
    b.append("alice", "Work", &message_file(root, "m4"));
    a.cli(
        &["flags"],
        &["alice", "INBOX", &m1.to_string(), "--remove", "\\Seen"],
    )
    .ok();
    b.cli(
        &["flags"],
        &["alice", "INBOX", &m1.to_string(), "--add", "\\Flagged"],
    )
    .ok();
    b.cli(&["expunge"], &["alice", "INBOX", &m3.to_string()])
        .ok();
    b.cli(&["mailbox", "rename"], &["alice", "Work", "Projects"])
        .ok();
    let ab = converge(&[&a, &b], CONVERGE);
    assert_ne!(ab, root_before);
    // A sees C down and keeps C's journal.
    poll("a sees c unreachable", CONVERGE, || {
        !peer_of(&a.status(), &c.url()).reachable
    });
    assert!(peer_of(&a.status(), &c.url()).journal.depth > 0);

    // C comes back, but cut off (a split): it takes mail under the same UID as A did.
    // (C missed m3, so its first new message lands on m3's UID, over A's tombstone, and its
    // second on the UID A gives its own new message.)
    let isolated = c.start_isolated();
    let filler = message_file(root, "written-on-c-over-a-tombstone");
    let clash_file = message_file(root, "written-on-c-during-the-split");
    let out = run(
        &[
            "append",
            "--url",
            &isolated,
            "--token",
            ADMIN_TOKEN,
            "alice",
            "INBOX",
            &filler.display().to_string(),
            &clash_file.display().to_string(),
        ],
        None,
    )
    .ok();
    let c_uid = common::parse_uids(&out)[1];
    let a_uid = a.append(
        "alice",
        "INBOX",
        &message_file(root, "written-on-a-during-the-split"),
    );
    assert_eq!(a_uid, c_uid, "the same UID on both sides of the split");
    converge(&[&a, &b], CONVERGE);
    c.kill();

    // C comes back: it converges at once, although the next interval is an hour away.
    c.start();
    let all = converge(&[&a, &b, &c], CONVERGE);
    assert_ne!(all, ab, "the split's mail on C joined the cluster");
    // The journals A and B kept for C went first; the start-up Merkle session came after.
    assert!(
        c.log()
            .contains("caught up through the peer's journal first"),
        "{}",
        c.log()
    );
    for user in ["alice", "bob"] {
        assert_eq!(a.list(user), c.list(user), "{user}");
        assert_eq!(b.list(user), c.list(user), "{user}");
    }
    assert_eq!(
        a.cli(&["mailbox", "list"], &["alice", "--json"])
            .ok()
            .json(),
        c.cli(&["mailbox", "list"], &["alice", "--json"])
            .ok()
            .json()
    );
    // What /status says: C ran start-up checks; A saw C fail, come back, and drained C's journal.
    let sc = c.status();
    for url in [a.url(), b.url()] {
        let p = peer_of(&sc, &url);
        assert!(p.reachable, "{p:?}");
        assert!(
            p.runs.iter().any(|r| r.trigger == Trigger::Startup),
            "c's runs with {url}: {:?}",
            p.runs
        );
    }
    poll("a drained c's journal", CONVERGE, || {
        let s = a.status();
        let p = peer_of(&s, &c.url());
        p.reachable && p.journal.depth == 0
    });
    let pa = a.status();
    let pc = peer_of(&pa, &c.url());
    assert!(
        pc.runs.iter().any(|r| r.outcome == Outcome::Error),
        "{:?}",
        pc.runs
    );
    assert!(pc.checks_total >= 2);
    for n in [&mut a, &mut b, &mut c] {
        n.stop();
    }
}

#[test]
fn an_overflowing_journal_falls_back_to_merkle_and_converges() {
    let tmp = scratch_dir();
    let root = tmp.path();
    let ports = [common::free_port(), common::free_port()];
    let mut a = node(root, "a", ports[0], &[ports[1]], "journal_bound = 5");
    let mut b = node(root, "b", ports[1], &[ports[0]], "journal_bound = 5");
    a.start();
    b.start();
    a.append("alice", "INBOX", &message_file(root, "first"));
    converge(&[&a, &b], CONVERGE);
    b.kill();
    for i in 0..20 {
        a.append("alice", "INBOX", &message_file(root, &format!("m{i}")));
    }
    let s = a.status();
    let p = peer_of(&s, &b.url());
    assert!(p.journal.overflowed, "{p:?}");
    assert!(p.journal.depth <= 5, "{p:?}");
    b.start();
    converge(&[&a, &b], CONVERGE);
    assert_eq!(a.list("alice"), b.list("alice"));
    assert_eq!(b.list("alice").as_array().map(Vec::len), Some(21));
    poll(
        "the overflow is cleared by a Merkle session",
        CONVERGE,
        || !peer_of(&a.status(), &b.url()).journal.overflowed,
    );
    a.stop();
    b.stop();
}

#[test]
fn sync_mode_waits_for_a_peer_or_falls_back_after_the_timeout() {
    let tmp = scratch_dir();
    let root = tmp.path();
    let ports = [common::free_port(), common::free_port()];
    let sync = "mode = \"sync\"\nsync_timeout_ms = 800";
    let mut a = node(root, "a", ports[0], &[ports[1]], sync);
    let mut b = node(root, "b", ports[1], &[ports[0]], "");
    a.start();
    // Every peer down: the write returns after the timeout, and /status says it fell back.
    let started = Instant::now();
    a.append("alice", "INBOX", &message_file(root, "alone"));
    assert!(started.elapsed() >= Duration::from_millis(800));
    let s = a.status();
    assert_eq!(s.mode, Mode::Sync);
    assert_eq!(s.sync_fallbacks_total, 1);
    assert_eq!(peer_of(&s, &b.url()).journal.sync_fallbacks_total, 1);
    assert!(peer_of(&s, &b.url())
        .journal
        .last_sync_fallback_ms
        .is_some());
    let metrics = a.get("/metrics", None).1;
    assert!(
        metrics.contains("merkmail_write_sync_fallbacks_total 1"),
        "{metrics}"
    );

    // With the peer up, the write returns only once the peer has stored it: B already holds
    // the entry (received, maybe not yet applied) when the append answers.
    b.start();
    converge(&[&a, &b], CONVERGE);
    let uid = a.append("alice", "INBOX", &message_file(root, "together"));
    let received = b.status();
    assert!(
        received.inbound_pending > 0
            || b.list("alice")
                .to_string()
                .contains(&format!("\"uid\":{uid}")),
        "b neither holds nor applied the write: {received:?}"
    );
    assert_eq!(a.status().sync_fallbacks_total, 1, "no new fall-back");
    converge(&[&a, &b], CONVERGE);
    a.stop();
    b.stop();
}

#[test]
fn operator_routes_and_the_admin_token() {
    let tmp = scratch_dir();
    let root = tmp.path();
    let ports = [common::free_port(), common::free_port()];
    let mut a = node(root, "a", ports[0], &[ports[1]], "");
    a.start();
    a.append("secret-user", "INBOX", &message_file(root, "hidden"));
    // The mail API wants the admin token; the peer token does not open it.
    assert_eq!(a.get("/v1/mail/root", None).0, 401);
    assert_eq!(a.get("/v1/mail/root", Some(PEER_TOKEN)).0, 401);
    assert_eq!(a.get("/v1/mail/root", Some(ADMIN_TOKEN)).0, 200);
    // The peer API wants the peer token; the admin token does not open it.
    assert_eq!(a.get("/v1/sync/hello", Some(ADMIN_TOKEN)).0, 401);
    let (code, hello) = a.get("/v1/sync/hello", Some(PEER_TOKEN));
    assert_eq!(code, 200);
    assert!(hello.contains("\"node\":\"a\""), "{hello}");
    // Operator routes: open, and never a user name or mail.
    let (code, health) = a.get("/healthz", None);
    assert_eq!((code, health.as_str()), (200, "ok"));
    let (code, status) = a.get("/status", None);
    assert_eq!(code, 200);
    let view: StatusView = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(view.node, "a");
    assert_eq!(view.counts.messages, 1);
    assert_eq!(view.peers.len(), 1);
    assert_eq!(view.root, a.root());
    let (code, metrics) = a.get("/metrics", None);
    assert_eq!(code, 200);
    assert!(metrics.contains("merkmail_messages 1"), "{metrics}");
    assert!(metrics.contains(&format!(
        "merkmail_peer_up{{peer=\"http://127.0.0.1:{}\"}} 0",
        ports[1]
    )));
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().expect("value");
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line:?}");
    }
    let (code, page) = a.get("/", None);
    assert_eq!(code, 200);
    assert!(
        page.contains("<html") && page.contains(&b_url(ports[1])),
        "{page}"
    );
    for body in [&status, &metrics, &page] {
        assert!(!body.contains("secret-user") && !body.contains("hidden"));
    }
    // The terminal view.
    let human = run(&["status", "--url", &a.url()], None).ok().stdout_str();
    assert!(human.contains(&b_url(ports[1])), "{human}");
    // sync/start reaches configured peers only.
    let out = run(
        &[
            "sync",
            "--url",
            &a.url(),
            "--token",
            ADMIN_TOKEN,
            "--peer",
            "http://127.0.0.1:9",
        ],
        None,
    );
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("not one of this server's configured peers"),
        "{}",
        out.stderr
    );
    a.stop();
}

fn b_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

#[test]
fn config_errors_name_the_key_and_bind_nothing() {
    let tmp = scratch_dir();
    let port = common::free_port();
    let cases = [
        ("colour = \"red\"", "colour"),
        ("mode = \"eventually\"", "mode"),
        ("check_interval_s = 0", "check_interval_s"),
        ("[[peer]]\nurl = \"ftp://x\"", "peer[0].url"),
        ("[limits]\nmax_items = 0", "limits.max_items"),
    ];
    for (i, (extra, key)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nnode_id = \"x\"\n{extra}\n",
                tmp.path().join("d").display()
            ),
        )
        .expect("write");
        let out = run(&["serve", "--config", &path.display().to_string()], None);
        assert_eq!(out.code, Some(1), "{extra}: {out:?}");
        assert!(out.stderr.contains(key), "{extra}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "it must not have listened: {out:?}");
        assert!(
            !tmp.path().join("d").exists(),
            "nothing created for {extra}"
        );
    }
    let out = run(&["serve", "--config", "/nonexistent/merkmail.toml"], None);
    assert!(
        out.stderr.contains("/nonexistent/merkmail.toml"),
        "{}",
        out.stderr
    );
    // A flag overrides the file: the bad mode in the file is not what fails here.
    let path = tmp.path().join("flags.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:1\"\n").expect("write");
    let out = run(
        &[
            "serve",
            "--config",
            &path.display().to_string(),
            "--check-interval",
            "0",
        ],
        None,
    );
    assert!(out.stderr.contains("data_dir"), "{}", out.stderr);
}

#[test]
fn sigterm_keeps_the_journal_and_the_next_start_ships_it() {
    let tmp = scratch_dir();
    let root = tmp.path();
    let ports = [common::free_port(), common::free_port()];
    let mut a = node(root, "a", ports[0], &[ports[1]], "");
    let mut b = node(root, "b", ports[1], &[ports[0]], "");
    a.start();
    for i in 0..3 {
        a.append("alice", "INBOX", &message_file(root, &format!("kept{i}")));
    }
    let depth = peer_of(&a.status(), &b.url()).journal.depth;
    assert!(depth >= 3, "three writes wait for b: {depth}");
    a.stop();
    a.start();
    let s = a.status();
    assert_eq!(
        peer_of(&s, &b.url()).journal.depth,
        depth,
        "the journal survived the restart"
    );
    b.start();
    converge(&[&a, &b], CONVERGE);
    assert_eq!(b.list("alice").as_array().map(Vec::len), Some(3));
    poll("a shipped the kept journal", CONVERGE, || {
        let s = a.status();
        let p = peer_of(&s, &b.url());
        p.journal.depth == 0 && p.journal.shipped_total >= 1
    });
    a.stop();
    b.stop();
}
