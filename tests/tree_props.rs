//! Property tests of the tree's invariants (DESIGN §3): the stored tree equals a tree rebuilt
//! from the records after any sequence of operations; equal records give equal roots whatever
//! the order they arrived in; every change of replicated state moves the root.

use merkmail::model::Change;
use merkmail::model::{
    inbox_guid, Digest, FlagName, FlagOp, FlagSet, FlagState, MailboxGuid, MailboxRecord, Md5,
    MessageRecord, Stamp, Tombstone,
};
use merkmail::store::{MessageInfo, NewMessage, Store};
use proptest::prelude::*;

const USERS: [&str; 3] = ["alice", "bob", "zoë"];
const NAMES: [&str; 5] = ["INBOX", "Archive", "Sent", "Archive/2024", "Drafts"];
const FLAGS: [&str; 5] = ["\\Seen", "\\Flagged", "\\Deleted", "$Label1", "Junk"];

#[derive(Clone, Debug)]
enum Op {
    Append {
        user: usize,
        mailbox: usize,
        body: u8,
        flags: Vec<usize>,
    },
    Flags {
        user: usize,
        mailbox: usize,
        pick: usize,
        op: u8,
        flags: Vec<usize>,
    },
    Expunge {
        user: usize,
        mailbox: usize,
        pick: usize,
    },
    Create {
        user: usize,
        mailbox: usize,
    },
    Rename {
        user: usize,
        from: usize,
        to: usize,
    },
    Delete {
        user: usize,
        mailbox: usize,
    },
}

fn flag_names(idx: &[usize]) -> Vec<FlagName> {
    let mut v: Vec<FlagName> = idx
        .iter()
        .map(|&i| FlagName::parse(FLAGS[i]).expect("valid flag"))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn arb_op() -> impl Strategy<Value = Op> {
    let u = 0..USERS.len();
    let m = 0..NAMES.len();
    let flags = prop::collection::vec(0..FLAGS.len(), 0..3);
    prop_oneof![
        4 => (u.clone(), m.clone(), any::<u8>(), flags.clone()).prop_map(|(user, mailbox, body, flags)| Op::Append { user, mailbox, body, flags }),
        3 => (u.clone(), m.clone(), any::<usize>(), 0u8..3, flags).prop_map(|(user, mailbox, pick, op, flags)| Op::Flags { user, mailbox, pick, op, flags }),
        2 => (u.clone(), m.clone(), any::<usize>()).prop_map(|(user, mailbox, pick)| Op::Expunge { user, mailbox, pick }),
        2 => (u.clone(), m.clone()).prop_map(|(user, mailbox)| Op::Create { user, mailbox }),
        1 => (u.clone(), m.clone(), m.clone()).prop_map(|(user, from, to)| Op::Rename { user, from, to }),
        1 => (u, m).prop_map(|(user, mailbox)| Op::Delete { user, mailbox }),
    ]
}

/// The message `pick` names (modulo their number) among a mailbox's; `None` when it is empty.
fn pick_message(
    store: &Store,
    user: usize,
    mailbox: usize,
    pick: usize,
) -> Result<Option<MessageInfo>, String> {
    let mut list = store
        .list_messages(USERS[user], Some(NAMES[mailbox]))
        .map_err(|e| e.to_string())?;
    if list.is_empty() {
        return Ok(None);
    }
    Ok(Some(list.swap_remove(pick % list.len())))
}

/// Runs one operation; returns Ok(true) when it changed replicated state, Ok(false) for a
/// successful no-op, Err for a refused operation.
fn run(store: &Store, op: &Op) -> Result<bool, String> {
    let e = |e: merkmail::store::StoreError| e.to_string();
    match op {
        Op::Append {
            user,
            mailbox,
            body,
            flags,
        } => {
            let bytes = format!("Subject: {body}\r\n\r\nbody {body}\r\n").into_bytes();
            let msg = NewMessage {
                bytes,
                flags: flag_names(flags),
                internal_date: 1_700_000_000,
                ..Default::default()
            };
            store
                .append(USERS[*user], NAMES[*mailbox], vec![msg])
                .map(|_| true)
                .map_err(e)
        }
        Op::Flags {
            user,
            mailbox,
            pick,
            op,
            flags,
        } => {
            let Some(m) = pick_message(store, *user, *mailbox, *pick)? else {
                return Ok(false);
            };
            let before: Vec<FlagName> = m.record.flags.live().cloned().collect();
            let op = [FlagOp::Add, FlagOp::Remove, FlagOp::Set][*op as usize];
            let after = store
                .set_flags(USERS[*user], NAMES[*mailbox], m.uid, op, &flag_names(flags))
                .map_err(e)?;
            Ok(before != after)
        }
        Op::Expunge {
            user,
            mailbox,
            pick,
        } => {
            let Some(m) = pick_message(store, *user, *mailbox, *pick)? else {
                return Ok(false);
            };
            let uid = m.uid;
            store
                .expunge(USERS[*user], NAMES[*mailbox], &[uid])
                .map(|_| true)
                .map_err(e)
        }
        Op::Create { user, mailbox } => store
            .create_mailbox(USERS[*user], NAMES[*mailbox])
            .map(|_| true)
            .map_err(e),
        Op::Rename { user, from, to } => store
            .rename_mailbox(USERS[*user], NAMES[*from], NAMES[*to])
            .map(|_| true)
            .map_err(e),
        Op::Delete { user, mailbox } => store
            .delete_mailbox(USERS[*user], NAMES[*mailbox])
            .map(|_| true)
            .map_err(e),
    }
}

fn snapshot(store: &Store) -> (String, merkmail::store::Counters) {
    (
        store.root().expect("root").hash.to_hex(),
        store.counters().expect("counters"),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn stored_tree_equals_rebuilt_tree_and_every_change_moves_the_root(ops in prop::collection::vec(arb_op(), 1..40)) {
        let store = Store::in_memory("n1").expect("store");
        for (i, op) in ops.iter().enumerate() {
            let before = snapshot(&store);
            let outcome = run(&store, op);
            let after = snapshot(&store);
            match outcome {
                Ok(true) => prop_assert_ne!(&before.0, &after.0, "op {} {:?} changed state but not the root", i, op),
                Ok(false) => prop_assert_eq!(&before, &after, "op {} {:?} was a no-op but moved the root", i, op),
                Err(_) => prop_assert_eq!(&before, &after, "op {} {:?} failed but changed the store", i, op),
            }
        }
        let report = store.verify().expect("verify runs");
        prop_assert!(report.is_ok(), "verify: {:?}", report.problems);
    }
}

// ---- order independence: the same final records through different histories ----

fn stamp(ms: u64, node: u32) -> Stamp {
    Stamp {
        ms,
        counter: 0,
        node,
    }
}

#[derive(Clone, Debug)]
struct FinalMessage {
    user: usize,
    mailbox: usize,
    uid: u32,
    body: u8,
    flags: Vec<(usize, bool, u64)>,
}

fn guid_of(user: usize, mailbox: usize) -> MailboxGuid {
    if mailbox == 0 {
        inbox_guid(USERS[user])
    } else {
        MailboxGuid([mailbox as u8; 16])
    }
}

fn mailbox_record(user: usize, mailbox: usize, name: &str, uidnext: u32, at: u64) -> MailboxRecord {
    MailboxRecord {
        guid: guid_of(user, mailbox),
        name: name.to_string(),
        uidvalidity: 1000 + mailbox as u32,
        uidnext,
        subscribed: mailbox.is_multiple_of(2),
        name_stamp: stamp(at, 1),
        subscribed_stamp: stamp(at, 1),
        last_change: stamp(at, 1),
    }
}

fn body(n: u8) -> Vec<u8> {
    format!("Subject: {n}\r\n\r\n{n}\r\n").into_bytes()
}

fn message_record(m: &FinalMessage) -> MessageRecord {
    let bytes = body(m.body);
    let mut flags = FlagSet::default();
    for &(f, set, ms) in &m.flags {
        let one = FlagSet::initial(&[FlagName::parse(FLAGS[f]).expect("flag")], stamp(ms, 2));
        let mut one = one;
        if !set {
            one.apply(
                FlagOp::Remove,
                &[FlagName::parse(FLAGS[f]).expect("flag")],
                stamp(ms + 1, 2),
            );
        }
        flags.merge(&one);
    }
    MessageRecord {
        md5: Md5::of(&bytes),
        digest: Digest::of(&bytes),
        size: bytes.len() as u64,
        internal_date: 1_700_000_000,
        flags,
        // One append per UID: the same body at two UIDs is two messages (two identities).
        appended: stamp(10 + u64::from(m.uid), 2),
    }
}

fn message_change(m: &FinalMessage, record: MessageRecord) -> Change {
    Change::Message {
        user: USERS[m.user].to_string(),
        guid: guid_of(m.user, m.mailbox),
        uid: m.uid,
        body: Some(body(m.body)),
        record,
    }
}

fn arb_messages() -> impl Strategy<Value = Vec<FinalMessage>> {
    prop::collection::btree_map(
        (0..USERS.len(), 0..3usize, 1u32..300),
        (
            any::<u8>(),
            prop::collection::vec((0..FLAGS.len(), any::<bool>(), 1u64..100), 0..3),
        ),
        0..30,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|((user, mailbox, uid), (body, flags))| FinalMessage {
                user,
                mailbox,
                uid,
                body,
                flags,
            })
            .collect()
    })
}

fn final_changes(messages: &[FinalMessage]) -> (Vec<Change>, Vec<Change>) {
    let mut mailboxes = Vec::new();
    for (user, user_name) in USERS.iter().enumerate() {
        for (mailbox, name) in NAMES.iter().enumerate().take(3) {
            mailboxes.push(Change::Mailbox {
                user: user_name.to_string(),
                record: mailbox_record(user, mailbox, name, 300, 5),
            });
        }
    }
    let msgs = messages
        .iter()
        .map(|m| message_change(m, message_record(m)))
        .collect();
    (mailboxes, msgs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn equal_records_give_equal_roots_whatever_the_order(
        messages in arb_messages(),
        order in any::<u64>(),
        detours in prop::collection::vec(any::<bool>(), 30),
    ) {
        let (mailboxes, msgs) = final_changes(&messages);

        let a = Store::in_memory("a").expect("store");
        a.apply(&mailboxes).expect("apply");
        a.apply(&msgs).expect("apply");

        // B: mailboxes first under other names, messages in another order, some first in
        // another version (other flags, or another body that is then expunged and replaced),
        // extra messages that come and go, then the final records.
        let b = Store::in_memory("b").expect("store");
        let renamed: Vec<Change> = (0..USERS.len()).flat_map(|user| (0..3).map(move |mailbox| Change::Mailbox {
            user: USERS[user].to_string(),
            record: mailbox_record(user, mailbox, &format!("tmp{mailbox}"), 300, 1),
        })).collect();
        b.apply(&renamed).expect("apply");
        let mut shuffled: Vec<(usize, Change)> = msgs.iter().cloned().enumerate().collect();
        shuffled.sort_by_key(|(i, _)| (*i as u64).wrapping_mul(order | 1).rotate_left((order % 64) as u32));
        for (i, change) in shuffled {
            let m = &messages[i];
            if detours[i % detours.len()] {
                let mut other = m.clone();
                other.body = m.body.wrapping_add(1);
                other.flags.push((0, true, 500));
                b.apply(&[message_change(&other, message_record(&other))]).expect("detour");
                b.apply(&[Change::Expunge {
                    user: USERS[m.user].to_string(),
                    guid: guid_of(m.user, m.mailbox),
                    uid: m.uid,
                    tombstone: Tombstone { digest: message_record(&other).digest, stamp: stamp(600, 2), origin: None },
                }]).expect("expunge");
            }
            b.apply(&[change]).expect("final");
        }
        let extra = FinalMessage { user: 0, mailbox: 0, uid: 299, body: 7, flags: vec![] };
        if !messages.iter().any(|m| (m.user, m.mailbox, m.uid) == (0, 0, 299)) {
            b.apply(&[message_change(&extra, message_record(&extra))]).expect("extra");
            b.apply(&[Change::Expunge {
                user: USERS[0].to_string(),
                guid: guid_of(0, 0),
                uid: 299,
                tombstone: Tombstone { digest: message_record(&extra).digest, stamp: stamp(700, 2), origin: None },
            }]).expect("expunge extra");
        }
        b.apply(&mailboxes).expect("apply");

        prop_assert_eq!(a.root().expect("root"), b.root().expect("root"));
        prop_assert!(a.verify().expect("verify").is_ok());
        let report = b.verify().expect("verify");
        prop_assert!(report.is_ok(), "{:?}", report.problems);
    }

    #[test]
    fn any_single_field_change_moves_the_root(messages in arb_messages(), which in 0..7u8, pick in any::<usize>()) {
        prop_assume!(!messages.is_empty());
        let (mailboxes, msgs) = final_changes(&messages);
        let store = Store::in_memory("a").expect("store");
        store.apply(&mailboxes).expect("apply");
        store.apply(&msgs).expect("apply");
        let before = store.root().expect("root");
        let m = &messages[pick % messages.len()];
        let mut record = message_record(m);
        let mut mailbox = mailbox_record(m.user, m.mailbox, NAMES[m.mailbox], 300, 5);
        let change = match which {
            0 => { record.flags.apply(FlagOp::Add, &[FlagName::parse("$New").expect("flag")], stamp(900, 3)); message_change(m, record) }
            1 => {
                // The same state with a later stamp is still a change: stamps are replicated.
                let (flag, state) = record.flags.entries().next().map(|(f, s)| (f.clone(), *s)).unwrap_or((FlagName::parse("\\Seen").expect("flag"), FlagState { set: false, stamp: stamp(1, 1) }));
                let mut one = FlagSet::default();
                one.merge(&FlagSet::initial(std::slice::from_ref(&flag), stamp(state.stamp.ms + 1000, 3)));
                if !state.set { one.apply(FlagOp::Remove, &[flag], stamp(state.stamp.ms + 1001, 3)); }
                record.flags.merge(&one);
                message_change(m, record)
            }
            2 => { let mut other = m.clone(); other.body = m.body.wrapping_add(1); message_change(&other, message_record(&other)) }
            3 => { mailbox.uidnext += 1; Change::Mailbox { user: USERS[m.user].to_string(), record: mailbox } }
            4 => { mailbox.subscribed = !mailbox.subscribed; Change::Mailbox { user: USERS[m.user].to_string(), record: mailbox } }
            5 => { mailbox.name = "Renamed".into(); mailbox.name_stamp = stamp(50, 1); Change::Mailbox { user: USERS[m.user].to_string(), record: mailbox } }
            _ => Change::Expunge { user: USERS[m.user].to_string(), guid: guid_of(m.user, m.mailbox), uid: m.uid, tombstone: Tombstone { digest: record.digest, stamp: stamp(900, 3), origin: None } },
        };
        store.apply(&[change]).expect("apply");
        prop_assert_ne!(before, store.root().expect("root"));
        prop_assert!(store.verify().expect("verify").is_ok());
    }
}
