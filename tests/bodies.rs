//! Bodies and their digests, end to end: bit rot made the realistic way (bytes flipped inside
//! a stopped server's redb file), found by `merkmail verify --bodies`, repaired by the
//! daemon's checker from a peer that holds a good copy, and left alone (and reported) when no
//! peer does; and a body whose MD5, digest or size disagrees with what comes with it is never
//! stored, whichever way it comes in (mail API, Maildir import, a replicated change, a
//! journal batch).
//!
//! Every wait is a bounded poll; nothing here asserts how fast anything was.

mod common;

use common::node::{poll, Node, Setup, HOURLY_CHECKS};
use common::run;
use merkmail::model::{Digest, JournalBatch, Md5};
use merkmail::status::StatusView;
use merkmail::store::{NewMessage, Store};
use std::path::Path;
use std::time::Duration;

const PEER_TOKEN: &str = "peer-secret";
const ADMIN_TOKEN: &str = "admin-secret";
const WITHIN: Duration = Duration::from_secs(30);
/// `verify` flags: the records and the tree only, or the bodies too.
const QUIET: &[&str] = &["--quiet"];
const BODIES: &[&str] = &["--quiet", "--bodies"];

/// One `merkmail serve` with a config file naming its peers (an hour between checks, so the
/// checks seen here are the ones at start).
fn node(root: &Path, name: &str, port: u16, peers: &[u16]) -> Node {
    let setup = Setup {
        config: HOURLY_CHECKS,
        ..Setup::http(PEER_TOKEN, ADMIN_TOKEN)
    };
    Node::new(root, name, port, peers, &setup, "")
}

/// A message with a marker found nowhere else, so its bytes can be found in the redb file.
fn marked_message(marker: &str) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nSubject: {marker}\r\n\r\n{}\r\n",
        format!("line of {marker}\r\n").repeat(40)
    )
    .into_bytes()
}

/// Bit rot: flips one bit (a letter's case) in every occurrence of `marker` in the stopped
/// node's redb file. Returns how many occurrences there were.
fn rot(dir: &Path, marker: &str) -> usize {
    let file = dir.join("merkmail.redb");
    let mut bytes = std::fs::read(&file).expect("read the redb file");
    let needle = marker.as_bytes();
    let mut found = 0;
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i] ^= 0x20;
            found += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(&file, bytes).expect("write the redb file");
    found
}

/// Two nodes that replicate to each other, A holding `messages` in alice's INBOX, in sync.
fn pair(root: &Path, messages: &[&[u8]]) -> (Node, Node) {
    let (pa, pb) = (common::free_port(), common::free_port());
    let mut a = node(root, "a", pa, &[pb]);
    let mut b = node(root, "b", pb, &[pa]);
    for n in [&a, &b] {
        n.init();
    }
    a.start();
    b.start();
    for (i, m) in messages.iter().enumerate() {
        let file = root.join(format!("m{i}.eml"));
        std::fs::write(&file, m).expect("write message");
        a.cli(
            &["append"],
            &["alice", "INBOX", &file.display().to_string()],
        )
        .ok();
    }
    poll("the pair converges", WITHIN, || {
        let ra = a.root();
        ra == b.root() && a.status().counts.messages == messages.len() as u64
    });
    (a, b)
}

fn bodies_repaired(s: &StatusView) -> u64 {
    s.peers.iter().map(|p| p.repaired.bodies_repaired).sum()
}

#[test]
fn a_body_that_rotted_on_disk_is_found_by_verify_and_repaired_from_a_peer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let marker = format!("ROT{:016x}", rand_u64());
    let good = marked_message(&marker);
    let other = marked_message("an ordinary message");
    let (mut a, mut b) = pair(tmp.path(), &[&good, &other]);
    let root = a.root();
    b.stop();

    assert!(rot(&b.dir, &marker) >= 1, "the marker is not in b's file");
    // The records and the tree hold no body bytes: plain verify passes as before.
    let plain = b.verify(QUIET).ok();
    assert!(
        plain.stdout_str().starts_with("ok:"),
        "{}",
        plain.stdout_str()
    );
    // verify --bodies names the body and the message that uses it, and fails.
    let found = b.verify(BODIES);
    assert_eq!(found.code, Some(1), "{found:?}");
    let out = found.stdout_str();
    let digest = Digest::of(&good).to_hex();
    assert!(out.contains("FAILED: 1 of 2 bodies"), "{out}");
    assert!(out.contains(&format!("body {digest}")), "{out}");
    assert!(
        out.contains("used by user \"alice\" mailbox \"INBOX\" UID 1"),
        "{out}"
    );
    // The rotten bytes are never handed out.
    let data = b.data();
    run(&["fetch", "--data", &data, "alice", "INBOX", "1"], None).error(&["damaged", &digest]);

    // B's checker asks A for a good copy at start.
    b.start();
    poll("b repairs the body from a", WITHIN, || {
        bodies_repaired(&b.status()) == 1
    });
    assert!(
        b.log()
            .contains("repaired a damaged body with the peer's copy"),
        "{}",
        b.log()
    );
    let fetched = b.cli(&["fetch"], &["alice", "INBOX", "1"]).ok();
    assert_eq!(fetched.stdout, good);
    assert_eq!(b.root(), root);
    assert_eq!(a.root(), root);
    b.stop();
    b.verify(BODIES).ok();
    assert!(b.verify(BODIES).stdout_str().contains("2 bodies"));
    a.stop();
}

#[test]
fn a_body_no_peer_holds_a_good_copy_of_is_reported_and_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let marker = format!("ROT{:016x}", rand_u64());
    let good = marked_message(&marker);
    let (mut a, mut b) = pair(tmp.path(), &[&good]);
    let root = a.root();
    a.stop();
    b.stop();
    // The same rot on both: neither holds a sound copy.
    for n in [&a, &b] {
        assert!(rot(&n.dir, &marker) >= 1);
        assert_eq!(n.verify(BODIES).code, Some(1));
    }
    let report_before = b.verify(BODIES).stdout_str();
    a.start();
    b.start();
    poll(
        "b asks a for the body and hears it has none",
        WITHIN,
        || {
            b.log()
                .contains("damaged bodies the peer holds no sound copy of")
        },
    );
    assert_eq!(bodies_repaired(&b.status()), 0);
    assert_eq!(b.root(), root);
    b.cli(&["fetch"], &["alice", "INBOX", "1"])
        .error(&["damaged"]);
    a.stop();
    b.stop();
    // Still damaged, still reported the same way; the records are as they were.
    let after = b.verify(BODIES);
    assert_eq!(after.code, Some(1));
    assert_eq!(after.stdout_str(), report_before);
}

/// A different value each run, without a clock or an RNG crate in the test.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

#[test]
fn the_mail_api_refuses_an_append_whose_stated_md5_or_digest_differs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut a = node(tmp.path(), "a", common::free_port(), &[]);
    a.init();
    a.start();
    let client = merkmail::net::client::BlockingClient::new(
        &a.url(),
        Some(ADMIN_TOKEN),
        merkmail::net::client::ClientConfig::default(),
    )
    .expect("client");
    let body = b"Subject: checked\r\n\r\nx\r\n".to_vec();
    let path = "/v1/mail/users/alice/mailboxes/INBOX/messages";
    let root = a.root();
    for (query, needle) in [
        (format!("md5={}", Md5::of(b"other").to_hex()), "MD5"),
        (
            format!("digest={}", Digest::of(b"other").to_hex()),
            "digest",
        ),
        ("md5=zz".to_string(), "md5"),
        (
            format!("md5={0},{0}", Md5::of(&body).to_hex()),
            "2 hash(es)",
        ),
    ] {
        let (status, answer) = client
            .post(&format!("{path}?{query}"), "message/rfc822", body.clone())
            .expect("POST");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert_eq!(status.as_u16(), 400, "{query}: {answer}");
        assert!(answer.contains(needle), "{query}: {answer}");
        assert_eq!(a.root(), root, "{query}");
    }
    let query = format!(
        "md5={}&digest={}",
        Md5::of(&body).to_hex(),
        Digest::of(&body).to_hex()
    );
    let (status, _) = client
        .post(&format!("{path}?{query}"), "message/rfc822", body)
        .expect("POST");
    assert_eq!(status.as_u16(), 201);
    assert_ne!(a.root(), root);
    a.stop();
    run(&["verify", "--data", &a.data(), "--bodies"], None).ok();
}

#[test]
fn a_maildir_file_whose_size_is_not_what_its_name_says_is_not_imported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let maildir = tmp.path().join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).expect("mkdir");
    }
    let whole = b"Subject: whole\r\n\r\nall of it\r\n";
    let cut = b"Subject: cut\r\n\r\nhalf";
    std::fs::write(
        maildir.join(format!("cur/1700000000.M1P1.host,S={}:2,S", whole.len())),
        whole,
    )
    .expect("write");
    std::fs::write(
        maildir.join(format!("cur/1700000001.M2P1.host,S={}:2,", cut.len() + 20)),
        cut,
    )
    .expect("write");
    let data = tmp.path().join("data").display().to_string();
    run(&["init", "--data", &data, "--node-id", "a"], None).ok();
    let out = run(
        &[
            "import-maildir",
            "--data",
            &data,
            "--quiet",
            "alice",
            &maildir.display().to_string(),
        ],
        None,
    );
    let said = format!("{}{}", out.stdout_str(), out.stderr);
    assert!(said.contains("truncated or changed"), "{said}");
    let list = run(&["list", "--data", &data, "alice", "--json"], None)
        .ok()
        .json();
    assert_eq!(common::str_fields(&list, "md5"), [Md5::of(whole).to_hex()]);
    run(&["verify", "--data", &data, "--bodies"], None).ok();
}

#[test]
fn a_journal_entry_whose_record_disagrees_with_its_body_is_not_applied() {
    let a = Store::in_memory("a").expect("store");
    a.journal_register_peers(&["b".to_string()], 1000)
        .expect("register");
    a.append(
        "u",
        "INBOX",
        vec![NewMessage {
            bytes: b"Subject: shipped\r\n\r\nx\r\n".to_vec(),
            ..NewMessage::default()
        }],
    )
    .expect("append");
    let batch: JournalBatch = a.journal_batch("b", 100, 1 << 20).expect("batch");
    let mut wrong_md5 = batch.clone();
    for e in &mut wrong_md5.entries {
        for m in e.messages.values_mut() {
            m.md5 = Md5([1; 16]);
        }
    }
    let b = Store::in_memory("b").expect("store");
    let root = b.root().expect("root");
    b.journal_receive(&wrong_md5).expect("receive");
    let out = b.journal_apply_inbound(10).expect("apply");
    assert_eq!((out.applied, out.stats.invalid), (0, 1), "{out:?}");
    assert_eq!(b.root().expect("root"), root);
    assert_eq!(b.counters().expect("counters").bodies, 0);
    assert!(b.verify().expect("verify").is_ok());
}

/// What redb does with rot it can see: after an unclean stop (SIGKILL) it recovers the file at
/// the next open and checks every page's checksum on the way. Rot in pages that every commit
/// it could fall back to shares makes the open fail, and merkmail says so in one clear line.
#[test]
fn rot_that_redb_finds_while_recovering_after_a_crash_is_one_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let marker = format!("ROT{:016x}", rand_u64());
    let mut a = node(tmp.path(), "a", common::free_port(), &[]);
    a.init();
    a.start();
    let first = tmp.path().join("first.eml");
    std::fs::write(&first, marked_message(&marker)).expect("write");
    a.cli(
        &["append"],
        &["alice", "INBOX", &first.display().to_string()],
    )
    .ok();
    // Later commits, so that no commit redb could fall back to lacks the rotten page.
    for i in 0..3 {
        let f = tmp.path().join(format!("later{i}.eml"));
        std::fs::write(&f, format!("Subject: later {i}\r\n\r\nx\r\n")).expect("write");
        a.cli(&["append"], &["alice", "INBOX", &f.display().to_string()])
            .ok();
    }
    a.kill();
    assert!(rot(&a.dir, &marker) >= 1);
    a.verify(QUIET)
        .error(&["the store is damaged", "damaged pages", "merkmail.redb"]);
}
