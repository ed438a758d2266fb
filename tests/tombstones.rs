//! Tombstones kept until every configured peer has them, with real `merkmail serve`
//! processes and a retention of a few seconds: an expunge made while a peer is stopped holds
//! when that peer comes back later than the retention; the tombstone stays (and /status and
//! /metrics say which peer holds it back, since when) while the peer is away, and goes once
//! the peer has it; a peer removed from the configuration holds nothing back.
//!
//! Every wait is a bounded poll; nothing here asserts how fast anything was.

mod common;

use common::node::{converge, message_file, peer_of, poll, Node, Setup};
use common::{md5_hex, scratch_dir};
use std::path::Path;
use std::time::Duration;

const PEER_TOKEN: &str = "peer-secret";
const ADMIN_TOKEN: &str = "admin-secret";
const CONVERGE: Duration = Duration::from_secs(30);
/// Retention 3 s, so the purge runs every second; checks every second.
const FAST: &str = "check_interval_s = 1\nbackoff_max_s = 1\ntombstone_retention = \"3s\"\n";
const RETENTION: Duration = Duration::from_secs(3);

fn node(root: &Path, name: &str, port: u16, peers: &[u16]) -> Node {
    let setup = Setup {
        config: FAST,
        ..Setup::http(PEER_TOKEN, ADMIN_TOKEN)
    };
    Node::new(root, name, port, peers, &setup, "")
}

/// The message tombstones a node holds.
fn tombstones(n: &Node) -> u64 {
    n.status().counts.tombstones
}

/// Whether the message with this md5 is live for alice on the node.
fn live(n: &Node, md5: &str) -> bool {
    n.messages("alice").contains_key(md5)
}

/// The held-back count /status shows on `n` for the peer at `peer`.
fn held_back(n: &Node, peer: &Node) -> (u64, Option<u64>) {
    let s = n.status();
    let p = peer_of(&s, &peer.url());
    (p.tombstones_held_back, p.holding_since_ms)
}

/// Appends a message on `a`, waits until every node has it, and returns (uid, md5).
fn one_message(dir: &Path, a: &Node, all: &[&Node]) -> (u32, String) {
    let file = message_file(dir, "doomed");
    let md5 = md5_hex(&std::fs::read(&file).expect("read message"));
    let uid = a.append("alice", "INBOX", &file);
    converge(all, CONVERGE, "the message everywhere");
    for n in all {
        assert!(live(n, &md5), "{} lacks the message", n.name);
    }
    (uid, md5)
}

/// Two nodes `a` and `b` peered with each other under `dir`: one message reaches both, then
/// `b` stops and `a` expunges it. Returns both nodes (only `a` running) and the message's md5.
fn expunged_while_b_is_away(dir: &Path) -> (Node, Node, String) {
    let (pa, pb) = (common::free_port(), common::free_port());
    let mut a = node(dir, "a", pa, &[pb]);
    let mut b = node(dir, "b", pb, &[pa]);
    a.start();
    b.start();
    let (uid, md5) = one_message(dir, &a, &[&a, &b]);
    b.stop();
    a.cli(&["expunge"], &["alice", "INBOX", &uid.to_string()])
        .ok();
    (a, b, md5)
}

#[test]
fn an_expunge_made_while_a_peer_is_away_holds_when_it_returns_after_the_retention() {
    let dir = scratch_dir();
    let (mut a, mut b, md5) = expunged_while_b_is_away(dir.path());
    assert!(!live(&a, &md5));
    // Twice the retention and more: the old rule would have forgotten it by now.
    std::thread::sleep(RETENTION * 2 + Duration::from_secs(1));
    assert_eq!(tombstones(&a), 1, "a forgot the tombstone while b was away");
    poll("a shows b holding the tombstone back", CONVERGE, || {
        held_back(&a, &b).0 == 1
    });
    let (_, since) = held_back(&a, &b);
    let since = since.expect("holding_since_ms is set while something is held back");
    assert!(since <= a.status().now_ms);
    let (_, metrics) = a.get("/metrics", None);
    let peer = format!("{{peer=\"{}\"}}", b.url());
    assert!(
        metrics.contains(&format!("merkmail_tombstones_held_back{peer} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "merkmail_tombstones_holding_since_timestamp_seconds{peer} "
        )),
        "{metrics}"
    );

    b.start();
    converge(&[&a, &b], CONVERGE, "b back");
    assert!(!live(&b, &md5), "b brought the expunged message back");
    assert!(!live(&a, &md5), "b brought the expunged message back to a");
    // b has the expunge now: both nodes forget their tombstones, and nothing is held back.
    poll("the tombstones go once both have them", CONVERGE, || {
        tombstones(&a) == 0 && tombstones(&b) == 0
    });
    poll("nothing held back", CONVERGE, || {
        held_back(&a, &b) == (0, None) && held_back(&b, &a) == (0, None)
    });
    let (_, json) = a.get("/status", None);
    assert!(
        !json.contains("tombstones_held_back") && !json.contains("holding_since_ms"),
        "the fields are left out while 0: {json}"
    );
    let (_, metrics) = a.get("/metrics", None);
    assert!(
        !metrics.contains("merkmail_tombstones_held_back"),
        "{metrics}"
    );
    // Long after the retention, with the tombstones gone, the message stays expunged.
    std::thread::sleep(RETENTION + Duration::from_secs(1));
    converge(&[&a, &b], CONVERGE, "after the purge");
    assert!(!live(&a, &md5) && !live(&b, &md5));
    a.stop();
    b.stop();
}

#[test]
fn a_peer_removed_from_the_configuration_holds_no_tombstone_back() {
    let dir = scratch_dir();
    let (mut a, _b, md5) = expunged_while_b_is_away(dir.path());
    std::thread::sleep(RETENTION + Duration::from_secs(2));
    assert_eq!(tombstones(&a), 1, "b still holds it back");
    // The operator removes b: a restarts without peers and forgets the tombstone.
    a.stop();
    let mut a = node(dir.path(), "a", a.port, &[]);
    a.start();
    poll("a forgets the tombstone without b", CONVERGE, || {
        tombstones(&a) == 0
    });
    assert!(!live(&a, &md5));
    a.stop();
}

#[test]
fn three_nodes_keep_the_tombstone_for_the_one_away_and_only_that_one_holds_it_back() {
    let dir = scratch_dir();
    let (pa, pb, pc) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let mut a = node(dir.path(), "a", pa, &[pb, pc]);
    let mut b = node(dir.path(), "b", pb, &[pa, pc]);
    let mut c = node(dir.path(), "c", pc, &[pa, pb]);
    a.start();
    b.start();
    c.start();
    let (uid, md5) = one_message(dir.path(), &a, &[&a, &b, &c]);
    c.stop();
    a.cli(&["expunge"], &["alice", "INBOX", &uid.to_string()])
        .ok();
    converge(&[&a, &b], CONVERGE, "the expunge on b");
    std::thread::sleep(RETENTION * 2 + Duration::from_secs(1));
    assert_eq!(tombstones(&a), 1, "a forgot the tombstone while c was away");
    poll("a shows c, and only c, holding it back", CONVERGE, || {
        held_back(&a, &c).0 == 1 && held_back(&a, &b).0 == 0
    });
    c.start();
    converge(&[&a, &b, &c], CONVERGE, "c back");
    for n in [&a, &b, &c] {
        assert!(!live(n, &md5), "{} has the expunged message again", n.name);
    }
    poll(
        "every tombstone goes once all three have the expunge",
        CONVERGE,
        || [&a, &b, &c].iter().all(|n| tombstones(n) == 0),
    );
    std::thread::sleep(RETENTION + Duration::from_secs(1));
    converge(&[&a, &b, &c], CONVERGE, "after the purge");
    for n in [&a, &b, &c] {
        assert!(!live(n, &md5), "{} has the expunged message again", n.name);
    }
    for mut n in [a, b, c] {
        n.stop();
    }
}

#[test]
fn a_bad_retention_flag_is_refused_before_the_server_starts() {
    let dir = scratch_dir();
    let data = dir.path().join("d").display().to_string();
    let out = common::run(
        &[
            "serve",
            "--data",
            &data,
            "--listen",
            "127.0.0.1:1",
            "--tombstone-retention",
            "3w",
        ],
        None,
    );
    assert!(!out.success(), "a retention of 3w was accepted");
    for needle in ["--tombstone-retention", "3w", "30d, 12h, 90s"] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
}
