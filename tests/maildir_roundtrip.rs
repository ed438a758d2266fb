//! Maildir round trip: import → export → import keeps UIDs, UIDVALIDITY, digests, flags and
//! keywords; and importing the same Maildir twice adds nothing.

use merkmail::maildir::{export, import, MaildirWriter};
use merkmail::model::no_progress;
use merkmail::model::{FlagName, FlagOp};
use merkmail::store::{NewMessage, Store};
use proptest::prelude::*;
use std::collections::BTreeMap;

type Seen = BTreeMap<(String, u32), (String, Vec<String>, i64)>;

/// (mailbox, uid) → (digest, flags, internal date), plus each mailbox's UIDVALIDITY/UIDNEXT.
fn contents(store: &Store, user: &str) -> (Seen, Vec<(String, u32, u32)>) {
    let messages = store
        .list_messages(user, None)
        .expect("list")
        .into_iter()
        .map(|m| {
            let flags = m
                .record
                .flags
                .live()
                .map(|f| f.as_str().to_string())
                .collect();
            (
                (m.mailbox, m.uid),
                (m.record.digest.to_hex(), flags, m.record.internal_date),
            )
        })
        .collect();
    let mailboxes = store
        .list_mailboxes(user)
        .expect("mailboxes")
        .into_iter()
        .map(|m| (m.name, m.uidvalidity, m.uidnext))
        .collect();
    (messages, mailboxes)
}

const FLAGS: [&str; 7] = [
    "\\Seen",
    "\\Answered",
    "\\Flagged",
    "\\Deleted",
    "\\Draft",
    "$Label1",
    "Junk",
];
const MAILBOXES: [&str; 4] = ["INBOX", "Sent", "Archive/2024", "Entwürfe"];

#[derive(Debug, Clone)]
struct Msg {
    mailbox: usize,
    body: Vec<u8>,
    flags: Vec<usize>,
    date: i64,
    expunge: bool,
}

fn arb_msgs() -> impl Strategy<Value = Vec<Msg>> {
    prop::collection::vec(
        (
            0..MAILBOXES.len(),
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(0..FLAGS.len(), 0..4),
            1_000_000_000i64..1_800_000_000,
            prop::bool::weighted(0.2),
        )
            .prop_map(|(mailbox, body, flags, date, expunge)| Msg {
                mailbox,
                body,
                flags,
                date,
                expunge,
            }),
        1..25,
    )
}

/// Builds a store from the messages (expunging some, to leave UID gaps).
fn build(msgs: &[Msg]) -> Store {
    let store = Store::in_memory("src").expect("store");
    for name in &MAILBOXES[1..] {
        store.create_mailbox("u", name).expect("create");
    }
    for m in msgs {
        let flags: Vec<FlagName> = m
            .flags
            .iter()
            .map(|&f| FlagName::parse(FLAGS[f]).expect("flag"))
            .collect();
        let out = store
            .append(
                "u",
                MAILBOXES[m.mailbox],
                vec![NewMessage {
                    bytes: m.body.clone(),
                    flags,
                    internal_date: m.date,
                    ..Default::default()
                }],
            )
            .expect("append");
        if m.expunge {
            store
                .expunge("u", MAILBOXES[m.mailbox], &[out[0].uid])
                .expect("expunge");
        }
    }
    store
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn import_export_import_keeps_uids_digests_flags_and_keywords(msgs in arb_msgs()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = build(&msgs);
        export(&a, "u", &dir.path().join("one"), &mut no_progress).expect("export a");

        let b = Store::in_memory("b").expect("store");
        import(&b, "u", &dir.path().join("one"), &mut no_progress).expect("import into b");
        export(&b, "u", &dir.path().join("two"), &mut no_progress).expect("export b");
        let c = Store::in_memory("c").expect("store");
        import(&c, "u", &dir.path().join("two"), &mut no_progress).expect("import into c");

        let (ma, boxes_a) = contents(&a, "u");
        let (mb, boxes_b) = contents(&b, "u");
        let (mc, boxes_c) = contents(&c, "u");
        prop_assert_eq!(&ma, &mb);
        prop_assert_eq!(&mb, &mc);
        prop_assert_eq!(&boxes_a, &boxes_b);
        prop_assert_eq!(&boxes_b, &boxes_c);
        // Bytes come back unchanged.
        for (mailbox, uid) in ma.keys() {
            prop_assert_eq!(a.fetch("u", mailbox, *uid).expect("fetch a"), c.fetch("u", mailbox, *uid).expect("fetch c"));
        }
        prop_assert!(c.verify().expect("verify").is_ok());
    }
}

#[test]
fn importing_the_same_maildir_twice_adds_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = build(&[
        Msg {
            mailbox: 0,
            body: b"Subject: 1\r\n\r\n1\r\n".to_vec(),
            flags: vec![0],
            date: 1_700_000_000,
            expunge: false,
        },
        Msg {
            mailbox: 1,
            body: b"Subject: 2\r\n\r\n2\r\n".to_vec(),
            flags: vec![5],
            date: 1_700_000_001,
            expunge: false,
        },
    ]);
    export(&a, "u", dir.path(), &mut no_progress).expect("export");
    let b = Store::in_memory("b").expect("store");
    let first = import(&b, "u", dir.path(), &mut no_progress).expect("first import");
    assert_eq!((first.imported, first.already_present), (2, 0));
    let root = b.root().expect("root");
    // A local change in between must survive the second import untouched.
    b.set_flags(
        "u",
        "INBOX",
        1,
        FlagOp::Add,
        &[FlagName::parse("\\Flagged").expect("flag")],
    )
    .expect("flags");
    let root_after_change = b.root().expect("root");
    assert_ne!(root, root_after_change);
    let second = import(&b, "u", dir.path(), &mut no_progress).expect("second import");
    assert_eq!((second.imported, second.already_present), (0, 2));
    assert_eq!(b.root().expect("root"), root_after_change);
}

#[test]
fn export_refuses_a_non_empty_target_and_unrepresentable_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("something"), b"x").expect("write");
    let a = build(&[]);
    let err = export(&a, "u", dir.path(), &mut no_progress).expect_err("non-empty target");
    assert!(err.to_string().contains("refusing to export"), "{err}");

    a.create_mailbox("u", "with.dot").expect("create");
    let empty = tempfile::tempdir().expect("tempdir");
    let err =
        export(&a, "u", &empty.path().join("out"), &mut no_progress).expect_err("dot in a name");
    assert!(err.to_string().contains("with.dot"), "{err}");
    assert!(!empty.path().join("out").exists(), "nothing was written");
}

#[test]
fn a_dovecot_uidlist_keeps_its_uids_and_uidvalidity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = MaildirWriter::create(dir.path()).expect("writer");
    w.begin_folder("INBOX", 424242, 100, true).expect("folder");
    w.write_message(7, &["\\Seen".to_string()], 1_700_000_000, b"a")
        .expect("write");
    w.write_message(42, &["$Label1".to_string()], 1_700_000_001, b"b")
        .expect("write");
    w.finish_folder().expect("finish folder");
    w.finish().expect("finish");
    let s = Store::in_memory("s").expect("store");
    import(&s, "u", dir.path(), &mut no_progress).expect("import");
    let inbox = s.mailbox("u", "INBOX").expect("inbox");
    assert_eq!((inbox.uidvalidity, inbox.uidnext), (424242, 100));
    let uids: Vec<u32> = s
        .list_messages("u", None)
        .expect("list")
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(uids, vec![7, 42]);
}
