//! Two real Dovecots, each with `merkmail serve` beside it on a live Maildir (`init
//! --maildir`), peered over loopback: the setup tests/dovecot_replica.rs and
//! tests/dovecot_crash.rs share, and the checks they make of what IMAP clients see.

use super::dovecot::Dovecot;
use super::node::{Node, Setup, HOURLY_CHECKS};
use super::{free_port, run};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the two IMAP views get to become equal.
pub const WITHIN: Duration = Duration::from_secs(20);

/// One side: a Dovecot mail root and the merkmail node beside it.
pub struct Side {
    pub dovecot: Dovecot,
    pub node: Node,
}

/// Two sides named after `test`, each store made with `init --maildir` on its Dovecot's mail
/// root, peered with each other (not started). `None` when Dovecot is missing outside CI.
pub fn sides(test: &str) -> Option<(Side, Side)> {
    sides_with(test, HOURLY_CHECKS)
}

/// [`sides`] with other config lines for both nodes (`check_interval_s`, `backoff_max_s`).
pub fn sides_with(test: &str, config: &'static str) -> Option<(Side, Side)> {
    let da = Dovecot::find(&format!("{test}-a"))?;
    let db = Dovecot::find(&format!("{test}-b"))?;
    let (pa, pb) = (free_port(), free_port());
    let setup = Setup {
        config,
        ..Setup::http("peer-secret", "admin-secret")
    };
    let extra = "rescan_interval_s = 2\n";
    let a = Node::new(&da.work, "a", pa, &[pb], &setup, extra);
    let b = Node::new(&db.work, "b", pb, &[pa], &setup, extra);
    for (node, dovecot) in [(&a, &da), (&b, &db)] {
        run(
            &[
                "init",
                "--data",
                &node.data(),
                "--node-id",
                &node.name,
                "--maildir",
                &dovecot.template(),
            ],
            None,
        )
        .ok();
    }
    Some((
        Side {
            dovecot: da,
            node: a,
        },
        Side {
            dovecot: db,
            node: b,
        },
    ))
}

/// Waits (up to `within`) until both IMAP views are equal, and returns it.
#[track_caller]
pub fn same_view_within(a: &Side, b: &Side, what: &str, within: Duration) -> Value {
    let last;
    let deadline = Instant::now() + within;
    loop {
        let (va, vb) = (a.dovecot.imap_view(), b.dovecot.imap_view());
        if va == vb {
            return va;
        }
        if Instant::now() > deadline {
            last = (va, vb);
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    panic!(
        "{what}: the IMAP views differ after {within:?}\nA: {}\nB: {}\nA's log:\n{}\nB's log:\n{}",
        last.0,
        last.1,
        a.node.log_tail(),
        b.node.log_tail()
    );
}

/// Waits until both IMAP views are equal (within [`WITHIN`]), and returns it.
#[track_caller]
pub fn same_view(a: &Side, b: &Side, what: &str) -> Value {
    same_view_within(a, b, what, WITHIN)
}

/// The messages of `folder` in an IMAP view: `[uid, [flags], md5]` each.
pub fn messages(view: &Value, folder: &str) -> Vec<Value> {
    view[folder][1].as_array().cloned().unwrap_or_default()
}

/// The flags of the message at `uid` of `folder` in an IMAP view.
pub fn flags_of(view: &Value, folder: &str, uid: u64) -> Vec<String> {
    messages(view, folder)
        .into_iter()
        .find(|m| m[0].as_u64() == Some(uid))
        .and_then(|m| m[1].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

/// One IMAP APPEND: `sys.argv` = folder, subject, flags (may be empty).
pub const APPEND: &str = r#"
ok(m.append(sys.argv[1], sys.argv[3] or None, None, ("Subject: %s\r\n\r\nbody of %s\r\n" % (sys.argv[2], sys.argv[2])).encode()))
"#;

/// Appends one message over IMAP on `side`; its subject and body name it.
pub fn append(side: &Side, folder: &str, subject: &str, flags: &str) {
    side.dovecot.imap(APPEND, &[folder, subject, flags]);
}

/// APPENDs `sys.argv[3]` messages to `sys.argv[1]` in one IMAP session, subjects
/// `sys.argv[2]-0`, `sys.argv[2]-1`, …, sleeping `sys.argv[4]` seconds between them. Runs
/// as a whole script (no `ok`), for [`Dovecot::python_spawn`] too.
pub const APPEND_MANY: &str = r#"
import time
m = imaplib.IMAP4_stream(IMAP)
for i in range(int(sys.argv[3])):
    s = "%s-%d" % (sys.argv[2], i)
    typ, _ = m.append(sys.argv[1], None, None, ("Subject: %s\r\n\r\nbody of %s\r\n" % (s, s)).encode())
    assert typ == "OK", typ
    if float(sys.argv[4]) > 0:
        time.sleep(float(sys.argv[4]))
m.logout()
"#;

/// Appends `n` messages `PREFIX-i` to `folder` over one IMAP session on `side`.
#[track_caller]
pub fn append_many(side: &Side, folder: &str, prefix: &str, n: usize) {
    let out = side
        .dovecot
        .python(APPEND_MANY, &[folder, prefix, &n.to_string(), "0"]);
    assert!(
        out.status.success(),
        "IMAP appends failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The UIDs a folder's `dovecot-uidlist` lists, in file order (empty if it has none).
pub fn uidlist_uids(dir: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(dir.join("dovecot-uidlist")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Asserts that a folder's uidlist lists UIDs in strictly ascending order (no UID twice).
#[track_caller]
pub fn assert_uidlist_ascending(dir: &Path, what: &str) {
    let uids = uidlist_uids(dir);
    assert!(
        uids.windows(2).all(|w| w[0] < w[1]),
        "{what}: {} lists UIDs out of order or twice: {uids:?}",
        dir.join("dovecot-uidlist").display()
    );
}

/// Asserts that every message of `folder` on `side` (as IMAP shows it) has a subject no other
/// has, that no UID is there twice, and returns the subjects, sorted.
#[track_caller]
pub fn unique_subjects(side: &Side, folder: &str, what: &str) -> Vec<String> {
    let listed = side.dovecot.uids_and_subjects(folder);
    let mut uids: Vec<u32> = listed.iter().map(|(u, _)| *u).collect();
    uids.sort_unstable();
    let n = uids.len();
    uids.dedup();
    assert_eq!(uids.len(), n, "{what}: a UID twice in {folder}: {listed:?}");
    let mut subjects: Vec<String> = listed.into_iter().map(|(_, s)| s).collect();
    subjects.sort();
    let mut unique = subjects.clone();
    unique.dedup();
    assert_eq!(
        unique.len(),
        subjects.len(),
        "{what}: a message twice in {folder}: {subjects:?}"
    );
    subjects
}
