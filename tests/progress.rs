//! Progress on stderr for the long commands (`import-maildir`, `export-maildir`, `verify`,
//! `sync --data`, `scan`), tested against the real binary with stderr a pipe (so: plain lines). With
//! `MERKMAIL_PROGRESS_INTERVAL_MS=0` every report the work makes prints a line, so what the
//! lines say depends on the work and not on the clock; the last line carries the final counts.
//! `--quiet` prints none, and stdout (`--json` too) never holds a progress line.

mod common;

use common::{command, spawn_for_first_line, ChildGuard, Store};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

/// The messages an import commits at most at once.
const BATCH: u32 = merkmail::maildir::import::BATCH_MESSAGES as u32;
/// More than two import batches in INBOX, and a second folder.
const INBOX: u32 = 2 * BATCH + 100;
const WORK: u32 = 30;
const TOTAL: u32 = INBOX + WORK;
/// For export, verify and sync (export writes and fsyncs every file): a smaller tree.
const SMALL: (u32, u32) = (40, 20);
const SMALL_TOTAL: u32 = SMALL.0 + SMALL.1;

fn message(n: u32) -> Vec<u8> {
    format!("From: a@example.org\r\nTo: b@example.org\r\nSubject: message {n}\r\n\r\nbody {n}\r\n")
        .into_bytes()
}

/// The bytes of the first `count` messages.
fn total_bytes(count: u32) -> u64 {
    (0..count).map(|n| message(n).len() as u64).sum()
}

/// A Maildir++ tree: INBOX with `inbox` messages, `.Work` with `work`.
fn maildir(root: &Path, (inbox, work): (u32, u32)) {
    let mut n = 0;
    for (dir, count) in [(root.to_path_buf(), inbox), (root.join(".Work"), work)] {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("maildir");
        }
        if dir != root {
            std::fs::write(dir.join("maildirfolder"), b"").expect("maildirfolder");
        }
        for _ in 0..count {
            let name = format!("{}.M{n}P1.test:2,S", 1_600_000_000 + n);
            std::fs::write(dir.join("cur").join(name), message(n)).expect("message");
            n += 1;
        }
    }
}

/// Runs the binary with every progress report printed as a line.
fn run_every_report(args: &[&str]) -> Output {
    let out = command(args)
        .env("MERKMAIL_PROGRESS_INTERVAL_MS", "0")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the merkmail binary");
    assert!(
        out.status.success(),
        "`merkmail {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `N` as the lines print it (`1 130`).
fn spaced(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The counts of a line `WHAT: DONE of TOTAL UNIT, BYTES, ELAPSED`.
fn counts(line: &str, what: &str, unit: &str) -> (u64, u64) {
    let rest = line
        .strip_prefix(&format!("{what}: "))
        .unwrap_or_else(|| panic!("not a `{what}` line: {line}"));
    let (done, rest) = rest
        .split_once(" of ")
        .unwrap_or_else(|| panic!("no ` of `: {line}"));
    let (total, rest) = rest
        .split_once(&format!(" {unit}, "))
        .unwrap_or_else(|| panic!("no `{unit}`: {line}"));
    let parts: Vec<&str> = rest.split(", ").collect();
    assert_eq!(parts.len(), 2, "bytes and elapsed time expected: {line}");
    assert!(parts[1].ends_with(" s"), "no elapsed time: {line}");
    let number = |s: &str| -> u64 {
        s.replace(' ', "")
            .parse()
            .unwrap_or_else(|_| panic!("not a count {s:?}: {line}"))
    };
    (number(done), number(total))
}

/// Every line is a progress line of `what`, the counts only grow, and the last one says
/// `total of total`.
fn assert_lines(lines: &[String], what: &str, unit: &str, total: u64) {
    assert!(!lines.is_empty(), "no `{what}` line");
    let mut before = 0;
    for line in lines {
        let (done, of) = counts(line, what, unit);
        assert_eq!(of, total, "{line}");
        assert!(done >= before && done <= total, "{line} after {before}");
        before = done;
    }
    let last = lines.last().map_or("", String::as_str);
    assert!(
        last.starts_with(&format!(
            "{what}: {} of {} {unit}, ",
            spaced(total),
            spaced(total)
        )),
        "the last line does not carry the final counts: {last}"
    );
}

/// A store holding the small Maildir's mail for `alice`, imported quietly.
fn imported() -> Store {
    let s = Store::init();
    let mail = s.tmp.path().join("mail");
    maildir(&mail, SMALL);
    let out = s
        .run(
            &["import-maildir"],
            &["alice", mail.to_str().expect("utf-8"), "--quiet"],
        )
        .ok();
    assert_eq!(out.stderr, "", "--quiet printed progress");
    s
}

/// `import-maildir` or `export-maildir` of alice's mail and the Maildir at `path`, with a
/// progress line at every report.
fn transfer(verb: &str, s: &Store, path: &std::path::Path) -> std::process::Output {
    run_every_report(&[
        verb,
        "--data",
        s.data(),
        "alice",
        path.to_str().expect("utf-8"),
    ])
}

#[test]
fn import_prints_a_line_per_batch_and_the_final_counts_last() {
    let s = Store::init();
    let mail = s.tmp.path().join("mail");
    maildir(&mail, (INBOX, WORK));
    let out = transfer("import-maildir", &s, &mail);
    let lines = stderr_lines(&out);
    assert_lines(&lines, "import", "messages", TOTAL.into());
    // One line before the first batch, one per batch (INBOX: two full ones and the rest;
    // Work: all of it).
    let done: Vec<u64> = lines
        .iter()
        .map(|l| counts(l, "import", "messages").0)
        .collect();
    assert_eq!(
        done,
        [0, BATCH, 2 * BATCH, INBOX, TOTAL].map(u64::from),
        "{lines:?}"
    );
    assert!(
        lines.last().is_some_and(
            |l| l.contains(&format!(", {:.0} kB, ", total_bytes(TOTAL) as f64 / 1000.0))
        ),
        "the last line does not carry the bytes read ({}): {lines:?}",
        total_bytes(TOTAL)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("imported {TOTAL} messages")) && !stdout.contains("import:"),
        "{stdout}"
    );
}

#[test]
fn export_and_verify_report_progress_and_quiet_prints_none() {
    let s = imported();
    let out_dir = s.tmp.path().join("out");
    let out = transfer("export-maildir", &s, &out_dir);
    let lines = stderr_lines(&out);
    assert_lines(&lines, "export", "messages", SMALL_TOTAL.into());
    // A line before the first message and one after each.
    assert_eq!(lines.len(), SMALL_TOTAL as usize + 1);

    let out = run_every_report(&["verify", "--data", s.data(), "--bodies"]);
    let lines = stderr_lines(&out);
    let (tree, bodies): (Vec<String>, Vec<String>) =
        lines.into_iter().partition(|l| l.starts_with("verify: "));
    assert_lines(&tree, "verify", "messages", SMALL_TOTAL.into());
    assert_lines(&bodies, "verify --bodies", "bodies", SMALL_TOTAL.into());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok: "), "{stdout}");

    for args in [
        vec!["verify", "--data", s.data(), "--bodies", "--quiet"],
        vec![
            "export-maildir",
            "--data",
            s.data(),
            "alice",
            s.tmp.path().join("out2").to_str().expect("utf-8"),
            "-q",
        ],
    ] {
        let out = run_every_report(&args);
        assert!(
            out.stderr.is_empty(),
            "`{}` printed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A live-Maildir store's first scan takes in every user's mail: a line before the first
/// user and one after each, the last with every user done and the bytes taken in; `--quiet`
/// prints none, and `--json` stays clean.
#[test]
fn a_first_scan_reports_users_done_and_bytes() {
    let s = Store::uninitialised();
    let users = s.tmp.path().join("mail");
    maildir(&users.join("alice/Maildir"), SMALL);
    maildir(&users.join("bob/Maildir"), (5, 0));
    // The folders must not look half-made (changed in the last 2 s; docs/MAILDIR.md).
    std::thread::sleep(Duration::from_millis(2_100));
    let template = format!("{}/%u/Maildir", users.display());
    s.run(&["init"], &["--node-id", "a", "--maildir", &template])
        .ok();
    let out = run_every_report(&["scan", "--data", s.data(), "--json"]);
    let lines = stderr_lines(&out);
    assert_lines(&lines, "scan", "users", 2);
    let done: Vec<u64> = lines.iter().map(|l| counts(l, "scan", "users").0).collect();
    assert_eq!(done, [0, 1, 2], "{lines:?}");
    let bytes = total_bytes(SMALL_TOTAL + 5);
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains(&format!(", {:.1} kB, ", bytes as f64 / 1000.0))),
        "the last line does not carry the bytes taken in ({bytes}): {lines:?}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the --json report alone on stdout");
    assert_eq!(report["imported"], SMALL_TOTAL + 5, "{report}");

    let out = run_every_report(&["scan", "--data", s.data(), "-q"]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `merkmail serve --data DIR` on a loopback port: the guard and its URL.
fn serve(data: &str) -> (ChildGuard, String) {
    let mut cmd = command(["serve", "--data", data, "--listen", "127.0.0.1:0"]);
    cmd.stdin(Stdio::null()).stderr(Stdio::null());
    let (child, line) = spawn_for_first_line(cmd, Duration::from_secs(30));
    let guard = ChildGuard::from_child(child);
    let addr = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (guard, format!("http://{addr}"))
}

#[test]
fn sync_says_the_total_is_unknown_until_the_plan_and_json_stays_clean() {
    let a = imported();
    let (_server, url) = serve(a.data());

    let b = Store::init();
    let out = run_every_report(&["sync", "--data", b.data(), "--peer", &url, "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is the JSON report, nothing else");
    assert_eq!(report["copied_from_peer"], u64::from(SMALL_TOTAL));
    let lines = stderr_lines(&out);
    // The trees are compared first: no total yet, and the line says so.
    let unknown: Vec<&String> = lines.iter().filter(|l| l.contains("so far")).collect();
    assert!(!unknown.is_empty(), "{lines:?}");
    for line in &unknown {
        assert!(
            line.starts_with("sync: ")
                && line.contains("messages so far (total known once the trees are compared), "),
            "{line}"
        );
    }
    // Then every line knows the total, and the last has it all done.
    let first_known = lines.iter().position(|l| !l.contains("so far"));
    let known = &lines[first_known.unwrap_or(lines.len())..];
    assert_lines(known, "sync", "messages", SMALL_TOTAL.into());
    assert!(
        lines[..first_known.unwrap_or(0)]
            .iter()
            .all(|l| l.contains("so far")),
        "a line without the total after one with it: {lines:?}"
    );

    // Nothing left to copy: quiet prints nothing, and stdout is still only the report.
    let out = run_every_report(&["sync", "--data", b.data(), "--peer", &url, "--json", "-q"]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(again["copied_from_peer"], 0);
}

/// Three messages of 4 MiB: more than one body batch (8 MiB) either way.
fn big_messages(store: &merkmail::store::Store) {
    let messages = (0..3u8)
        .map(|n| {
            let mut bytes = format!("Subject: big {n}\r\n\r\n").into_bytes();
            bytes.resize(4 << 20, b'a' + n);
            merkmail::store::NewMessage {
                bytes,
                ..Default::default()
            }
        })
        .collect();
    store.append("alice", "INBOX", messages).expect("append");
}

/// A session's reports in both directions: no total before the plan (the messages whose
/// bodies came with their records count already), then the plan's total, the count growing
/// as body batches move, and all of it at the end.
#[test]
fn a_sessions_progress_counts_messages_as_their_bodies_move() {
    use merkmail::model::Progress;
    use merkmail::store::Store as Replica;
    use merkmail::sync::{in_process, run_with_progress};
    for pushing in [true, false] {
        let (local, peer) = (
            Replica::in_memory("local").expect("store"),
            Replica::in_memory("peer").expect("store"),
        );
        big_messages(if pushing { &local } else { &peer });
        let mut seen: Vec<Progress> = Vec::new();
        let report = run_with_progress(&local, 3, false, in_process(&peer), &mut |p| seen.push(p))
            .expect("session");
        assert!(report.equal_after);
        let what = if pushing { "pushing" } else { "fetching" };
        let first_known = seen
            .iter()
            .position(|p| p.total.is_some())
            .unwrap_or_else(|| panic!("{what}: no report with the total: {seen:?}"));
        assert!(
            first_known > 0,
            "{what}: the total was known from the start"
        );
        assert!(
            seen[first_known..].iter().all(|p| p.total == Some(3)),
            "{what}: {seen:?}"
        );
        let done: Vec<u64> = seen.iter().map(|p| p.done).collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "{what}: {seen:?}");
        assert!(
            seen.windows(2).all(|w| w[0].bytes <= w[1].bytes),
            "{what}: bytes never shrink: {seen:?}"
        );
        // Before this side writes its changes, the count is already whole.
        assert!(
            seen.windows(2)
                .any(|w| w[0] == w[1] && w[0].done == 3 && w[0].total == Some(3)),
            "{what}: no report before the local apply: {seen:?}"
        );
        // The count moves with the batches, not only at the end: a report between them.
        assert!(
            seen[first_known..].iter().any(|p| p.done > 0 && p.done < 3),
            "{what}: {seen:?}"
        );
        let last = seen.last().copied().unwrap_or_default();
        assert_eq!((last.done, last.total), (3, Some(3)), "{what}: {seen:?}");
        assert!(last.bytes > 12 << 20, "{what}: {last:?}");
        if !pushing {
            // Two bodies fit the peer's inline budget and came with their records: they count
            // as soon as the plan is made; the third came in a batch of its own.
            assert_eq!(seen[first_known].done, 2, "{seen:?}");
        }
    }
}
