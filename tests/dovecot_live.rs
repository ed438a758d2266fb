//! A real Dovecot and merkmail's live Maildir writer on one folder at the same time: IMAP
//! APPENDs race our deliveries and our numbering of files an MDA dropped. Fails when `CI=true`
//! and Dovecot is missing; skips with a message elsewhere.

mod common;

use common::dovecot::Dovecot;
use merkmail::maildir::{parse_uidlist, LiveFolder, LockSettings};
use std::collections::BTreeMap;
use std::time::Duration;

/// Appends `sys.argv[1]` messages over one IMAP session, pausing a little between them so
/// they interleave with the test's own deliveries.
const APPEND: &str = r#"
import time
m = imaplib.IMAP4_stream(IMAP)
for i in range(int(sys.argv[1])):
    msg = ("Subject: imap-%d\r\n\r\nbody %d\r\n" % (i, i)).encode()
    typ, _ = m.append("INBOX", None, None, msg)
    assert typ == "OK", typ
    time.sleep(0.01)
m.logout()
"#;

#[test]
fn imap_appends_racing_our_deliveries_give_every_message_one_uid() {
    let Some(dovecot) = Dovecot::find("live") else {
        return;
    };
    // A first session makes Dovecot's own index and uidlist for INBOX.
    assert!(dovecot.uids_and_subjects("INBOX").is_empty());

    const N: usize = 12;
    let appender = dovecot.python_spawn(APPEND, &[&N.to_string()]);
    let maildir = dovecot.maildir();
    let folder = LiveFolder::open(&maildir)
        .expect("open INBOX")
        .with_lock_settings(LockSettings {
            give_up_after: Duration::from_secs(30),
            ..LockSettings::default()
        });
    let mut expected: Vec<String> = (0..N).map(|i| format!("imap-{i}")).collect();
    for i in 0..N {
        if i % 3 == 0 {
            // What an MDA does: tmp/ then a rename into new/, with no UID.
            let name = format!("{}.mda{i}.host", 1_700_000_000 + i);
            let tmp = maildir.join("tmp").join(&name);
            std::fs::write(&tmp, format!("Subject: mda-{i}\n\nbody\n")).expect("write");
            dovecot.chown_like_maildir(&tmp);
            std::fs::rename(&tmp, maildir.join("new").join(&name)).expect("rename");
            expected.push(format!("mda-{i}"));
        }
        let mut locked = folder.lock().expect("take dovecot-uidlist.lock");
        locked.number_unlisted().expect("number");
        let flags = if i % 2 == 0 {
            vec!["\\Seen".to_string()]
        } else {
            vec!["$Work".to_string()]
        };
        locked
            .deliver(
                format!("Subject: merkmail-{i}\n\nbody {i}\n").as_bytes(),
                &flags,
                1_600_000_000,
            )
            .expect("deliver");
        drop(locked);
        expected.push(format!("merkmail-{i}"));
        std::thread::sleep(Duration::from_millis(8));
    }
    let out = appender.wait_with_output().expect("appender");
    assert!(
        out.status.success(),
        "IMAP APPEND failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let seen = dovecot.uids_and_subjects("INBOX");
    let mut by_subject: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (uid, subject) in &seen {
        by_subject.entry(subject.as_str()).or_default().push(*uid);
    }
    expected.sort();
    let subjects: Vec<&str> = by_subject.keys().copied().collect();
    assert_eq!(subjects, expected, "every message once: {seen:?}");
    assert!(
        by_subject.values().all(|uids| uids.len() == 1),
        "a message twice: {seen:?}"
    );
    let mut uids: Vec<u32> = seen.iter().map(|(u, _)| *u).collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), expected.len(), "a UID given twice: {seen:?}");

    // The uidlist is one Dovecot accepts: strictly ascending UIDs (the parser checks) and
    // one line per message.
    let text = std::fs::read_to_string(maildir.join("dovecot-uidlist")).expect("uidlist");
    let list = parse_uidlist(&text).expect("uidlist parses");
    assert_eq!(list.entries.len(), expected.len(), "{text}");

    // Dovecot's own repair finds nothing to renumber.
    dovecot.doveadm(&["force-resync", "INBOX"]);
    assert_eq!(
        dovecot.uids_and_subjects("INBOX"),
        seen,
        "force-resync changed UIDs"
    );
}
