//! Two real Dovecots, each with `merkmail serve` beside it on a live Maildir (`init
//! --maildir`), peered over loopback: what IMAP clients (Python's imaplib over `doveadm exec
//! imap`) do on either side shows on the other — folders, UIDVALIDITY, UIDs, flags and bytes —
//! a split where both sides took mail heals with every message there once, and mail both
//! sides took before they were first paired renumbers nothing of the fuller side.
//!
//! Needs Dovecot (dovecot-core, dovecot-imapd) and python3: skipped with a message when they
//! are missing, and failed when `CI=true` (.ci/run installs them).

mod common;

use common::replica::{append, flags_of, messages, same_view, sides, Side};

/// Both sides, with their `merkmail serve` running.
fn started(test: &str) -> Option<(Side, Side)> {
    let (mut a, mut b) = sides(test)?;
    a.node.start();
    b.node.start();
    Some((a, b))
}

#[test]
fn imap_changes_on_either_side_show_on_the_other() {
    let Some((mut a, mut b)) = started("replica-imap") else {
        return;
    };

    // APPEND on A: with flags and a keyword, into INBOX and a new folder.
    append(&a, "INBOX", "first", r"(\Flagged $Work)");
    append(&a, "INBOX", "second", "");
    a.dovecot.imap(r#"ok(m.create("Lists"))"#, &[]);
    append(&a, "Lists", "list mail", r"(\Seen)");
    let view = same_view(&a, &b, "appends and a folder made on A");
    assert_eq!(messages(&view, "INBOX").len(), 2, "{view}");
    assert_eq!(flags_of(&view, "INBOX", 1), ["$Work", "\\Flagged"]);
    assert_eq!(messages(&view, "Lists").len(), 1, "{view}");

    // On B: a flag, an expunge, a COPY and a MOVE, a rename.
    b.dovecot.imap(
        r#"
ok(m.select("INBOX"))
ok(m.uid("STORE", "1", "+FLAGS", r"(\Seen)"))
ok(m.uid("STORE", "1", "-FLAGS", r"($Work)"))
ok(m.uid("STORE", "2", "+FLAGS", r"(\Deleted)"))
ok(m.expunge())
ok(m.uid("COPY", "1", "Lists"))
ok(m.rename("Lists", "Archive"))
"#,
        &[],
    );
    let view = same_view(&a, &b, "flags, expunge, copy and rename made on B");
    assert_eq!(flags_of(&view, "INBOX", 1), ["\\Flagged", "\\Seen"]);
    assert_eq!(
        messages(&view, "INBOX").len(),
        1,
        "the expunge crossed: {view}"
    );
    assert!(view.get("Lists").is_none(), "renamed away: {view}");
    assert_eq!(messages(&view, "Archive").len(), 2, "{view}");

    // Dovecot's own save path, and a file an MDA drops into new/ with no UID, on A.
    a.dovecot
        .save("INBOX", b"Subject: saved\r\n\r\nby doveadm save\r\n");
    // As an MDA delivers (the Maildir protocol): written in tmp/, then renamed into new/.
    let writing = a.dovecot.maildir().join("tmp/1700000000.mda1.host");
    let dropped = a.dovecot.maildir().join("new/1700000000.mda1.host");
    std::fs::write(&writing, "Subject: dropped\r\n\r\nby an MDA\r\n").expect("drop");
    a.dovecot.chown_like_maildir(&writing);
    std::fs::rename(&writing, &dropped).expect("into new/");
    let view = same_view(&a, &b, "doveadm save and an MDA's file on A");
    assert_eq!(messages(&view, "INBOX").len(), 3, "{view}");

    // MOVE and a delete on B.
    b.dovecot.imap(
        r#"
ok(m.select("Archive"))
ok(m.uid("MOVE", "1", "INBOX"))
ok(m.create("Trashme"))
"#,
        &[],
    );
    same_view(&a, &b, "MOVE and CREATE on B");
    a.dovecot.imap(r#"ok(m.delete("Trashme"))"#, &[]);
    let view = same_view(&a, &b, "DELETE on A");
    assert!(view.get("Trashme").is_none(), "{view}");
    assert_eq!(messages(&view, "INBOX").len(), 4, "{view}");

    // /status and /metrics show the passes.
    let status = a.node.status();
    let maildir = status
        .maildir
        .expect("a live-Maildir node shows its passes");
    assert_eq!(maildir.template, a.dovecot.template());
    assert!(
        maildir.passes_total > 0 && maildir.imported_total >= 4,
        "{maildir:?}"
    );
    assert!(maildir.delivered_total >= 2, "{maildir:?}");
    let (code, metrics) = a.node.get("/metrics", Some("admin-secret"));
    assert_eq!(code, 200);
    assert!(
        metrics.contains("merkmail_maildir_passes_total "),
        "{metrics}"
    );

    a.node.stop();
    b.node.stop();
    for side in [&a, &b] {
        side.node.assert_verifies("after the IMAP changes");
    }
}

#[test]
fn a_split_heals_with_every_message_there_once() {
    let Some((mut a, mut b)) = started("replica-split") else {
        return;
    };
    append(&a, "INBOX", "before-1", "");
    append(&a, "INBOX", "before-2", "");
    append(&a, "INBOX", "before-3", "");
    same_view(&a, &b, "before the split");

    // B's merkmail goes away; both Dovecots keep taking mail: the same next UID on both.
    b.node.kill();
    append(&a, "INBOX", "split-a", r"(\Flagged)");
    append(&b, "INBOX", "split-b", "");
    a.dovecot.imap(
        r#"
ok(m.select("INBOX"))
ok(m.uid("STORE", "1", "+FLAGS", r"(\Deleted)"))
ok(m.expunge())
"#,
        &[],
    );
    b.dovecot.imap(
        r#"
ok(m.select("INBOX"))
ok(m.uid("STORE", "2", "+FLAGS", r"(\Answered)"))
"#,
        &[],
    );
    b.node.start();
    let view = same_view(&a, &b, "after the split");
    eprintln!("after the split: {view}");
    let subjects: Vec<(u32, String)> = a.dovecot.uids_and_subjects("INBOX");
    let mut names: Vec<&str> = subjects.iter().map(|(_, s)| s.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["before-2", "before-3", "split-a", "split-b"],
        "every message once, the expunged one gone: {subjects:?}"
    );
    let uids: Vec<u32> = subjects.iter().map(|(u, _)| *u).collect();
    let mut unique = uids.clone();
    unique.dedup();
    assert_eq!(uids, unique, "no UID twice");
    assert_eq!(flags_of(&view, "INBOX", 2), ["\\Answered"]);

    // Dovecot's own repair finds nothing to change, and both stores verify.
    for side in [&a, &b] {
        side.dovecot.doveadm(&["force-resync", "*"]);
    }
    let after = same_view(&a, &b, "after force-resync");
    assert_eq!(after, view, "force-resync changed the IMAP view");
    a.node.stop();
    b.node.stop();
    for side in [&a, &b] {
        side.node.assert_verifies("after the split healed");
    }
}

/// Both servers took mail before merkmail first paired them: a new replica's Dovecot already
/// delivered into the user's INBOX and made `Sent` (empty) at the user's first login there.
/// Each INBOX is the user's one INBOX (the GUID derived from the user, whatever Dovecot's
/// uidlist says), so A's, holding more, keeps its UIDVALIDITY and UIDs and B's message comes
/// in above them; of the two `Sent`s, A's was made first and wins, whatever the bytes of the
/// GUIDs (before, the larger GUID won: half the time B's empty `Sent`, renumbering A's).
#[test]
fn mail_on_both_sides_before_the_first_session_renumbers_nothing_of_the_fuller_side() {
    let Some((mut a, mut b)) = sides("replica-first") else {
        return;
    };
    append(&a, "INBOX", "a-1", "");
    append(&a, "INBOX", "a-2", r"(\Seen)");
    append(&a, "INBOX", "a-3", "");
    a.dovecot.imap(r#"ok(m.create("Sent"))"#, &[]);
    append(&a, "Sent", "sent-1", r"(\Seen)");
    append(&a, "Sent", "sent-2", r"(\Seen)");
    let before = a.dovecot.imap_view();
    // The new replica's Dovecot makes its INBOX later than A's (Dovecot's UIDVALIDITY is the
    // creation second). Made in the same second, the two INBOXes would share a UIDVALIDITY,
    // and their different mail at UID 1 would be a UID clash, moved up on both sides, as the
    // clash rules say: not the case this test is about (seen once under load in CI).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    append(&b, "INBOX", "b-1", "");
    b.dovecot.imap(r#"ok(m.create("Sent"))"#, &[]);
    // B's `Sent` gets the larger GUID bytes (its nanoseconds' low byte 0xff: still a valid
    // time, a little later), so the old rule would have kept it.
    let uidlist = b.dovecot.maildir().join(".Sent/dovecot-uidlist");
    let text = std::fs::read_to_string(&uidlist).expect("B's Sent uidlist");
    let at = text.find(" G").expect("a GUID in the header") + 2;
    std::fs::write(&uidlist, format!("{}ff{}", &text[..at], &text[at + 2..])).expect("write");

    a.node.start();
    b.node.start();
    let view = same_view(&a, &b, "after the first session");
    eprintln!("after the first session: {view}");
    for folder in ["INBOX", "Sent"] {
        assert_eq!(
            view[folder][0], before[folder][0],
            "{folder}: A's UIDVALIDITY stays"
        );
        for message in messages(&before, folder) {
            assert!(
                messages(&view, folder).contains(&message),
                "{folder}: A's {message} stays at its UID"
            );
        }
    }
    assert_eq!(
        a.dovecot.uids_and_subjects("INBOX"),
        [
            (1, "a-1".to_string()),
            (2, "a-2".to_string()),
            (3, "a-3".to_string()),
            (4, "b-1".to_string())
        ]
    );
    assert_eq!(messages(&view, "Sent").len(), 2);

    for side in [&a, &b] {
        side.dovecot.doveadm(&["force-resync", "*"]);
    }
    assert_eq!(
        same_view(&a, &b, "after force-resync"),
        view,
        "force-resync changed the IMAP view"
    );
    a.node.stop();
    b.node.stop();
    for side in [&a, &b] {
        side.node.assert_verifies("after the first session");
    }
}
