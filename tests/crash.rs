//! Crash safety: SIGKILL `merkmail import-maildir`, `append`, `expunge` and `mailbox delete`
//! part-way through, then check that the store verifies, that its counters agree with its
//! listing, that every message it lists comes back whole, that a single command took effect
//! whole or not at all, and that finishing an import afterwards gives exactly the mail there
//! is: nothing twice, nothing missing.
//!
//! Kills are timed as fractions of an uninterrupted run measured first, or fired the moment the
//! store file starts to grow, so most land mid-job on a fast machine and a slow one alike; but
//! no verdict depends on where a kill landed (each test prints where its kills landed).

mod common;

use common::{
    command, killed_by_signal, md5_hex, scratch_dir, str_field, strings_field, u64_field,
    ChildGuard, Store,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "crash-user";

/// One message file the importer should find, with what the store should make of it.
struct Expected {
    mailbox: &'static str,
    bytes: Vec<u8>,
    /// Flags and keywords, as `list --json` spells them.
    flags: BTreeSet<String>,
    /// The UID it must get (from a dovecot-uidlist, or from its place in one append), if known.
    uid: Option<u32>,
}

/// A generated Maildir++ tree and the mail in it.
struct Maildir {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    messages: Vec<Expected>,
}

/// The UIDVALIDITY of the generated `.Archive`, whose dovecot-uidlist also fixes every UID, so
/// a test can check that both survive kills and re-runs.
const ARCHIVE_UIDVALIDITY: u32 = 1_500_000_000;

fn message_bytes(n: usize) -> Vec<u8> {
    let mut bytes = format!(
        "From: sender{n}@example.org\r\nTo: {USER}@example.org\r\nSubject: message {n}\r\n\
         Message-ID: <{n}@example.org>\r\n\r\n"
    )
    .into_bytes();
    for line in 0..(n % 5) {
        bytes.extend_from_slice(format!("line {line} of message {n}\r\n").as_bytes());
    }
    if n.is_multiple_of(10) {
        // Raw bytes must come back untouched, 8-bit and NUL included.
        bytes.extend_from_slice(b"\x00\xff\xfe caf\xe9\r\n");
    }
    bytes
}

/// Writes a Maildir++ tree of `inbox + 2 * folder` messages: INBOX (cur/ and new/), `.Sent`,
/// and `.Archive` with a dovecot-uidlist; a stray file in each tmp/ must not be imported.
fn make_maildir(inbox: usize, folder: usize) -> Maildir {
    let tmp = scratch_dir();
    let root = tmp.path().join("Maildir");
    let mut messages = Vec::new();
    let mut n = 0;
    for (mailbox, dir, count) in [
        ("INBOX", String::new(), inbox),
        ("Sent", ".Sent".to_string(), folder),
        ("Archive", ".Archive".to_string(), folder),
    ] {
        let dir = root.join(dir);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("cannot create a Maildir directory");
        }
        std::fs::write(
            dir.join("tmp").join("1700000000.M0P1.host"),
            b"half-written",
        )
        .expect("cannot write to tmp/");
        let mut uidlist = format!("3 V{ARCHIVE_UIDVALIDITY} N{}\n", 100 + 3 * count + 50);
        for i in 0..count {
            n += 1;
            let bytes = message_bytes(n);
            // Zero-padded, so name order is creation order; the Archive keeps all in cur/.
            let base = format!("1700000000.M{n:06}P1.host,S={}", bytes.len());
            let in_new = mailbox != "Archive" && i % 3 == 0;
            let (info, flags): (&str, &[&str]) = match (in_new, i % 4) {
                (true, _) => ("", &[]),
                (false, 0) => (":2,S", &["\\Seen"]),
                (false, 1) => (":2,FS", &["\\Flagged", "\\Seen"]),
                (false, 2) => (":2,RS", &["\\Answered", "\\Seen"]),
                (false, _) => (":2,", &[]),
            };
            let sub = if in_new { "new" } else { "cur" };
            std::fs::write(dir.join(sub).join(format!("{base}{info}")), &bytes)
                .expect("cannot write a message file");
            let uid = (mailbox == "Archive").then(|| (100 + 3 * i) as u32);
            if let Some(uid) = uid {
                uidlist.push_str(&format!("{uid} :{base}\n"));
            }
            messages.push(Expected {
                mailbox,
                bytes,
                flags: flags.iter().map(|f| f.to_string()).collect(),
                uid,
            });
        }
        if mailbox == "Archive" {
            std::fs::write(dir.join("dovecot-uidlist"), uidlist).expect("cannot write a uidlist");
        }
    }
    Maildir {
        _tmp: tmp,
        root,
        messages,
    }
}

/// One listed message, as compared between stores: (mailbox, uid, md5, size, flags+keywords).
type Row = (String, u64, String, u64, BTreeSet<String>);

/// Checks that the store is whole, whatever moment a kill hit it: `verify` passes, `stats`
/// agrees with `list`, and every listed message is one of `expected`, complete, listed once,
/// with its flags (and its uidlist UID where it has one). Returns what is listed.
#[track_caller]
fn check_whole(s: &Store, expected: &[Expected]) -> BTreeSet<Row> {
    s.verify();
    let stats = s.stats();
    if u64_field(&stats, "users") == 0 {
        for field in ["mailboxes", "messages", "bytes"] {
            assert_eq!(
                u64_field(&stats, field),
                0,
                "{field} without a user: {stats}"
            );
        }
        s.run(&["list"], &[USER, "--json"]).error(&["unknown user"]);
        return BTreeSet::new();
    }
    assert_eq!(u64_field(&stats, "users"), 1, "{stats}");
    let rows = s.list(USER);
    assert_eq!(
        u64_field(&stats, "messages"),
        rows.len() as u64,
        "stats and list disagree"
    );
    let listed_bytes: u64 = rows.iter().map(|r| u64_field(r, "size")).sum();
    assert_eq!(
        u64_field(&stats, "bytes"),
        listed_bytes,
        "stats and list disagree on bytes"
    );
    assert_eq!(
        u64_field(&stats, "mailboxes"),
        s.mailboxes(USER).len() as u64,
        "stats and mailbox list disagree"
    );

    let by_md5: BTreeMap<(&str, String), &Expected> = expected
        .iter()
        .map(|e| ((e.mailbox, md5_hex(&e.bytes)), e))
        .collect();
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    {
        // Fetching thousands of messages one process each would take seconds, so the bodies
        // are read through the library; a few are fetched with the binary below as well.
        let store = merkmail::store::Store::open(&s.data).expect("open the store in-process");
        for row in &rows {
            let mailbox = str_field(row, "mailbox");
            let uid = u64_field(row, "uid");
            let md5 = str_field(row, "md5");
            let bytes = store
                .fetch(USER, mailbox, u32::try_from(uid).expect("UIDs are u32"))
                .unwrap_or_else(|e| panic!("{mailbox} UID {uid} is listed but not fetched: {e}"));
            assert_eq!(
                md5_hex(&bytes),
                md5,
                "{mailbox} UID {uid}: body does not match its md5"
            );
            assert_eq!(
                bytes.len() as u64,
                u64_field(row, "size"),
                "{mailbox} UID {uid}"
            );
            let want = by_md5
                .get(&(mailbox, md5.to_string()))
                .unwrap_or_else(|| panic!("{mailbox} UID {uid} is no message of that folder"));
            assert_eq!(
                bytes, want.bytes,
                "{mailbox} UID {uid} is not the file's bytes"
            );
            let flags: BTreeSet<String> = strings_field(row, "flags")
                .into_iter()
                .chain(strings_field(row, "keywords"))
                .collect();
            assert_eq!(flags, want.flags, "{mailbox} UID {uid}: flags");
            if let Some(kept) = want.uid {
                assert_eq!(
                    uid,
                    u64::from(kept),
                    "{mailbox}: message {md5} should have UID {kept}"
                );
            }
            assert!(
                seen.insert((mailbox.to_string(), md5.to_string())),
                "{mailbox}: message {md5} is stored twice"
            );
            out.insert((
                mailbox.to_string(),
                uid,
                md5.to_string(),
                bytes.len() as u64,
                flags,
            ));
        }
    }
    for row in [rows.first(), rows.last()].into_iter().flatten() {
        let uid = u64_field(row, "uid").to_string();
        let fetched = s
            .run(&["fetch"], &[USER, str_field(row, "mailbox"), &uid])
            .ok();
        assert_eq!(md5_hex(&fetched.stdout), str_field(row, "md5"));
    }
    out
}

/// How a run that was to be killed ended.
#[derive(Debug)]
enum Ending {
    /// SIGKILL landed while it ran.
    Killed,
    /// It finished before the kill, with this exit code.
    Finished(Option<i32>),
}

/// Starts `cmd`, then SIGKILLs it as soon as `now()` says so or `limit` has passed, polling
/// both (and whether the child has already exited) every 200 µs.
fn kill_when(mut cmd: Command, limit: Duration, mut now: impl FnMut() -> bool) -> Ending {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = ChildGuard::spawn(cmd);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait() {
            return Ending::Finished(status.code());
        }
        if now() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let status = child.kill();
    if killed_by_signal(&status) {
        Ending::Killed
    } else {
        Ending::Finished(status.code())
    }
}

/// Starts `cmd` and SIGKILLs it after `delay`.
fn kill_after(cmd: Command, delay: Duration) -> Ending {
    kill_when(cmd, delay, || false)
}

/// Starts `cmd` and SIGKILLs it as soon as the store file grows (the transaction is writing
/// pages), or when `limit` passes.
fn kill_when_store_file_grows(cmd: Command, s: &Store, limit: Duration) -> Ending {
    let db = s.data.join("merkmail.redb");
    let size = move || std::fs::metadata(&db).map_or(0, |m| m.len());
    let before = size();
    kill_when(cmd, limit, || size() > before)
}

/// Runs `cmd` to completion and returns how long it took; it must succeed.
#[track_caller]
fn timed_ok(mut cmd: Command) -> Duration {
    cmd.stdin(Stdio::null());
    let start = Instant::now();
    let out = ChildGuard::spawn(cmd).wait_with_output();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn import_cmd(s: &Store, maildir: &Path) -> Command {
    let mut args = vec!["import-maildir", "--data", s.data(), USER];
    args.push(maildir.to_str().expect("temporary paths are UTF-8"));
    let mut cmd = command(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// After a complete import: exactly the mail of the Maildir, each message once; the folders
/// without a uidlist numbered 1, 2, 3… with no UID spent on a killed batch or a skipped file;
/// the uidlist's UIDVALIDITY kept.
#[track_caller]
fn check_complete(s: &Store, md: &Maildir) -> BTreeSet<Row> {
    let rows = check_whole(s, &md.messages);
    assert_eq!(
        rows.len(),
        md.messages.len(),
        "messages imported twice or missing"
    );
    for mailbox in ["INBOX", "Sent"] {
        let uids: Vec<u64> = rows
            .iter()
            .filter(|r| r.0 == mailbox)
            .map(|r| r.1)
            .collect();
        let dense: Vec<u64> = (1..=uids.len() as u64).collect();
        assert_eq!(uids, dense, "{mailbox}: UIDs are not 1..={}", uids.len());
    }
    let archive = s
        .mailboxes(USER)
        .into_iter()
        .find(|m| str_field(m, "name") == "Archive")
        .expect("the Archive folder became a mailbox");
    assert_eq!(
        u64_field(&archive, "uidvalidity"),
        u64::from(ARCHIVE_UIDVALIDITY)
    );
    rows
}

fn landed(ending: &Ending, listed: usize, total: usize) -> &'static str {
    match ending {
        Ending::Finished(_) => "finished before the kill",
        Ending::Killed if listed == 0 => "killed before the first commit",
        Ending::Killed if listed == total => "killed after the last commit",
        Ending::Killed => "killed mid-import",
    }
}

#[test]
fn import_killed_at_any_moment_leaves_whole_messages_and_a_rerun_completes_it_exactly() {
    let md = make_maildir(1500, 750);
    let total = md.messages.len();

    // An uninterrupted import: what every interrupted one must end up as, and how long one takes.
    let clean = Store::init();
    let full = timed_ok(import_cmd(&clean, &md.root));
    let want = check_complete(&clean, &md);
    // Running it again imports nothing and changes nothing.
    let root = clean.root();
    timed_ok(import_cmd(&clean, &md.root));
    assert_eq!(clean.root(), root, "a second import changed the store");
    assert_eq!(u64_field(&clean.stats(), "messages"), total as u64);

    let mut mid = 0;
    let fractions = [0.15, 0.45, 0.75];
    for fraction in fractions {
        let s = Store::init();
        let delay = full.mul_f64(fraction);
        let ending = kill_after(import_cmd(&s, &md.root), delay);
        let after_kill = check_whole(&s, &md.messages);
        let how = landed(&ending, after_kill.len(), total);
        eprintln!(
            "kill after {delay:?}: {how}, {}/{total} messages kept",
            after_kill.len()
        );
        if let Ending::Finished(code) = ending {
            assert_eq!(code, Some(0), "the import failed by itself");
        }
        mid += usize::from(how == "killed mid-import");

        timed_ok(import_cmd(&s, &md.root));
        assert_eq!(
            check_complete(&s, &md),
            want,
            "the resumed import differs from a clean one"
        );
    }
    eprintln!(
        "{mid} of {} kills landed mid-import (a full import took {full:?})",
        fractions.len()
    );
}

#[test]
fn import_killed_again_and_again_on_one_store_ends_with_each_message_once() {
    let md = make_maildir(1500, 750);
    let total = md.messages.len();
    let full = timed_ok(import_cmd(&Store::init(), &md.root));

    // Each run resumes where the last was killed, skipping what is there before it adds; a
    // kill may land in either part.
    let s = Store::init();
    let mut kept = 0;
    for fraction in [0.2, 0.4, 0.6] {
        let ending = kill_after(import_cmd(&s, &md.root), full.mul_f64(fraction));
        let now = check_whole(&s, &md.messages);
        assert!(
            now.len() >= kept,
            "a killed re-run lost mail: {kept} → {}",
            now.len()
        );
        eprintln!(
            "{}: {}/{total} messages",
            landed(&ending, now.len(), total),
            now.len()
        );
        kept = now.len();
    }
    timed_ok(import_cmd(&s, &md.root));
    check_complete(&s, &md);
}

/// The messages appended before the big append, which every kill must leave alone.
fn seed(s: &Store) -> Vec<Expected> {
    let mut seeded = Vec::new();
    for n in 0..3 {
        let bytes = message_bytes(1_000_000 + n);
        let file = s.file(&format!("seed{n}"), &bytes);
        s.append(USER, "INBOX", &[&file], Some("\\Seen"));
        seeded.push(Expected {
            mailbox: "INBOX",
            bytes,
            flags: BTreeSet::from(["\\Seen".to_string()]),
            uid: Some(n as u32 + 1),
        });
    }
    seeded
}

/// Writes `count` message files into `dir` and returns their paths and what a single append
/// of them to `mailbox`, after `uids_before` UIDs were used, must store.
fn bulk_files(
    dir: &Path,
    count: usize,
    mailbox: &'static str,
    uids_before: u32,
) -> (Vec<String>, Vec<Expected>) {
    let mut paths = Vec::with_capacity(count);
    let mut expected = Vec::with_capacity(count);
    for n in 1..=count {
        let bytes = message_bytes(n);
        let path = dir.join(format!("m{n:05}.eml"));
        std::fs::write(&path, &bytes).expect("cannot write a message file");
        paths.push(
            path.to_str()
                .expect("temporary paths are UTF-8")
                .to_string(),
        );
        expected.push(Expected {
            mailbox,
            bytes,
            flags: BTreeSet::from(["$Bulk".to_string()]),
            // One call is one transaction, and takes consecutive UIDs.
            uid: Some(n as u32 + uids_before),
        });
    }
    (paths, expected)
}

/// `merkmail append --data DIR USER MAILBOX FILE… --flags $Bulk`.
fn append_cmd(s: &Store, mailbox: &str, paths: &[String]) -> Command {
    let mut args: Vec<&str> = vec!["append", "--data", s.data(), USER, mailbox];
    args.extend(paths.iter().map(String::as_str));
    args.extend(["--flags", "$Bulk"]);
    let mut cmd = command(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn clone_all(expected: &[Expected]) -> impl Iterator<Item = Expected> + '_ {
    expected.iter().map(|e| Expected {
        mailbox: e.mailbox,
        bytes: e.bytes.clone(),
        flags: e.flags.clone(),
        uid: e.uid,
    })
}

#[test]
fn append_killed_mid_transaction_stores_all_of_its_messages_or_none() {
    const FILES: usize = 2000;
    let inputs = scratch_dir();
    let (paths, batch) = bulk_files(inputs.path(), FILES, "INBOX", 3);

    let clean = Store::init();
    seed(&clean);
    let full = timed_ok(append_cmd(&clean, "INBOX", &paths));

    let mut outcomes = Vec::new();
    for fraction in [Some(0.5), Some(0.85), None] {
        let s = Store::init();
        let mut expected = seed(&s);
        let ending = match fraction {
            Some(f) => kill_after(append_cmd(&s, "INBOX", &paths), full.mul_f64(f)),
            None => kill_when_store_file_grows(append_cmd(&s, "INBOX", &paths), &s, full * 4),
        };
        expected.extend(clone_all(&batch));
        let rows = check_whole(&s, &expected);
        assert!(
            rows.len() == 3 || rows.len() == 3 + FILES,
            "a killed append left {} of its {FILES} messages",
            rows.len() - 3
        );
        let seeded = rows.iter().filter(|r| r.1 <= 3).count();
        assert_eq!(seeded, 3, "the kill disturbed the mail stored before it");
        outcomes.push(format!("{ending:?} with {} stored", rows.len() - 3));
        if rows.len() == 3 {
            // Nothing of it was kept, so nothing stands in the way of doing it again.
            timed_ok(append_cmd(&s, "INBOX", &paths));
            s.verify();
            assert_eq!(u64_field(&s.stats(), "messages"), (3 + FILES) as u64);
        }
    }
    eprintln!("append of {FILES} took {full:?}; kills: {outcomes:?}");
}

#[test]
fn expunge_and_mailbox_delete_killed_mid_transaction_happen_whole_or_not_at_all() {
    const FILES: usize = 2000;
    let inputs = scratch_dir();
    let (paths, batch) = bulk_files(inputs.path(), FILES, "Bulk", 0);
    let uids: Vec<String> = (1..=FILES).map(|uid| uid.to_string()).collect();
    let bulk_store = || {
        let s = Store::init();
        s.run(&["mailbox", "create"], &[USER, "Bulk"]).ok();
        let took = timed_ok(append_cmd(&s, "Bulk", &paths));
        (s, took)
    };

    // Expunge every message in one call: afterwards all are gone and tombstoned, or none.
    let (s, full) = bulk_store();
    let mut args: Vec<&str> = vec!["expunge", "--data", s.data(), USER, "Bulk"];
    args.extend(uids.iter().map(String::as_str));
    let ending = kill_when_store_file_grows(command(&args), &s, full * 4);
    let rows = check_whole(&s, &batch);
    let tombstones = u64_field(&s.stats(), "tombstones");
    assert!(
        (rows.len(), tombstones) == (FILES, 0) || (rows.len(), tombstones) == (0, FILES as u64),
        "a killed expunge left {} messages and {tombstones} tombstones",
        rows.len()
    );
    eprintln!("expunge: {ending:?}, {} messages left", rows.len());

    // Delete the mailbox: afterwards it is there with all its mail, or gone with a tombstone.
    let (s, full) = bulk_store();
    let delete = command(["mailbox", "delete", "--data", s.data(), USER, "Bulk"]);
    let ending = kill_when_store_file_grows(delete, &s, full * 4);
    let rows = check_whole(&s, &batch);
    let names: Vec<String> = s
        .mailboxes(USER)
        .iter()
        .map(|m| str_field(m, "name").to_string())
        .collect();
    let stats = s.stats();
    if names.contains(&"Bulk".to_string()) {
        assert_eq!(
            rows.len(),
            FILES,
            "a killed delete left part of the mailbox"
        );
        assert_eq!(u64_field(&stats, "mailbox_tombstones"), 0);
    } else {
        assert!(
            rows.is_empty(),
            "the mailbox is gone but its mail is listed"
        );
        assert_eq!(u64_field(&stats, "mailbox_tombstones"), 1);
        assert_eq!(u64_field(&stats, "tombstones"), 0);
    }
    eprintln!("delete: {ending:?}, mailboxes {names:?}");
}
