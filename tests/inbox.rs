//! INBOX's identity: every INBOX has the GUID derived from its user, whichever path makes it
//! (a new user, an import, a delivery, a live Maildir pass finding the folder) and whatever a
//! Dovecot uidlist says, so two servers' INBOXes are one mailbox and never clash by name.
//! In process, with no Dovecot: the live-Maildir side is a `Store::init_maildir` over a plain
//! temporary tree, its INBOX written as Dovecot writes one.

mod common;

use merkmail::maildir::backend::{pass, Template};
use merkmail::model::{inbox_guid, Change, Digest, MailboxGuid};
use merkmail::store::{NewMessage, Store};
use merkmail::sync::{in_process, run};
use std::collections::BTreeMap;
use std::fs;

const USER: &str = "carol";

fn message(tag: &str) -> Vec<u8> {
    format!("Subject: {tag}\r\n\r\nbody of {tag}\r\n").into_bytes()
}

fn new_message(tag: &str) -> NewMessage {
    NewMessage {
        bytes: message(tag),
        internal_date: 1_700_000_000,
        ..NewMessage::default()
    }
}

/// `store` gets `carol`'s mailbox `Sent` from `peer` and nothing else of hers: what the first
/// transaction of an initial copy leaves when her INBOX comes in a later one (a peer's records
/// create the user with the first mailbox they bring).
fn user_arrived_without_inbox(store: &Store, peer: &Store) {
    if peer.mailbox(USER, "Sent").is_err() {
        peer.create_mailbox(USER, "Sent").expect("create Sent");
    }
    let sent = peer.mailbox(USER, "Sent").expect("Sent");
    store
        .apply(&[Change::Mailbox {
            user: USER.to_string(),
            record: sent,
        }])
        .expect("apply the peer's Sent");
    let names: Vec<String> = store
        .list_mailboxes(USER)
        .expect("mailboxes")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["Sent"], "the user exists without an INBOX");
}

/// INBOX's messages: UID → digest.
fn inbox(store: &Store) -> BTreeMap<u32, Digest> {
    store
        .list_messages(USER, Some("INBOX"))
        .expect("INBOX")
        .into_iter()
        .map(|m| (m.uid, m.record.digest))
        .collect()
}

/// Sessions until the stores are equal (at most 4: one is the rule; the UIDVALIDITY rule
/// and the renumbering can take a second).
fn sync_until_equal(a: &Store, b: &Store) {
    for window in 0..4u8 {
        let report = run(a, window, false, in_process(b)).expect("session");
        if report.equal_after && a.root().expect("root") == b.root().expect("root") {
            return;
        }
    }
    panic!("not equal after 4 sessions");
}

#[test]
fn an_inbox_made_for_a_user_that_exists_without_one_has_the_users_guid() {
    // An import (a Maildir scan finding the folder, import-maildir) ignores the uidlist's
    // GUID for INBOX, and still takes its UIDVALIDITY and UIDs.
    let peer = Store::in_memory("a").expect("store");
    let store = Store::in_memory("b").expect("store");
    user_arrived_without_inbox(&store, &peer);
    let prepared = store
        .prepare_import(
            USER,
            "INBOX",
            Some(1_500_000_000),
            true,
            Some(MailboxGuid([0xff; 16])),
        )
        .expect("prepare INBOX");
    assert_eq!(prepared.guid, inbox_guid(USER));
    assert!(prepared.keep_uids, "a new INBOX keeps the source's UIDs");
    let record = store.mailbox(USER, "INBOX").expect("INBOX");
    assert_eq!(
        (record.guid, record.uidvalidity),
        (inbox_guid(USER), 1_500_000_000)
    );
    assert!(store.verify().expect("verify").is_ok());

    // A delivery makes the same INBOX (before, it failed: the user existed, its INBOX not).
    let store = Store::in_memory("c").expect("store");
    user_arrived_without_inbox(&store, &peer);
    store
        .append(USER, "INBOX", vec![new_message("delivered")])
        .expect("a delivery to INBOX");
    assert_eq!(
        store.mailbox(USER, "INBOX").expect("INBOX").guid,
        inbox_guid(USER)
    );
    assert_eq!(inbox(&store).keys().copied().collect::<Vec<_>>(), [1]);

    // So does CREATE INBOX; a second one is refused.
    let store = Store::in_memory("d").expect("store");
    user_arrived_without_inbox(&store, &peer);
    assert_eq!(
        store.create_mailbox(USER, "INBOX").expect("create INBOX"),
        inbox_guid(USER)
    );
    assert!(store.create_mailbox(USER, "INBOX").is_err());
}

#[test]
fn mail_delivered_to_a_new_replicas_inbox_before_the_first_session_renumbers_nothing_of_the_peers()
{
    // A: the user's INBOX with five messages (UIDs 1 to 5), and Sent.
    let a = Store::in_memory("a").expect("store");
    a.append(
        USER,
        "INBOX",
        (1..=5).map(|n| new_message(&format!("a{n}"))).collect(),
    )
    .expect("A's mail");
    a.create_mailbox(USER, "Sent").expect("create Sent");
    let a_before = inbox(&a);
    let a_inbox = a.mailbox(USER, "INBOX").expect("A's INBOX");
    assert_eq!(
        a_before.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );

    // B: a live Maildir store that has the user (her Sent came first) but not her INBOX yet,
    // and Dovecot delivered one message into her INBOX meanwhile: its uidlist carries
    // Dovecot's UIDVALIDITY and a GUID of its own, larger than any other (under the old rule,
    // "larger GUID wins" kept it and renumbered all of A's INBOX).
    let tmp = common::scratch_dir();
    let text = format!("{}/mail/%u/Maildir", tmp.path().display());
    let template = Template::parse(&text).expect("template");
    merkmail::maildir::backend::install();
    let b = Store::init_maildir(&tmp.path().join("data"), "b", &text).expect("init_maildir");
    user_arrived_without_inbox(&b, &a);
    let root = template.root(USER);
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    let base = "1500000000.M1P1.mx";
    let local = message("delivered on B");
    fs::write(root.join("cur").join(format!("{base}:2,S")), &local).expect("deliver");
    fs::write(
        root.join("dovecot-uidlist"),
        format!("3 V1500000000 N2 G{}\n1 :{base}\n", "ff".repeat(16)),
    )
    .expect("uidlist");
    pass(&b, &template, None).expect("B's pass");
    let b_inbox = b.mailbox(USER, "INBOX").expect("B's INBOX");
    assert_eq!(
        (b_inbox.guid, b_inbox.uidvalidity),
        (inbox_guid(USER), 1_500_000_000),
        "B's INBOX is the user's, with Dovecot's UIDVALIDITY"
    );
    assert_eq!(inbox(&b).keys().copied().collect::<Vec<_>>(), [1]);

    sync_until_equal(&a, &b);
    pass(&b, &template, None).expect("B's pass after the session");

    // One INBOX, A's: its UIDVALIDITY (five messages against one), its five messages at
    // their UIDs, and B's message as new mail above A's UIDNEXT. Nothing lost, nothing twice.
    for store in [&a, &b] {
        let names: Vec<(String, MailboxGuid)> = store
            .list_mailboxes(USER)
            .expect("mailboxes")
            .into_iter()
            .map(|m| (m.name, m.guid))
            .collect();
        assert_eq!(names.len(), 2, "INBOX and Sent only: {names:?}");
        let record = store.mailbox(USER, "INBOX").expect("INBOX");
        assert_eq!(
            (record.guid, record.uidvalidity),
            (a_inbox.guid, a_inbox.uidvalidity)
        );
        let after = inbox(store);
        for (uid, digest) in &a_before {
            assert_eq!(after.get(uid), Some(digest), "A's UID {uid} unchanged");
        }
        let theirs: Vec<u32> = after
            .iter()
            .filter(|(_, d)| **d == Digest::of(&local))
            .map(|(uid, _)| *uid)
            .collect();
        assert_eq!(theirs.len(), 1, "B's message once: {after:?}");
        assert!(
            theirs[0] >= a_inbox.uidnext,
            "above A's UIDNEXT: {theirs:?}"
        );
        assert_eq!(after.len(), 6);
        assert!(store.verify().expect("verify").is_ok());
    }
    let disk = merkmail::maildir::backend::verify(&b, &template).expect("verify the Maildir");
    assert!(disk.mismatches.is_empty(), "{:?}", disk.mismatches);
}
