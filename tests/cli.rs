//! The command-line contract, tested against the real binary in fresh temporary directories:
//! the spellings scripts rely on, what each command prints, that the root moves exactly when
//! replicated state does, and that every error is one clear line that changes nothing.

mod common;

use common::{md5_hex, run, str_field, strings_field, u64_field, Store};
use std::collections::BTreeSet;

/// A small, distinct RFC 5322 message.
fn message(n: u32) -> Vec<u8> {
    format!("From: a@example.org\r\nTo: b@example.org\r\nSubject: message {n}\r\n\r\nbody {n}\r\n")
        .into_bytes()
}

/// A store with user `alice` holding two messages in INBOX (UIDs 1 and 2, the first \Seen)
/// and one in `Work` (UID 1), and user `bob` holding one message in INBOX.
fn populated() -> Store {
    let s = Store::init();
    let m1 = s.file("m1", &message(1));
    let m2 = s.file("m2", &message(2));
    let m3 = s.file("m3", &message(3));
    assert_eq!(s.append("alice", "INBOX", &[&m1], Some("\\Seen")), [1]);
    assert_eq!(s.append("alice", "INBOX", &[&m2], None), [2]);
    s.run(&["mailbox", "create"], &["alice", "Work"]).ok();
    assert_eq!(s.append("alice", "Work", &[&m3], None), [1]);
    assert_eq!(s.append("bob", "INBOX", &[&m1], None), [1]);
    s
}

/// The messages of one user as (mailbox, uid) pairs.
fn uids(s: &Store, user: &str) -> Vec<(String, u64)> {
    s.list(user)
        .iter()
        .map(|m| (str_field(m, "mailbox").to_string(), u64_field(m, "uid")))
        .collect()
}

fn mailbox_names(s: &Store, user: &str) -> Vec<String> {
    s.mailboxes(user)
        .iter()
        .map(|m| str_field(m, "name").to_string())
        .collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------------------
// The spellings and their output.

#[test]
fn init_makes_an_empty_store_that_verifies() {
    let s = Store::uninitialised();
    let out = run(
        &["init", "--data", s.data(), "--node-id", "mx1.example-org_2"],
        None,
    )
    .ok();
    assert!(out.stdout_str().contains("mx1.example-org_2"));
    assert!(s.data.join("merkmail.redb").is_file());
    s.root();
    s.verify();
    let stats = s.stats();
    for field in ["users", "mailboxes", "messages", "bytes", "tombstones"] {
        assert_eq!(u64_field(&stats, field), 0, "{field} in {stats}");
    }
    assert!(u64_field(&stats, "depth") > 0, "{stats}");
}

#[test]
fn append_to_a_new_users_inbox_creates_the_user_and_prints_one_uid_per_line() {
    let s = Store::init();
    let files: Vec<String> = (1..=3)
        .map(|n| s.file(&format!("m{n}"), &message(n)))
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = s
        .run(
            &["append"],
            &["alice", "INBOX", files[0], files[1], files[2]],
        )
        .ok();
    assert_eq!(out.stdout_str(), "1\n2\n3\n");
    assert_eq!(s.append("alice", "INBOX", &files[..1], None), [4]);
    assert_eq!(mailbox_names(&s, "alice"), ["INBOX"]);
    let stats = s.stats();
    assert_eq!(u64_field(&stats, "users"), 1);
    assert_eq!(u64_field(&stats, "mailboxes"), 1);
    assert_eq!(u64_field(&stats, "messages"), 4);
    let bytes: usize = (1..=3).map(|n| message(n).len()).sum::<usize>() + message(1).len();
    assert_eq!(u64_field(&stats, "bytes"), bytes as u64);
    s.verify();
}

#[test]
fn inbox_is_matched_case_insensitively() {
    let s = Store::init();
    let m = s.file("m", &message(1));
    assert_eq!(s.append("alice", "inbox", &[&m], None), [1]);
    assert_eq!(s.append("alice", "Inbox", &[&m], None), [2]);
    assert_eq!(mailbox_names(&s, "alice"), ["INBOX"]);
}

#[test]
fn fetch_returns_the_raw_bytes_unchanged() {
    let s = Store::init();
    let awkward: Vec<(&str, Vec<u8>)> = vec![
        (
            "crlf",
            b"Subject: x\r\n\r\nline one\r\nline two\r\n".to_vec(),
        ),
        (
            "nul-and-8bit",
            b"Subject: \xff\xfe\r\n\r\n\x00\x01\x02 caf\xe9 \x80\r\n".to_vec(),
        ),
        (
            "bare-lf-no-final-newline",
            b"Subject: y\n\nno newline at the end".to_vec(),
        ),
        ("lone-cr", b"a\rb\r\r\n\n\r".to_vec()),
        ("every-byte", (0..=255u8).cycle().take(4096).collect()),
    ];
    for (name, bytes) in &awkward {
        let file = s.file(name, bytes);
        let uid = s.append("alice", "INBOX", &[&file], None)[0];
        let fetched = s
            .run(&["fetch"], &["alice", "INBOX", &uid.to_string()])
            .ok();
        assert_eq!(&fetched.stdout, bytes, "{name} came back changed");
    }
}

#[test]
fn append_dash_reads_the_message_from_stdin() {
    let s = Store::init();
    let bytes = b"Subject: stdin\r\n\r\n\x00\xff\xc3\x28 binary\r\n".to_vec();
    let out = s
        .run_stdin(&["append"], &["alice", "INBOX", "-"], Some(&bytes))
        .ok();
    assert_eq!(out.stdout_str(), "1\n");
    let fetched = s.run(&["fetch"], &["alice", "INBOX", "1"]).ok();
    assert_eq!(fetched.stdout, bytes);
    let listed = s.list("alice");
    assert_eq!(str_field(&listed[0], "md5"), md5_hex(&bytes));

    // A file and stdin in one call.
    let file = s.file("m", &message(7));
    let out = s
        .run_stdin(
            &["append"],
            &["alice", "INBOX", &file, "-"],
            Some(b"second"),
        )
        .ok();
    assert_eq!(out.stdout_str(), "2\n3\n");
    assert_eq!(
        s.run(&["fetch"], &["alice", "INBOX", "3"]).ok().stdout,
        b"second"
    );
}

#[test]
fn list_json_describes_each_message_and_its_md5_is_the_files() {
    let s = Store::init();
    let bytes = message(42);
    let file = s.file("m", &bytes);
    s.append("alice", "INBOX", &[&file], Some("\\Seen,\\Flagged,$Label1"));
    s.run(&["mailbox", "create"], &["alice", "Archive/2024"])
        .ok();
    let other = b"Subject: other\r\n\r\n\x00".to_vec();
    let other_file = s.file("other", &other);
    s.append("alice", "Archive/2024", &[&other_file], None);

    let rows = s.list("alice");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let inbox = rows
        .iter()
        .find(|r| str_field(r, "mailbox") == "INBOX")
        .expect("INBOX message listed");
    assert_eq!(u64_field(inbox, "uid"), 1);
    assert_eq!(str_field(inbox, "md5"), md5_hex(&bytes));
    assert_eq!(u64_field(inbox, "size"), bytes.len() as u64);
    assert!(is_hex(str_field(inbox, "mailbox_guid"), 32), "{inbox}");
    let flags: BTreeSet<String> = strings_field(inbox, "flags").into_iter().collect();
    assert_eq!(flags, BTreeSet::from(["\\Seen".into(), "\\Flagged".into()]));
    assert_eq!(strings_field(inbox, "keywords"), ["$Label1"]);

    let archived = rows
        .iter()
        .find(|r| str_field(r, "mailbox") == "Archive/2024")
        .expect("Archive/2024 message listed");
    assert_eq!(str_field(archived, "md5"), md5_hex(&other));
    assert_eq!(u64_field(archived, "size"), other.len() as u64);
    assert!(strings_field(archived, "flags").is_empty());
    assert!(strings_field(archived, "keywords").is_empty());
    assert_ne!(
        str_field(archived, "mailbox_guid"),
        str_field(inbox, "mailbox_guid")
    );

    // One mailbox only.
    let only = s
        .run(&["list"], &["alice", "Archive/2024", "--json"])
        .ok()
        .json();
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{only}");
    // The table form names the message too.
    let table = s.run(&["list"], &["alice"]).ok().stdout_str();
    assert!(table.contains(&md5_hex(&bytes)), "{table}");
}

#[test]
fn system_flags_are_canonical_whatever_their_case() {
    let s = Store::init();
    let file = s.file("m", &message(1));
    s.append("alice", "INBOX", &[&file], Some("\\seen, \\FLAGGED,Junk"));
    let rows = s.list("alice");
    let flags: BTreeSet<String> = strings_field(&rows[0], "flags").into_iter().collect();
    assert_eq!(flags, BTreeSet::from(["\\Seen".into(), "\\Flagged".into()]));
    assert_eq!(strings_field(&rows[0], "keywords"), ["Junk"]);
}

#[test]
fn flags_add_remove_and_set() {
    let s = populated();
    let flags_of = |uid: u64| -> BTreeSet<String> {
        let rows = s.list("alice");
        let row = rows
            .iter()
            .find(|r| str_field(r, "mailbox") == "INBOX" && u64_field(r, "uid") == uid)
            .expect("message listed");
        strings_field(row, "flags")
            .into_iter()
            .chain(strings_field(row, "keywords"))
            .collect()
    };
    let set = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };

    s.run(
        &["flags"],
        &["alice", "INBOX", "2", "--add", "\\Answered,$Work"],
    )
    .ok();
    assert_eq!(flags_of(2), set(&["\\Answered", "$Work"]));
    s.run(
        &["flags"],
        &["alice", "INBOX", "2", "--remove", "\\Answered"],
    )
    .ok();
    assert_eq!(flags_of(2), set(&["$Work"]));
    s.run(
        &["flags"],
        &["alice", "INBOX", "2", "--set", "\\Draft,\\Deleted"],
    )
    .ok();
    assert_eq!(flags_of(2), set(&["\\Draft", "\\Deleted"]));
    s.run(&["flags"], &["alice", "INBOX", "2", "--set", ""])
        .ok();
    assert_eq!(flags_of(2), set(&[]));
    // The other message was not touched.
    assert_eq!(flags_of(1), set(&["\\Seen"]));
    s.verify();
}

#[test]
fn expunge_removes_the_messages_and_counts_tombstones() {
    let s = Store::init();
    let files: Vec<String> = (1..=4)
        .map(|n| s.file(&format!("m{n}"), &message(n)))
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(s.append("alice", "INBOX", &files, None), [1, 2, 3, 4]);
    s.run(&["expunge"], &["alice", "INBOX", "2", "4"]).ok();
    assert_eq!(
        uids(&s, "alice"),
        [("INBOX".to_string(), 1), ("INBOX".to_string(), 3)]
    );
    let stats = s.stats();
    assert_eq!(u64_field(&stats, "messages"), 2);
    assert_eq!(u64_field(&stats, "tombstones"), 2);
    s.run(&["fetch"], &["alice", "INBOX", "2"])
        .error(&["UID 2"]);
    // UIDs are never reused.
    assert_eq!(s.append("alice", "INBOX", &files[..1], None), [5]);
    s.verify();
}

#[test]
fn mailbox_create_list_rename_and_delete() {
    let s = Store::init();
    s.run(&["mailbox", "create"], &["alice", "Sent"]).ok();
    assert_eq!(mailbox_names(&s, "alice"), ["INBOX", "Sent"]);
    let table = s.run(&["mailbox", "list"], &["alice"]).ok().stdout_str();
    assert!(table.contains("Sent") && table.contains("INBOX"), "{table}");
    let m = s.file("m", &message(1));
    s.append("alice", "Sent", &[&m], None);
    s.run(&["mailbox", "rename"], &["alice", "Sent", "Sent Items"])
        .ok();
    assert_eq!(mailbox_names(&s, "alice"), ["INBOX", "Sent Items"]);
    assert_eq!(uids(&s, "alice"), [("Sent Items".to_string(), 1)]);
    s.run(&["mailbox", "delete"], &["alice", "Sent Items"]).ok();
    assert_eq!(mailbox_names(&s, "alice"), ["INBOX"]);
    assert!(s.list("alice").is_empty());
    let stats = s.stats();
    assert_eq!(u64_field(&stats, "messages"), 0);
    assert_eq!(u64_field(&stats, "mailboxes"), 1);
    s.verify();
}

#[test]
fn rename_moves_child_mailboxes_and_their_messages() {
    let s = Store::init();
    for name in ["A", "A/B", "A/B/C", "AB", "Other"] {
        s.run(&["mailbox", "create"], &["alice", name]).ok();
    }
    let m = s.file("m", &message(1));
    s.append("alice", "A/B/C", &[&m], None);
    let guid_before = str_field(&s.list("alice")[0], "mailbox_guid").to_string();

    s.run(&["mailbox", "rename"], &["alice", "A", "Z/Y"]).ok();
    let names: BTreeSet<String> = mailbox_names(&s, "alice").into_iter().collect();
    let expected: BTreeSet<String> = ["INBOX", "Z/Y", "Z/Y/B", "Z/Y/B/C", "AB", "Other"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, expected, "AB is a sibling, not a child, and stays");
    let rows = s.list("alice");
    assert_eq!(rows.len(), 1);
    assert_eq!(str_field(&rows[0], "mailbox"), "Z/Y/B/C");
    assert_eq!(str_field(&rows[0], "mailbox_guid"), guid_before);
    assert_eq!(
        s.run(&["fetch"], &["alice", "Z/Y/B/C", "1"]).ok().stdout,
        message(1)
    );
    s.run(&["list"], &["alice", "A/B/C"]).error(&["A/B/C"]);
    s.verify();
}

#[test]
fn root_tree_and_stats_describe_the_store() {
    let s = populated();
    let root = s.root();
    let tree = s.run(&["tree"], &[]).ok().stdout_str();
    assert!(
        tree.contains(&root[..16]),
        "tree does not show the root {root}:\n{tree}"
    );
    s.run(&["tree"], &["alice"]).ok();
    let mailbox_tree = s
        .run(&["tree"], &["alice", "Work", "--depth", "5"])
        .ok()
        .stdout_str();
    assert!(mailbox_tree.contains("Work"), "{mailbox_tree}");

    let stats = s.stats();
    assert_eq!(u64_field(&stats, "users"), 2);
    assert_eq!(u64_field(&stats, "mailboxes"), 3);
    assert_eq!(u64_field(&stats, "messages"), 4);
    let listed: u64 = ["alice", "bob"]
        .iter()
        .flat_map(|u| s.list(u))
        .map(|m| u64_field(&m, "size"))
        .sum();
    assert_eq!(u64_field(&stats, "bytes"), listed);
    assert_eq!(u64_field(&stats, "tombstones"), 0);
    assert!(u64_field(&stats, "depth") > 0);
    let plain = s.run(&["stats"], &[]).ok().stdout_str();
    assert!(
        plain.contains("messages") && plain.contains(&root),
        "{plain}"
    );
}

// ---------------------------------------------------------------------------------------------
// The root moves exactly when replicated state does.

#[test]
fn root_changes_on_every_change_and_verify_passes_after_each() {
    let s = Store::init();
    let m1 = s.file("m1", &message(1));
    let m2 = s.file("m2", &message(2));
    let mut root = s.root();
    let steps: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "append to a new user",
            vec!["append"],
            vec!["alice", "INBOX", &m1],
        ),
        (
            "append",
            vec!["append"],
            vec!["alice", "INBOX", &m2, "--flags", "$Junk"],
        ),
        (
            "append the same bytes again",
            vec!["append"],
            vec!["alice", "INBOX", &m1],
        ),
        (
            "add a flag",
            vec!["flags"],
            vec!["alice", "INBOX", "1", "--add", "\\Seen"],
        ),
        (
            "add a keyword",
            vec!["flags"],
            vec!["alice", "INBOX", "1", "--add", "$Label1"],
        ),
        (
            "remove a flag",
            vec!["flags"],
            vec!["alice", "INBOX", "1", "--remove", "\\Seen"],
        ),
        (
            "set flags",
            vec!["flags"],
            vec!["alice", "INBOX", "2", "--set", "\\Answered"],
        ),
        (
            "clear flags",
            vec!["flags"],
            vec!["alice", "INBOX", "2", "--set", ""],
        ),
        ("expunge", vec!["expunge"], vec!["alice", "INBOX", "3"]),
        (
            "create a mailbox",
            vec!["mailbox", "create"],
            vec!["alice", "Work"],
        ),
        (
            "create a child mailbox",
            vec!["mailbox", "create"],
            vec!["alice", "Work/2024"],
        ),
        (
            "append to it",
            vec!["append"],
            vec!["alice", "Work/2024", &m1],
        ),
        (
            "rename",
            vec!["mailbox", "rename"],
            vec!["alice", "Work", "Job"],
        ),
        (
            "rename back",
            vec!["mailbox", "rename"],
            vec!["alice", "Job", "Work"],
        ),
        (
            "second user",
            vec!["mailbox", "create"],
            vec!["bob", "Drafts"],
        ),
        (
            "delete a mailbox with mail",
            vec!["mailbox", "delete"],
            vec!["alice", "Work/2024"],
        ),
        (
            "delete an empty mailbox",
            vec!["mailbox", "delete"],
            vec!["alice", "Work"],
        ),
        (
            "expunge the last",
            vec!["expunge"],
            vec!["alice", "INBOX", "1", "2"],
        ),
    ];
    for (what, sub, rest) in steps {
        s.run(&sub, &rest).ok();
        let now = s.root();
        assert_ne!(now, root, "the root did not change after: {what}");
        s.verify();
        root = now;
    }
}

#[test]
fn no_op_flag_changes_leave_the_root_alone() {
    let s = populated();
    let root = s.root();
    let noops: [&[&str]; 6] = [
        &["alice", "INBOX", "1", "--add", "\\Seen"],
        &["alice", "INBOX", "1", "--add", "\\seen"],
        &["alice", "INBOX", "1", "--remove", "\\Draft,$Nope"],
        &["alice", "INBOX", "1", "--set", "\\Seen"],
        &["alice", "INBOX", "2", "--remove", "\\Seen"],
        &["alice", "INBOX", "2", "--add", ""],
    ];
    for rest in noops {
        s.run(&["flags"], rest).ok();
        assert_eq!(
            s.root(),
            root,
            "the root changed after no-op `flags {}`",
            rest.join(" ")
        );
    }
    s.verify();
}

// ---------------------------------------------------------------------------------------------
// Errors: one line on stderr that names the problem, a non-zero exit, and nothing changed.

/// Runs every case against `s` and checks that each fails as described and changes nothing.
#[track_caller]
fn check_errors(s: &Store, cases: &[(&[&str], &[&str], &[&str])]) {
    let users = ["alice", "bob"];
    let before = s.snapshot(&users);
    for (sub, rest, needles) in cases {
        s.run(sub, rest).error(needles);
        assert_eq!(
            s.snapshot(&users),
            before,
            "`merkmail {} {}` failed but changed the store",
            sub.join(" "),
            rest.join(" ")
        );
    }
    s.verify();
}

#[test]
fn unknown_users_mailboxes_and_uids_are_errors_that_change_nothing() {
    let s = populated();
    let m = s.file("new", &message(99));
    check_errors(
        &s,
        &[
            (&["list"], &["carol"], &["unknown user", "carol"]),
            (
                &["list"],
                &["carol", "INBOX", "--json"],
                &["unknown user", "carol"],
            ),
            (&["mailbox", "list"], &["carol"], &["unknown user", "carol"]),
            (
                &["fetch"],
                &["carol", "INBOX", "1"],
                &["unknown user", "carol"],
            ),
            (
                &["append"],
                &["carol", "Work", &m],
                &["unknown user", "carol"],
            ),
            (&["append"], &["alice", "Play", &m], &["no mailbox", "Play"]),
            (&["append"], &["alice", "work", &m], &["no mailbox", "work"]),
            (&["list"], &["alice", "Play"], &["no mailbox", "Play"]),
            (&["fetch"], &["alice", "Play", "1"], &["no mailbox", "Play"]),
            (&["fetch"], &["alice", "INBOX", "3"], &["UID 3"]),
            (&["fetch"], &["alice", "INBOX", "0"], &["UID 0"]),
            (
                &["flags"],
                &["alice", "INBOX", "9", "--add", "\\Seen"],
                &["UID 9"],
            ),
            (
                &["flags"],
                &["alice", "Play", "1", "--add", "\\Seen"],
                &["no mailbox", "Play"],
            ),
            (
                &["flags"],
                &["carol", "INBOX", "1", "--add", "\\Seen"],
                &["unknown user"],
            ),
            (&["expunge"], &["alice", "INBOX", "7"], &["UID 7"]),
            (
                &["expunge"],
                &["alice", "Play", "1"],
                &["no mailbox", "Play"],
            ),
            (
                &["expunge"],
                &["carol", "INBOX", "1"],
                &["unknown user", "carol"],
            ),
            (
                &["mailbox", "delete"],
                &["alice", "Play"],
                &["no mailbox", "Play"],
            ),
            (
                &["mailbox", "rename"],
                &["alice", "Play", "Games"],
                &["no mailbox", "Play"],
            ),
            (
                &["mailbox", "rename"],
                &["carol", "Play", "Games"],
                &["unknown user"],
            ),
            (&["tree"], &["alice", "Play"], &["no mailbox", "Play"]),
        ],
    );
}

#[test]
fn expunge_with_one_unknown_uid_expunges_none() {
    let s = populated();
    check_errors(
        &s,
        &[
            (&["expunge"], &["alice", "INBOX", "1", "5", "2"], &["UID 5"]),
            (&["expunge"], &["alice", "INBOX", "1", "2", "3"], &["UID 3"]),
        ],
    );
    assert_eq!(uids(&s, "alice").len(), 3);
}

#[test]
fn malformed_flags_are_errors_that_change_nothing() {
    let s = populated();
    let m = s.file("new", &message(99));
    check_errors(
        &s,
        &[
            (
                &["flags"],
                &["alice", "INBOX", "1", "--add", "bad flag"],
                &["bad flag"],
            ),
            (
                &["flags"],
                &["alice", "INBOX", "1", "--add", "\\Recent"],
                &["\\\\Recent"],
            ),
            (
                &["flags"],
                &["alice", "INBOX", "1", "--set", "\\Seen,\\Bogus"],
                &["\\\\Bogus"],
            ),
            (
                &["flags"],
                &["alice", "INBOX", "1", "--remove", "a(b"],
                &["a(b"],
            ),
            (
                &["append"],
                &["alice", "INBOX", &m, "--flags", "\\Recent"],
                &["\\\\Recent"],
            ),
            (
                &["append"],
                &["alice", "INBOX", &m, "--flags", "\\Seen,bad flag"],
                &["bad flag"],
            ),
            (
                &["append"],
                &["dave", "INBOX", &m, "--flags", "x\"y"],
                &["flag"],
            ),
        ],
    );
    s.run(&["list"], &["dave"]).error(&["unknown user"]);
}

#[test]
fn bad_user_and_mailbox_names_are_errors_that_change_nothing() {
    let s = populated();
    let m = s.file("new", &message(99));
    let long = "x".repeat(256);
    check_errors(
        &s,
        &[
            (&["append"], &["a/b", "INBOX", &m], &["user name", "a/b"]),
            (
                &["append"],
                &["a\nb", "INBOX", &m],
                &["user name", "control"],
            ),
            (
                &["append"],
                &["a\tb", "INBOX", &m],
                &["user name", "control"],
            ),
            (
                &["append"],
                &["a\u{1}b", "INBOX", &m],
                &["user name", "control"],
            ),
            (&["append"], &["", "INBOX", &m], &["user name"]),
            (&["append"], &[&long, "INBOX", &m], &["user name"]),
            (
                &["mailbox", "create"],
                &["a/b", "Work"],
                &["user name", "a/b"],
            ),
            (
                &["mailbox", "create"],
                &["a\nb", "Work"],
                &["user name", "control"],
            ),
            (
                &["mailbox", "create"],
                &["alice", "a//b"],
                &["mailbox name"],
            ),
            (
                &["mailbox", "create"],
                &["alice", "/abs"],
                &["mailbox name"],
            ),
            (
                &["mailbox", "create"],
                &["alice", "x\ty"],
                &["mailbox name"],
            ),
            (
                &["mailbox", "create"],
                &["alice", "Work"],
                &["already", "Work"],
            ),
            (
                &["mailbox", "create"],
                &["alice", "inbox"],
                &["already", "INBOX"],
            ),
        ],
    );
}

#[test]
fn inbox_cannot_be_deleted_or_renamed() {
    let s = populated();
    check_errors(
        &s,
        &[
            (&["mailbox", "delete"], &["alice", "INBOX"], &["INBOX"]),
            (&["mailbox", "delete"], &["alice", "inbox"], &["INBOX"]),
            (
                &["mailbox", "rename"],
                &["alice", "INBOX", "Old"],
                &["INBOX"],
            ),
            (
                &["mailbox", "rename"],
                &["alice", "Work", "INBOX"],
                &["INBOX"],
            ),
            (
                &["mailbox", "rename"],
                &["alice", "Work", "Work/Sub"],
                &["below"],
            ),
        ],
    );
    assert_eq!(mailbox_names(&s, "alice"), ["INBOX", "Work"]);
}

#[test]
fn rename_onto_an_existing_mailbox_changes_nothing() {
    let s = populated();
    s.run(&["mailbox", "create"], &["alice", "Play"]).ok();
    s.run(&["mailbox", "create"], &["alice", "Play/Sub"]).ok();
    s.run(&["mailbox", "create"], &["alice", "Games/Sub"]).ok();
    check_errors(
        &s,
        &[
            (
                &["mailbox", "rename"],
                &["alice", "Play", "Work"],
                &["already", "Work"],
            ),
            // The parent is free but a child's new name is taken: nothing moves.
            (
                &["mailbox", "rename"],
                &["alice", "Play", "Games"],
                &["already", "Games/Sub"],
            ),
        ],
    );
}

#[test]
fn a_missing_input_file_appends_nothing() {
    let s = populated();
    let good = s.file("good", &message(50));
    let missing = s.tmp.path().join("no-such-file");
    let missing = missing.to_str().expect("UTF-8 path");
    check_errors(
        &s,
        &[
            (&["append"], &["alice", "INBOX", missing], &["no-such-file"]),
            (
                &["append"],
                &["alice", "INBOX", &good, missing, &good],
                &["no-such-file"],
            ),
            (
                &["append"],
                &["erin", "INBOX", &good, missing],
                &["no-such-file"],
            ),
        ],
    );
    s.run(&["list"], &["erin"]).error(&["unknown user"]);
}

#[test]
fn a_directory_that_is_not_a_store_is_an_error_that_creates_nothing() {
    let s = Store::uninitialised();
    let dir = s.data();
    for (sub, rest) in [
        (vec!["root"], vec![]),
        (vec!["verify"], vec![]),
        (vec!["stats"], vec!["--json"]),
        (vec!["list"], vec!["alice"]),
        (vec!["mailbox", "create"], vec!["alice", "Work"]),
    ] {
        s.run(&sub, &rest).error(&["not a merkmail store", dir]);
        assert!(!s.data.exists(), "`{}` created {dir}", sub.join(" "));
    }
    let m = s.file("m", &message(1));
    s.run(&["append"], &["alice", "INBOX", &m])
        .error(&["not a merkmail store"]);
    assert!(!s.data.exists());

    // An empty directory is not a store either, and stays empty.
    std::fs::create_dir(&s.data).expect("mkdir");
    s.run(&["root"], &[]).error(&["not a merkmail store"]);
    s.run(&["append"], &["alice", "INBOX", &m])
        .error(&["not a merkmail store"]);
    let left: Vec<_> = std::fs::read_dir(&s.data).expect("readdir").collect();
    assert!(
        left.is_empty(),
        "files appeared in an empty data dir: {left:?}"
    );
}

#[test]
fn a_file_that_is_not_a_redb_database_is_an_error_and_is_left_alone() {
    let s = Store::uninitialised();
    std::fs::create_dir(&s.data).expect("mkdir");
    let db = s.data.join("merkmail.redb");
    let junk = b"this is not a redb file\n".repeat(200);
    std::fs::write(&db, &junk).expect("write junk");
    s.run(&["root"], &[]).error(&[s.data()]);
    let m = s.file("m", &message(1));
    s.run(&["append"], &["alice", "INBOX", &m])
        .error(&[s.data()]);
    assert_eq!(std::fs::read(&db).expect("read back"), junk);
}

#[test]
fn init_refuses_an_existing_store_and_a_bad_node_id() {
    let s = populated();
    check_errors(
        &s,
        &[
            (
                &["init"],
                &["--node-id", "test-node"],
                &["already holds a merkmail store"],
            ),
            (
                &["init"],
                &["--node-id", "other"],
                &["already holds a merkmail store"],
            ),
            (&["init"], &["--node-id", "bad id"], &["node id", "bad id"]),
        ],
    );
    let fresh = Store::uninitialised();
    let long = "n".repeat(65);
    for bad in ["bad id", "", "a/b", "é", &long] {
        run(&["init", "--data", fresh.data(), "--node-id", bad], None).error(&["node id"]);
        assert!(
            !fresh.data.exists(),
            "init with node id {bad:?} created the directory"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// One process at a time.

#[test]
fn a_second_process_gets_a_clear_error_while_the_store_is_open() {
    let s = populated();
    let before = s.snapshot(&["alice", "bob"]);
    let m = s.file("new", &message(77));
    {
        // No command holds the store open for long (the append reads its input before it
        // opens the store), so this test process holds it, as a running daemon would.
        let _held = merkmail::store::Store::open(&s.data).expect("open the store in-process");
        for (sub, rest) in [
            (vec!["root"], vec![]),
            (vec!["verify"], vec![]),
            (vec!["list"], vec!["alice", "--json"]),
            (vec!["append"], vec!["alice", "INBOX", m.as_str()]),
            (vec!["expunge"], vec!["alice", "INBOX", "1"]),
            (vec!["mailbox", "create"], vec!["alice", "Play"]),
        ] {
            s.run(&sub, &rest)
                .error(&["in use by another process", s.data()]);
        }
        run(&["init", "--data", s.data(), "--node-id", "x"], None).error(&["already"]);
    }
    // Released: everything works again, and the refused commands left no trace.
    assert_eq!(s.snapshot(&["alice", "bob"]), before);
    s.verify();
    assert_eq!(s.append("alice", "INBOX", &[&m], None), [3]);
}

// ---------------------------------------------------------------------------------------------
// The store file's size: `compact` gives free pages back, `stats` shows the size.

fn file_len(s: &Store) -> u64 {
    std::fs::metadata(s.data.join("merkmail.redb"))
        .expect("stat the store file")
        .len()
}

#[test]
fn compact_gives_free_pages_back_and_changes_no_mail() {
    let s = populated();
    // Expunges and a deleted mailbox leave free pages behind in the file.
    s.run(&["expunge"], &["alice", "INBOX", "1"]).ok();
    s.run(&["mailbox", "delete"], &["alice", "Work"]).ok();
    let users = ["alice", "bob"];
    // The mail as the CLI lists it (not `snapshot`, whose stats carry the file's size).
    let mail = |s: &Store| -> Vec<serde_json::Value> {
        users
            .iter()
            .flat_map(|u| s.list(u).into_iter().chain(s.mailboxes(u)))
            .collect()
    };
    let (root, snapshot, before) = (s.root(), mail(&s), file_len(&s));

    let line = s.run(&["compact"], &[]).ok().stdout_str();
    assert!(
        line.starts_with("compacted the store file: ") && line.lines().count() == 1,
        "{line}"
    );
    let after = file_len(&s);
    assert!(after <= before, "the file grew from {before} to {after}");
    s.verify();
    assert_eq!(s.root(), root);
    assert_eq!(mail(&s), snapshot);

    // Again, as JSON: the sizes it read before and after, and still the same mail.
    let json = s.run(&["compact"], &["--json"]).ok().json();
    let (before, after) = (
        u64_field(&json, "file_bytes_before"),
        u64_field(&json, "file_bytes_after"),
    );
    // The sizes are the open store's (redb sizes the file a little differently while it is
    // open), so they are compared with each other rather than with the closed file's.
    assert!(after <= before && after > 0, "{json}");
    assert!(file_len(&s) <= before, "{json}");
    s.verify();
    assert_eq!(s.root(), root);
}

#[test]
fn compact_refuses_a_store_that_a_server_holds() {
    let s = populated();
    let before = file_len(&s);
    let mut serve = common::command(["serve", "--data", s.data(), "--listen", "127.0.0.1:0"]);
    serve.stderr(std::process::Stdio::null());
    let (child, line) = common::spawn_for_first_line(serve, std::time::Duration::from_secs(30));
    let mut server = common::ChildGuard::from_child(child);
    assert!(line.starts_with("listening on "), "{line:?}");

    let refused = s.run(&["compact"], &[]);
    assert!(refused.stdout_str().is_empty(), "{}", refused.stdout_str());
    // One line on stderr that names the store and why (`error` checks both).
    refused.error(&["in use by another process", s.data()]);
    assert_eq!(file_len(&s), before);

    // Once the server has stopped, the same command works.
    common::stop_serve("serve", &mut server, std::time::Duration::from_secs(30));
    s.run(&["compact"], &[]).ok();
    s.verify();
}

#[test]
fn stats_shows_the_files_size_beside_the_mails() {
    let s = populated();
    let stats = s.stats();
    let mail = u64_field(&stats, "bytes");
    assert!(u64_field(&stats, "file_bytes") > 0, "{stats}");
    let plain = s.run(&["stats"], &[]).ok().stdout_str();
    let lines: Vec<&str> = plain.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("file "))
        .unwrap_or_else(|| panic!("no file line:\n{plain}"));
    // Right below the mail's bytes, in the same column as every other value, e.g.
    // `file               81.9 kB (81920 bytes, 292.57 × the mail)`.
    assert!(lines[at - 1].starts_with("bytes "), "{plain}");
    assert_eq!(&lines[at][..19], "file               ", "{plain}");
    let value = &lines[at][19..];
    let exact = value
        .split_once(" (")
        .and_then(|(_, rest)| rest.split_once(" bytes, "))
        .and_then(|(n, _)| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no exact size in {value:?}"));
    assert!(exact > 0, "{value}");
    let times = exact as f64 / mail as f64;
    assert!(
        value.ends_with(&format!("({exact} bytes, {times:.2} × the mail)")),
        "{value}"
    );
    // The other lines are the ones stats always printed, in their order.
    let labels: Vec<&str> = lines
        .iter()
        .filter(|l| !l.starts_with("file "))
        .map(|l| l[..18].trim_end())
        .collect();
    assert_eq!(
        labels,
        [
            "node",
            "users",
            "mailboxes",
            "messages",
            "bytes",
            "bodies (distinct)",
            "tombstones",
            "tree depth",
            "root"
        ]
    );
}

#[test]
fn space_says_where_the_files_bytes_go_per_table() {
    let s = populated();
    let stats = s.stats();
    let json = s.run(&["space"], &["--json"]).ok().json();
    assert_eq!(u64_field(&json, "mail_bytes"), u64_field(&stats, "bytes"));
    let file = u64_field(&json, "file_bytes");
    let allocated = u64_field(&json, "allocated_bytes");
    assert!(allocated > 0 && allocated <= file, "{json}");
    assert_eq!(u64_field(&json, "unallocated_bytes"), file - allocated);
    let tables = json["tables"].as_array().expect("tables");
    let rows = |name: &str| {
        tables
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| u64_field(t, "rows"))
    };
    // Four messages, three distinct bodies (bob's is alice's first), each counted once.
    assert_eq!(rows("messages"), Some(4), "{json}");
    assert_eq!(rows("body_refs"), Some(3), "{json}");
    // Only tables that hold something are listed.
    assert!(tables.iter().all(|t| u64_field(t, "rows") > 0), "{json}");
    let plain = s.run(&["space"], &[]).ok().stdout_str();
    assert!(plain.starts_with("mail "), "{plain}");
    assert!(plain.lines().any(|l| l.starts_with("messages ")), "{plain}");
}

#[test]
fn compact_after_an_import_leaves_no_room_the_file_doubled_into() {
    let s = Store::init();
    // 400 messages of about 6 kB: the file grows, and redb doubles it when it does.
    let inbox = s.tmp.path().join("mail");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).expect("maildir");
    }
    for n in 0..400u32 {
        let body = format!("Subject: {n}\r\n\r\n{}\r\n", "a line of text. ".repeat(400));
        let name = format!("{}.M{n}P1.test:2,S", 1_600_000_000 + n);
        std::fs::write(inbox.join("cur").join(name), body).expect("message");
    }
    s.run(
        &["import-maildir"],
        &["alice", inbox.to_str().expect("utf-8")],
    )
    .ok();
    s.run(&["compact"], &[]).ok();
    let json = s.run(&["space"], &["--json"]).ok().json();
    let (file, free) = (
        u64_field(&json, "file_bytes"),
        u64_field(&json, "unallocated_bytes"),
    );
    assert!(u64_field(&json, "mail_bytes") > 2_000_000, "{json}");
    // At most a few pages beyond what redb has allocated.
    assert!(
        free * 20 <= file,
        "{free} of {file} bytes unallocated: {json}"
    );
    s.verify();
}

// ---------------------------------------------------------------------------------------------
// Known bugs in src/, each with the input that shows it. Ignored so the suite stays green;
// run them with `cargo test --test cli -- --ignored`, and drop the `ignore` once fixed.

#[test]
fn an_io_error_names_its_cause_once() {
    let s = Store::uninitialised();
    let file = s.file("plain-file", b"not a directory");
    let data = format!("{file}/data");
    let line = run(&["init", "--data", &data, "--node-id", "n1"], None).error(&[&data]);
    // Today: "cannot create …/plain-file/data: Not a directory (os error 20): Not a directory
    // (os error 20)".
    assert_eq!(line.matches("(os error").count(), 1, "{line}");
}

#[test]
fn expunge_of_a_uid_given_twice_expunges_it_once() {
    let s = populated();
    // Today: "mailbox \"INBOX\" of user \"alice\" has no message with UID 1", though it has.
    s.run(&["expunge"], &["alice", "INBOX", "1", "1"]).ok();
    assert_eq!(
        uids(&s, "alice"),
        [("INBOX".to_string(), 2), ("Work".to_string(), 1)]
    );
    assert_eq!(u64_field(&s.stats(), "tombstones"), 1);
}

#[test]
fn rename_one_level_up_over_its_own_childs_name() {
    let s = Store::init();
    s.run(&["mailbox", "create"], &["alice", "P/Q"]).ok();
    s.run(&["mailbox", "create"], &["alice", "P/Q/Q"]).ok();
    // P does not exist, and P/Q is free once P/Q itself has moved. Today: "user \"alice\"
    // already has a mailbox \"P/Q\"".
    s.run(&["mailbox", "rename"], &["alice", "P/Q", "P"]).ok();
    assert_eq!(mailbox_names(&s, "alice"), ["INBOX", "P", "P/Q"]);
    s.verify();
}

// ---------------------------------------------------------------------------------------------
// Batch work: UID sets, many UIDs, dates from files, mbox files, closed pipes (issue 13).

/// A store whose INBOX holds UIDs 1, 2, 3, 5 and 6 (4 was expunged) for `alice`.
fn with_a_gap() -> Store {
    let s = Store::init();
    let files: Vec<String> = (1..=6)
        .map(|n| s.file(&format!("m{n}"), &message(n)))
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(s.append("alice", "INBOX", &files, None), [1, 2, 3, 4, 5, 6]);
    s.run(&["expunge"], &["alice", "INBOX", "4"]).ok();
    s
}

/// The INBOX UIDs of `alice` that carry `keyword`.
fn with_keyword(s: &Store, keyword: &str) -> Vec<u64> {
    s.list("alice")
        .iter()
        .filter(|m| strings_field(m, "keywords").iter().any(|k| k == keyword))
        .map(|m| u64_field(m, "uid"))
        .collect()
}

#[test]
fn flags_take_uid_sets_with_star_and_reversed_ranges() {
    let s = with_a_gap();
    let out = s
        .run(&["flags"], &["alice", "INBOX", "1:3,5:*", "--add", "Junk"])
        .ok();
    assert_eq!(out.stdout_str(), "1 Junk\n2 Junk\n3 Junk\n5 Junk\n6 Junk\n");
    let out = s
        .run(&["flags"], &["alice", "INBOX", "3:1", "--set", "\\Seen"])
        .ok();
    assert_eq!(out.stdout_str(), "1 \\Seen\n2 \\Seen\n3 \\Seen\n");
    assert_eq!(with_keyword(&s, "Junk"), [5, 6]);
    // `*` is the largest UID; a range past the end names what exists inside it.
    s.run(&["flags"], &["alice", "INBOX", "*", "--add", "Last"])
        .ok();
    assert_eq!(with_keyword(&s, "Last"), [6]);
    s.run(&["flags"], &["alice", "INBOX", "4:100", "--add", "Tail"])
        .ok();
    assert_eq!(with_keyword(&s, "Tail"), [5, 6]);
    // Many plain UIDs at once: one line per message; a message left with no flag is its UID.
    let out = s
        .run(&["flags"], &["alice", "INBOX", "5", "6", "--set", ""])
        .ok();
    assert_eq!(out.stdout_str(), "5\n6\n");
    // One plain UID prints as it always did: the flags alone.
    let out = s
        .run(&["flags"], &["alice", "INBOX", "2", "--add", "Junk"])
        .ok();
    assert_eq!(out.stdout_str(), "Junk,\\Seen\n");
    s.verify();
}

#[test]
fn expunge_takes_uid_sets_and_many_uids() {
    let s = with_a_gap();
    let out = s.run(&["expunge"], &["alice", "INBOX", "2:3,*"]).ok();
    assert_eq!(out.stdout_str(), "expunged 3 messages\n");
    assert_eq!(
        uids(&s, "alice"),
        [("INBOX".to_string(), 1), ("INBOX".to_string(), 5)]
    );
    let out = s.run(&["expunge"], &["alice", "INBOX", "5", "1"]).ok();
    assert_eq!(out.stdout_str(), "expunged 2 messages\n");
    assert_eq!(u64_field(&s.stats(), "tombstones"), 6);
    s.verify();
}

#[test]
fn invalid_and_empty_uid_sets_are_errors_that_change_nothing() {
    let s = with_a_gap();
    let mut cases: Vec<(&[&str], Vec<&str>, Vec<&str>)> = Vec::new();
    for (sub, op) in [
        (&["flags"][..], Some(["--add", "X"])),
        (&["expunge"][..], None),
    ] {
        let with = |uids: &[&'static str]| {
            let mut rest = vec!["alice", "INBOX"];
            rest.extend_from_slice(uids);
            rest.extend(op.iter().flatten().copied());
            rest
        };
        cases.push((sub, with(&["0"]), vec!["UID set", "start at 1"]));
        cases.push((sub, with(&["1:"]), vec!["invalid UID set", "\"1:\""]));
        cases.push((sub, with(&["a"]), vec!["invalid UID set", "\"a\""]));
        cases.push((sub, with(&[""]), vec!["empty UID set"]));
        cases.push((sub, with(&["1,,2"]), vec!["invalid UID set"]));
        // A valid argument beside an invalid one changes nothing either.
        cases.push((sub, with(&["1", "2:x"]), vec!["invalid UID set", "2:x"]));
        // A set naming no existing message; a plain UID that does not exist.
        cases.push((
            sub,
            with(&["100:200"]),
            vec!["no message in the UID set 100:200"],
        ));
        cases.push((sub, with(&["4"]), vec!["UID 4"]));
        cases.push((sub, with(&["1", "4", "2"]), vec!["UID 4"]));
    }
    let cases: Vec<(&[&str], &[&str], &[&str])> = cases
        .iter()
        .map(|(sub, rest, needles)| (*sub, rest.as_slice(), needles.as_slice()))
        .collect();
    check_errors(&s, &cases);
}

#[test]
fn append_date_from_file_keeps_each_files_mtime() {
    let s = Store::init();
    let files: Vec<String> = [1_000_000_000u64, 1_234_567_890]
        .iter()
        .enumerate()
        .map(|(i, &secs)| {
            let f = s.file(&format!("d{i}"), &message(i as u32));
            let file = std::fs::File::options().write(true).open(&f).expect("open");
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            file.set_modified(when).expect("set mtime");
            f
        })
        .collect();
    let out = s
        .run(
            &["append"],
            &["alice", "INBOX", &files[0], &files[1], "--date-from-file"],
        )
        .ok();
    assert_eq!(out.stdout_str(), "1\n2\n");
    let dates: Vec<u64> = s
        .list("alice")
        .iter()
        .map(|m| u64_field(m, "internal_date"))
        .collect();
    assert_eq!(dates, [1_000_000_000, 1_234_567_890]);
    // --date and --date-from-file say different things: clap refuses the pair.
    let out = s.run(
        &["append"],
        &[
            "alice",
            "INBOX",
            &files[0],
            "--date-from-file",
            "--date",
            "5",
        ],
    );
    assert!(!out.success());
    assert_eq!(s.list("alice").len(), 2);
}

/// An mboxrd file of three messages: quoted `From ` lines at two depths, CRLF in the second.
const MBOX: &[u8] = b"From alice@example.org Thu Nov 29 14:33:59 2007\n\
Subject: one\n\n>From the start\n>>From deeper\n>not a From line\nFrom: not a separator?\n\n\
From bob@example.org Fri Nov 30 00:00:00 2007\r\nSubject: two\r\n\r\nbody\r\n\r\n\
From carol@example.org Sat Dec  1 00:00:00 2007\nSubject: three\n\n\n\n";

#[test]
fn append_mbox_appends_every_message_unquoted() {
    let s = Store::init();
    let mbox = s.file("in.mbox", MBOX);
    let out = s
        .run(
            &["append"],
            &["alice", "INBOX", "--mbox", &mbox, "--flags", "\\Seen"],
        )
        .ok();
    assert_eq!(out.stdout_str(), "1\n2\n3\n");
    let fetch = |uid: &str| s.run(&["fetch"], &["alice", "INBOX", uid]).ok().stdout;
    assert_eq!(
        fetch("1"),
        b"Subject: one\n\nFrom the start\n>From deeper\n>not a From line\nFrom: not a separator?\n"
            .to_vec()
    );
    assert_eq!(fetch("2"), b"Subject: two\r\n\r\nbody\r\n".to_vec());
    assert_eq!(fetch("3"), b"Subject: three\n\n\n".to_vec());
    s.verify();
}

#[test]
fn a_truncated_or_malformed_mbox_appends_nothing() {
    let s = populated();
    let cut = s.file("cut.mbox", &MBOX[..MBOX.len() - 3]);
    let half_line = s.file("half.mbox", &MBOX[..60]);
    let not_mbox = s.file("not.mbox", &message(1));
    let empty = s.file("empty.mbox", b"");
    check_errors(
        &s,
        &[
            (
                &["append"],
                &["alice", "INBOX", "--mbox", &cut],
                &["truncated", "message 3"],
            ),
            (
                &["append"],
                &["alice", "INBOX", "--mbox", &half_line],
                &["truncated"],
            ),
            (
                &["append"],
                &["alice", "INBOX", "--mbox", &not_mbox],
                &["not an mbox"],
            ),
            (
                &["append"],
                &["alice", "INBOX", "--mbox", &empty],
                &["empty"],
            ),
        ],
    );
}

#[test]
fn a_closed_stdout_ends_the_command_quietly_with_sigpipe() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let s = Store::init();
    // More listing than a pipe holds (64 KiB; 800 messages as JSON are about 200 KiB), so
    // the command is still writing when the reader goes away.
    let files: Vec<String> = (1..=800)
        .map(|n| s.file(&format!("p{n}"), &message(n)))
        .collect();
    let mut rest = vec!["alice", "INBOX"];
    rest.extend(files.iter().map(String::as_str));
    s.run(&["append"], &rest).ok();
    let mut child = common::command(["list", "--data", s.data(), "alice", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdout.read_line(&mut first).expect("first line");
    assert!(!first.is_empty());
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.signal(),
        Some(libc_sigpipe()),
        "{:?}",
        out.status
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// SIGPIPE's number on Linux and the BSDs.
fn libc_sigpipe() -> i32 {
    13
}
