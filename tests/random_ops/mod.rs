//! Random mail operations for the property tests that build divergent stores
//! (`sync_session`, `journal`): the vocabulary, one message, and applying an operation.
// Each test crate uses a different subset.
#![allow(dead_code)]

use merkmail::model::{FlagName, FlagOp, MessageRecord};
use merkmail::store::{NewMessage, Store};
use merkmail::sync::{in_process, run};
use proptest::prelude::*;
use std::collections::BTreeMap;

pub const USERS: [&str; 2] = ["ann", "ben"];
pub const BOXES: [&str; 4] = ["INBOX", "Work", "Lists", "Trips"];

/// A small message whose bytes (and so digest) follow from `text`.
pub fn msg(text: &str) -> NewMessage {
    NewMessage {
        bytes: format!("Subject: {text}\r\n\r\n{text}\r\n").into_bytes(),
        internal_date: 1_700_000_000,
        ..Default::default()
    }
}

pub fn seen() -> Vec<FlagName> {
    vec![FlagName::parse("\\Seen").expect("flag")]
}

/// One step of a random history; indices pick from `USERS`, `BOXES` and the mailbox's
/// messages. `Sync` is for the callers that reconcile mid-history (applying it does nothing).
#[derive(Clone, Debug)]
pub enum Op {
    Append(usize, usize, u8),
    Flag(usize, usize, usize, bool),
    Expunge(usize, usize, usize),
    Create(usize, usize),
    Rename(usize, usize, usize),
    Delete(usize, usize),
    Subscribe(usize, usize, bool),
    Sync,
}

/// Applies `op` to `s`. Refused operations (unknown mailbox, name taken…) are part of the
/// random walk and change nothing.
pub fn apply(s: &Store, op: &Op) {
    let _ = match op {
        Op::Append(u, b, x) => s
            .append(USERS[*u], BOXES[*b], vec![msg(&format!("m{x}"))])
            .map(|_| ()),
        Op::Flag(u, b, p, on) => match s.list_messages(USERS[*u], Some(BOXES[*b])) {
            Ok(l) if !l.is_empty() => {
                let op = if *on { FlagOp::Add } else { FlagOp::Remove };
                s.set_flags(USERS[*u], BOXES[*b], l[p % l.len()].uid, op, &seen())
                    .map(|_| ())
            }
            _ => Ok(()),
        },
        Op::Expunge(u, b, p) => match s.list_messages(USERS[*u], Some(BOXES[*b])) {
            Ok(l) if !l.is_empty() => s
                .expunge(USERS[*u], BOXES[*b], &[l[p % l.len()].uid])
                .map(|_| ()),
            _ => Ok(()),
        },
        Op::Create(u, b) => s.create_mailbox(USERS[*u], BOXES[*b]).map(|_| ()),
        Op::Rename(u, b, c) => s.rename_mailbox(USERS[*u], BOXES[*b], BOXES[*c]),
        Op::Delete(u, b) => s.delete_mailbox(USERS[*u], BOXES[*b]),
        Op::Subscribe(u, b, on) => s.subscribe(USERS[*u], BOXES[*b], *on),
        Op::Sync => Ok(()),
    };
}

/// A random step: mostly appends and flags, now and then a mailbox operation, and `last` (a
/// `Subscribe` or a `Sync`, as the caller's history wants) as often as a rename.
pub fn arb_op(last: impl Strategy<Value = Op> + 'static) -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..2usize, 0..4usize, any::<u8>()).prop_map(|(u, b, x)| Op::Append(u, b, x)),
        3 => (0..2usize, 0..4usize, any::<usize>(), any::<bool>()).prop_map(|(u, b, p, on)| Op::Flag(u, b, p, on)),
        2 => (0..2usize, 0..4usize, any::<usize>()).prop_map(|(u, b, p)| Op::Expunge(u, b, p)),
        2 => (0..2usize, 1..4usize).prop_map(|(u, b)| Op::Create(u, b)),
        1 => (0..2usize, 1..4usize, 1..4usize).prop_map(|(u, b, c)| Op::Rename(u, b, c)),
        1 => (0..2usize, 1..4usize).prop_map(|(u, b)| Op::Delete(u, b)),
        1 => last,
    ]
}

/// One user's messages: (mailbox name, uid) → (the record's hash that `hash` picks, live
/// flags).
pub fn view(
    s: &Store,
    user: &str,
    hash: fn(&MessageRecord) -> String,
) -> BTreeMap<(String, u32), (String, Vec<String>)> {
    s.list_messages(user, None)
        .map(|l| {
            l.into_iter()
                .map(|m| {
                    (
                        (m.mailbox, m.uid),
                        (
                            hash(&m.record),
                            m.record.flags.live().map(|f| f.to_string()).collect(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reconciles `x` with `y` (once more, in the next window, if the first session did not end
/// equal) and checks that it ended equal: the same root on both, both stores sound.
pub fn sync_to_equal(x: &Store, y: &Store, window: u8) -> Result<(), TestCaseError> {
    let r = run(x, window, false, in_process(y)).expect("session");
    let r = if r.equal_after {
        r
    } else {
        run(x, window.wrapping_add(1), false, in_process(y)).expect("second session")
    };
    prop_assert!(r.equal_after, "not equal after: {:?}", r);
    prop_assert_eq!(x.root().expect("root"), y.root().expect("root"));
    prop_assert!(x.verify().expect("verify").is_ok());
    prop_assert!(y.verify().expect("verify").is_ok());
    Ok(())
}
