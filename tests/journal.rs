//! The replication journal, in process: what each local write records, shipping A→B through
//! the wire format, that the journal path and the Merkle path agree on random split histories,
//! overflow, cursors and trimming, hostile batches, and crash safety of receive-then-apply.

mod random_ops;

use merkmail::model::{FlagOp, JournalBatch, JOURNAL_WIRE_VERSION, MAX_BATCH_ENTRIES};
use merkmail::store::{NewMessage, Store};
use merkmail::sync::journal_wire::{decode_batch, encode_batch, JournalWireError};
use merkmail::sync::{in_process, run};
use proptest::prelude::*;
use random_ops::{apply, msg, seen, sync_to_equal, Op, USERS};
use std::collections::BTreeMap;

fn peers(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Ships everything `from` holds for `peer` to `to`, in batches of `per` records, through the
/// wire encoding, acknowledging each; returns the number of batches.
fn ship(from: &Store, peer: &str, to: &Store, per: usize) -> usize {
    let mut batches = 0;
    loop {
        let batch = from.journal_batch(peer, per, 1 << 20).expect("batch");
        if batch.last_seq < batch.first_seq {
            return batches;
        }
        batches += 1;
        let wire = encode_batch(&batch);
        let decoded = decode_batch(&wire).expect("decode");
        assert_eq!(decoded, batch);
        let ack = to.journal_receive(&decoded).expect("receive");
        assert_eq!(ack, batch.last_seq);
        from.journal_ack(peer, ack).expect("ack");
    }
}

/// The records written since `after`, as (user, mailbox touched, uids), in seq order.
fn records_since(s: &Store, after: u64) -> Vec<(String, bool, Vec<u32>)> {
    s.journal_records(after, usize::MAX)
        .expect("records")
        .into_iter()
        .map(|(_, r)| (r.user, r.mailbox, r.uids))
        .collect()
}

#[test]
fn every_local_op_appends_one_record_per_touched_mailbox() {
    let s = Store::in_memory("a").expect("store");
    // No peer: nothing to ship to, nothing journaled.
    s.append("u", "INBOX", vec![msg("before")]).expect("append");
    assert_eq!(s.journal_head().expect("head"), 0);
    s.journal_register_peers(&peers(&["http://b"]), 1000)
        .expect("register");

    let mut head = s.journal_head().expect("head");
    // A new user: its INBOX and the new mailbox, two records.
    s.create_mailbox("v", "Work").expect("create");
    let got = records_since(&s, head);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got
        .iter()
        .all(|(u, m, uids)| u == "v" && *m && uids.is_empty()));
    head = s.journal_head().expect("head");
    let mut step = |what: &str, expect: Vec<(&str, bool, Vec<u32>)>| {
        let got = records_since(&s, head);
        let expect: Vec<(String, bool, Vec<u32>)> = expect
            .into_iter()
            .map(|(u, m, uids)| (u.to_string(), m, uids))
            .collect();
        assert_eq!(got, expect, "{what}");
        head = s.journal_head().expect("head");
    };
    step("another mailbox", vec![]);
    s.create_mailbox("u", "Work").expect("create");
    step("create", vec![("u", true, vec![])]);
    s.append("u", "Work", vec![msg("1"), msg("2")])
        .expect("append");
    step("append", vec![("u", true, vec![1, 2])]);
    s.set_flags("u", "Work", 2, FlagOp::Add, &seen())
        .expect("flags");
    step("flags", vec![("u", false, vec![2])]);
    s.set_flags("u", "Work", 2, FlagOp::Add, &seen())
        .expect("flags");
    step("a flag already set changes nothing", vec![]);
    s.expunge("u", "Work", &[1]).expect("expunge");
    step("expunge", vec![("u", false, vec![1])]);
    s.subscribe("u", "Work", true).expect("subscribe");
    step("subscribe", vec![("u", true, vec![])]);
    s.raise_uidnext("u", "Work", 50).expect("raise");
    step("raise_uidnext", vec![("u", true, vec![])]);
    s.rename_mailbox("u", "Work", "Play").expect("rename");
    step("rename", vec![("u", true, vec![])]);
    let prepared = s
        .prepare_import("u", "Imported", Some(77), false, None)
        .expect("prepare");
    assert!(prepared.keep_uids);
    step("prepare_import", vec![("u", true, vec![])]);
    s.append(
        "u",
        "Imported",
        vec![NewMessage {
            uid: Some(5),
            source: Some("f1".into()),
            ..msg("imported")
        }],
    )
    .expect("import batch");
    step("import batch", vec![("u", true, vec![5])]);
    s.delete_mailbox("u", "Play").expect("delete");
    step("delete", vec![("u", true, vec![])]);
    // A refused operation journals nothing: the record is in the operation's transaction.
    assert!(s.expunge("u", "INBOX", &[1, 99]).is_err());
    step("a failed expunge", vec![]);
    assert!(s.create_mailbox("u", "INBOX").is_err());
    step("a failed create", vec![]);
    let p = s.journal_peer("http://b").expect("peer");
    assert_eq!(p.depth, p.head - p.cursor);
    assert!(p.oldest_unshipped_ms.is_some());
}

#[test]
fn replicated_applies_journal_nothing() {
    let a = Store::in_memory("a").expect("store");
    let b = Store::in_memory("b").expect("store");
    a.journal_register_peers(&peers(&["b"]), 1000)
        .expect("register");
    b.journal_register_peers(&peers(&["a"]), 1000)
        .expect("register");
    a.append("u", "INBOX", vec![msg("1"), msg("2")])
        .expect("append");
    a.create_mailbox("u", "Work").expect("create");
    b.append("u", "INBOX", vec![msg("b")]).expect("append");
    let (ha, hb) = (
        a.journal_head().expect("head"),
        b.journal_head().expect("head"),
    );
    // Journal apply on B.
    ship(&a, "b", &b, 10);
    let applied = b.journal_apply_inbound(100).expect("apply");
    assert!(applied.applied + applied.dropped > 0);
    assert_eq!(b.journal_head().expect("head"), hb);
    // A Merkle session: both sides apply change groups.
    let r = run(&a, 3, false, in_process(&b)).expect("session");
    assert!(r.equal_after, "{r:?}");
    assert_eq!(a.journal_head().expect("head"), ha);
    assert_eq!(b.journal_head().expect("head"), hb);
    // Store::apply.
    let c = Store::in_memory("c").expect("store");
    c.journal_register_peers(&peers(&["a"]), 1000)
        .expect("register");
    let side = a
        .mailbox_side("u", merkmail::model::inbox_guid("u"), None)
        .expect("side");
    let record = side.record.expect("inbox");
    c.apply(&[merkmail::model::Change::Mailbox {
        user: "u".into(),
        record,
    }])
    .expect("apply");
    assert_eq!(c.journal_head().expect("head"), 0);
}

#[test]
fn a_batch_carries_current_state_and_bodies_once() {
    let a = Store::in_memory("a").expect("store");
    let b = Store::in_memory("b").expect("store");
    a.journal_register_peers(&peers(&["b"]), 1000)
        .expect("register");
    a.append("u", "INBOX", vec![msg("1"), msg("2"), msg("1")])
        .expect("append");
    a.set_flags("u", "INBOX", 1, FlagOp::Add, &seen())
        .expect("flags");
    a.expunge("u", "INBOX", &[2]).expect("expunge");
    let batch = a.journal_batch("b", 100, 1 << 20).expect("batch");
    assert_eq!((batch.first_seq, batch.last_seq), (1, 3));
    // Three records of one mailbox travel as one entry with the current state.
    assert_eq!(batch.entries.len(), 1);
    let e = &batch.entries[0];
    assert_eq!(e.seq, 3);
    assert_eq!(e.messages.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    assert!(e.messages[&1].flags.is_set("\\Seen"));
    assert_eq!(e.expunged.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(e.bodies.len(), 1, "UIDs 1 and 3 share a body; 2 is gone");
    // A byte budget smaller than one record still ships one record.
    let small = a.journal_batch("b", 100, 1).expect("batch");
    assert_eq!(small.last_seq, 1);
    b.journal_receive(&batch).expect("receive");
    let out = b.journal_apply_inbound(10).expect("apply");
    assert_eq!((out.applied, out.dropped, out.remaining), (1, 0, 0));
    assert_eq!(out.stats.copied, 2);
    assert!(out.check_with.is_empty());
    assert_eq!(a.root().expect("root"), b.root().expect("root"));
    assert!(b.verify().expect("verify").is_ok());
}

#[test]
fn overflow_jumps_the_cursor_trims_and_clears_after_a_merkle_session() {
    let a = Store::in_memory("a").expect("store");
    a.journal_register_peers(&peers(&["slow", "fast"]), 10)
        .expect("register");
    for i in 0..50 {
        a.append("u", "INBOX", vec![msg(&format!("{i}"))])
            .expect("append");
        let head = a.journal_head().expect("head");
        a.journal_ack("fast", head).expect("ack");
    }
    let head = a.journal_head().expect("head");
    assert_eq!(head, 50);
    let slow = a.journal_peer("slow").expect("peer");
    assert!(slow.overflowed, "{slow:?}");
    assert!(slow.overflows >= 1);
    assert!(slow.depth <= 10, "{slow:?}");
    assert!(slow.cursor >= 40, "{slow:?}");
    // Trimmed: nothing at or below the smallest cursor is kept.
    let kept = a.journal_records(0, usize::MAX).expect("records");
    assert!(kept.iter().all(|(seq, _)| *seq > slow.cursor));
    assert!(kept.len() <= 10);
    // A Merkle session that started before a later overflow does not clear it.
    a.journal_merkle_done("slow", slow.cursor.saturating_sub(1))
        .expect("done");
    assert!(a.journal_peer("slow").expect("peer").overflowed);
    // One that started at the head does, and moves the cursor to it.
    a.journal_merkle_done("slow", head).expect("done");
    let slow = a.journal_peer("slow").expect("peer");
    assert!(!slow.overflowed);
    assert_eq!((slow.cursor, slow.depth), (head, 0));
    assert!(a.journal_records(0, 100).expect("records").is_empty());
    // The overflow survives a restart (it is a table row): checked in the crash test's store.
}

#[test]
fn cursors_acks_trim_depth_age_and_registration() {
    let a = Store::in_memory("a").expect("store");
    a.journal_register_peers(&peers(&["p", "q"]), 1000)
        .expect("register");
    for i in 0..5 {
        a.append("u", "INBOX", vec![msg(&format!("{i}"))])
            .expect("append");
    }
    let p = a.journal_peer("p").expect("peer");
    assert_eq!((p.cursor, p.head, p.depth), (0, 5, 5));
    let first_at = p.oldest_unshipped_ms.expect("age");
    a.journal_ack("p", 3).expect("ack");
    a.journal_ack("p", 2)
        .expect("an older ack moves nothing back");
    a.journal_ack("p", 99)
        .expect("an ack past the head stops at it");
    let p = a.journal_peer("p").expect("peer");
    assert_eq!((p.cursor, p.depth, p.oldest_unshipped_ms), (5, 0, None));
    // q still needs everything: nothing trimmed.
    assert_eq!(a.journal_records(0, 100).expect("records").len(), 5);
    let q = a.journal_peer("q").expect("peer");
    assert_eq!(q.oldest_unshipped_ms, Some(first_at));
    a.journal_ack("q", 2).expect("ack");
    let kept: Vec<u64> = a
        .journal_records(0, 100)
        .expect("records")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, vec![3, 4, 5]);
    assert!(a.journal_ack("nobody", 1).is_err());
    assert!(a.journal_batch("nobody", 1, 1).is_err());
    // Re-registering keeps cursors; a new peer starts at the head; a dropped one is forgotten
    // and the entries only it needed go.
    a.journal_register_peers(&peers(&["p", "r"]), 1000)
        .expect("register");
    assert!(a.journal_peer("q").is_err());
    let r = a.journal_peer("r").expect("peer");
    assert_eq!((r.cursor, r.depth), (5, 0));
    assert!(a.journal_records(0, 100).expect("records").is_empty());
    let names: Vec<String> = a
        .journal_peers()
        .expect("peers")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["p".to_string(), "r".to_string()]);
    assert!(a.journal_register_peers(&peers(&[""]), 10).is_err());
}

#[test]
fn duplicates_retries_and_gaps() {
    let a = Store::in_memory("a").expect("store");
    let b = Store::in_memory("b").expect("store");
    a.journal_register_peers(&peers(&["b"]), 5)
        .expect("register");
    a.append("u", "INBOX", vec![msg("1")]).expect("append");
    let first = a.journal_batch("b", 10, 1 << 20).expect("batch");
    assert_eq!(b.journal_receive(&first).expect("receive"), 1);
    // The ack was lost: the sender retries with more.
    a.append("u", "INBOX", vec![msg("2")]).expect("append");
    let retry = a.journal_batch("b", 10, 1 << 20).expect("batch");
    assert_eq!((retry.first_seq, retry.last_seq), (1, 2));
    assert_eq!(b.journal_receive(&retry).expect("receive"), 2);
    assert_eq!(b.journal_receive(&first).expect("a duplicate"), 2);
    assert_eq!(b.journal_receive(&retry).expect("a duplicate"), 2);
    let senders = b.journal_senders().expect("senders");
    assert_eq!(senders[0].1.pending, 2);
    let out = b.journal_apply_inbound(10).expect("apply");
    assert_eq!((out.applied, out.remaining), (2, 0));
    assert!(out.check_with.is_empty());
    assert_eq!(a.root().expect("root"), b.root().expect("root"));
    // Applying the same batch again is harmless too.
    let mut again = retry.clone();
    again.first_seq = 3;
    again.last_seq = 4;
    for (i, e) in again.entries.iter_mut().enumerate() {
        e.seq = 3 + i as u64;
    }
    b.journal_receive(&again).expect("receive");
    let out = b.journal_apply_inbound(10).expect("apply");
    assert_eq!(out.dropped, 0, "{out:?}");
    assert_eq!(a.root().expect("root"), b.root().expect("root"));
    a.journal_ack("b", 2).expect("ack");
    // An overflow on the sender: the next batch starts past what B received → a gap, and the
    // sender is owed a Merkle session.
    for i in 0..20 {
        a.append("u", "INBOX", vec![msg(&format!("x{i}"))])
            .expect("append");
    }
    assert!(a.journal_peer("b").expect("peer").overflowed);
    a.append("u", "INBOX", vec![msg("after")]).expect("append");
    let gap = a.journal_batch("b", 10, 1 << 20).expect("batch");
    assert!(gap.first_seq > 5, "{}", gap.first_seq);
    b.journal_receive(&gap).expect("receive");
    let out = b.journal_apply_inbound(10).expect("apply");
    assert!(out.check_with.contains("a"), "{out:?}");
    assert_eq!(b.journal_senders().expect("senders")[0].1.gaps, 1);
    // Reported once.
    assert!(b
        .journal_apply_inbound(10)
        .expect("apply")
        .check_with
        .is_empty());
    // A batch from the node itself is refused.
    let b_self = JournalBatch {
        from: "b".into(),
        ..gap
    };
    assert!(b.journal_receive(&b_self).is_err());
}

#[test]
fn a_uid_clash_is_left_to_a_merkle_session() {
    let a = Store::in_memory("a").expect("store");
    let b = Store::in_memory("b").expect("store");
    a.append("u", "INBOX", vec![msg("base")]).expect("append");
    assert!(
        run(&a, 1, false, in_process(&b))
            .expect("session")
            .equal_after
    );
    a.journal_register_peers(&peers(&["b"]), 100)
        .expect("register");
    b.journal_register_peers(&peers(&["a"]), 100)
        .expect("register");
    a.append("u", "INBOX", vec![msg("on a")]).expect("append");
    b.append("u", "INBOX", vec![msg("on b")]).expect("append");
    a.create_mailbox("u", "Archive").expect("create");
    b.create_mailbox("u", "Archive").expect("create");
    ship(&a, "b", &b, 10);
    ship(&b, "a", &a, 10);
    let on_b = b.journal_apply_inbound(10).expect("apply");
    let on_a = a.journal_apply_inbound(10).expect("apply");
    for out in [&on_a, &on_b] {
        assert_eq!(out.stats.clashes, 2, "UID 2 and the name Archive: {out:?}");
        assert_eq!(out.check_with.len(), 1, "{out:?}");
    }
    let r = run(&a, 5, false, in_process(&b)).expect("session");
    assert!(r.equal_after, "{r:?}");
    assert_eq!(
        a.list_messages("u", Some("INBOX")).expect("list").len(),
        3,
        "both clashing messages survive"
    );
}

#[test]
fn hostile_batches_are_errors_never_panics() {
    let a = Store::in_memory("a").expect("store");
    a.journal_register_peers(&peers(&["b"]), 100)
        .expect("register");
    a.append("u", "INBOX", vec![msg("1"), msg("2")])
        .expect("append");
    let batch = a.journal_batch("b", 10, 1 << 20).expect("batch");
    let wire = encode_batch(&batch);
    for cut in 0..wire.len() {
        assert!(decode_batch(&wire[..cut]).is_err(), "truncated at {cut}");
    }
    let mut trailing = wire.clone();
    trailing.push(0);
    assert!(matches!(
        decode_batch(&trailing),
        Err(JournalWireError::Malformed(_))
    ));
    let mut version = wire.clone();
    version[0] = JOURNAL_WIRE_VERSION + 1;
    assert_eq!(
        decode_batch(&version),
        Err(JournalWireError::Version(JOURNAL_WIRE_VERSION + 1))
    );
    // A tiny body announcing a huge list: fails on missing bytes, allocates nothing big.
    let mut huge = vec![JOURNAL_WIRE_VERSION, 1, b'a', 1, 0];
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode_batch(&huge).is_err());
    // Too many entries, out-of-order seqs, a bad sender, a record under another GUID.
    let mut many = batch.clone();
    many.last_seq = (MAX_BATCH_ENTRIES as u64) + 10;
    many.entries = (0..=MAX_BATCH_ENTRIES as u64)
        .map(|i| {
            let mut e = batch.entries[0].clone();
            e.seq = i + 1;
            e.bodies.clear();
            e.messages.clear();
            e.expunged.clear();
            e
        })
        .collect();
    assert!(matches!(
        decode_batch(&encode_batch(&many)),
        Err(JournalWireError::TooMany(_))
    ));
    let mut disorder = batch.clone();
    disorder.entries.push(batch.entries[0].clone());
    assert!(matches!(
        decode_batch(&encode_batch(&disorder)),
        Err(JournalWireError::Invalid(_))
    ));
    let bad_sender = JournalBatch {
        from: "no/slash".into(),
        ..batch.clone()
    };
    assert!(decode_batch(&encode_batch(&bad_sender)).is_err());
    let mut other_guid = batch.clone();
    if let Some(r) = other_guid.entries[0].record.as_mut() {
        r.guid = merkmail::model::MailboxGuid([9; 16]);
    }
    assert!(decode_batch(&encode_batch(&other_guid)).is_err());
    // The store refuses the same things without the codec.
    let b = Store::in_memory("b").expect("store");
    assert!(b.journal_receive(&other_guid).is_err());
    // A body that does not match its digest is dropped at apply, never stored.
    let mut garbled = batch.clone();
    for e in &mut garbled.entries {
        for body in &mut e.bodies {
            body.push(b'!');
        }
    }
    b.journal_receive(&garbled).expect("receive");
    let out = b.journal_apply_inbound(10).expect("apply");
    assert_eq!((out.applied, out.stats.invalid), (0, 1), "{out:?}");
    assert!(out.check_with.contains("a"));
    assert_eq!(b.counters().expect("counters").messages, 0);
    assert!(b.verify().expect("verify").is_ok());
}

#[test]
fn received_entries_survive_a_crash_before_they_are_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Store::in_memory("a").expect("store");
    a.journal_register_peers(&peers(&["b"]), 1000)
        .expect("register");
    a.append("u", "INBOX", vec![msg("1"), msg("2")])
        .expect("append");
    a.create_mailbox("u", "Work").expect("create");
    a.append("u", "Work", vec![msg("3")]).expect("append");
    {
        let b = Store::init(dir.path(), "b").expect("init");
        b.journal_register_peers(&peers(&["a"]), 3)
            .expect("register");
        let batch = decode_batch(&encode_batch(
            &a.journal_batch("b", 100, 1 << 20).expect("batch"),
        ))
        .expect("decode");
        let ack = b.journal_receive(&batch).expect("receive");
        a.journal_ack("b", ack).expect("ack");
        // B overflows its own peer too, to see the flag survive.
        for i in 0..5 {
            b.append("v", "INBOX", vec![msg(&format!("{i}"))])
                .expect("append");
        }
        assert!(b.journal_peer("a").expect("peer").overflowed);
        // Dropped here without applying: the process "dies" after acknowledging.
    }
    let b = Store::open(dir.path()).expect("reopen");
    assert!(b.journal_peer("a").expect("peer").overflowed);
    assert_eq!(
        b.journal_senders().expect("senders")[0].1.pending,
        2,
        "INBOX and Work"
    );
    let out = b.journal_apply_inbound(100).expect("apply");
    assert_eq!((out.applied, out.remaining), (2, 0), "{out:?}");
    assert_eq!(view(&a, "u"), view(&b, "u"));
    assert!(b.verify().expect("verify").is_ok());
}

/// (mailbox name, uid) → (digest, flags).
fn view(s: &Store, user: &str) -> BTreeMap<(String, u32), (String, Vec<String>)> {
    random_ops::view(s, user, |r| r.digest.to_hex())
}

// ---- random histories ----

fn arb_op() -> impl Strategy<Value = Op> {
    random_ops::arb_op(
        (0..2usize, 0..4usize, any::<bool>()).prop_map(|(u, b, on)| Op::Subscribe(u, b, on)),
    )
}

/// Every live message as (user, digest), with multiplicity.
fn live_digests(s: &Store) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in USERS {
        for m in s.list_messages(u, None).unwrap_or_default() {
            out.entry(u.to_string())
                .or_default()
                .push(m.record.digest.to_hex());
        }
    }
    out
}

type Sides = BTreeMap<(String, merkmail::model::MailboxGuid), merkmail::model::MailboxSide>;

/// Every mailbox (live or tombstoned) of either store, as this store holds it.
fn sides(s: &Store, other: &Store) -> Sides {
    let mut out = Sides::new();
    for u in USERS {
        for st in [s, other] {
            for m in st.list_mailboxes(u).unwrap_or_default() {
                let side = s.mailbox_side(u, m.guid, None).expect("side");
                out.insert((u.to_string(), m.guid), side);
            }
        }
    }
    out
}

fn cases() -> u32 {
    std::env::var("JOURNAL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Writes on A only: the journal alone brings B to A's root, whatever the batch size.
    #[test]
    fn the_journal_alone_converges_a_one_sided_history(
        common in prop::collection::vec(arb_op(), 0..10),
        ops in prop::collection::vec(arb_op(), 0..30),
        per in 1usize..6,
        apply_every_batch in any::<bool>(),
    ) {
        let a = Store::in_memory("a").expect("store");
        let b = Store::in_memory("b").expect("store");
        for op in &common { apply(&a, op); }
        prop_assert!(run(&a, 1, false, in_process(&b)).expect("session").equal_after);
        a.journal_register_peers(&peers(&["b"]), 10_000).expect("register");
        b.journal_register_peers(&peers(&["a"]), 10_000).expect("register");
        for op in &ops { apply(&a, op); }
        if apply_every_batch {
            loop {
                let n = ship(&a, "b", &b, per);
                let out = b.journal_apply_inbound(usize::MAX).expect("apply");
                prop_assert!(out.check_with.is_empty(), "{:?}", out);
                if n == 0 { break; }
            }
        } else {
            ship(&a, "b", &b, per);
            let out = b.journal_apply_inbound(usize::MAX).expect("apply");
            prop_assert!(out.check_with.is_empty(), "{:?}", out);
            prop_assert_eq!(out.remaining, 0);
        }
        prop_assert_eq!(a.root().expect("root"), b.root().expect("root"));
        prop_assert!(b.verify().expect("verify").is_ok());
        prop_assert_eq!(b.journal_head().expect("head"), 0, "B journals nothing it applied");
    }

    /// Split histories: shipping both journals (with duplicates), then one Merkle session,
    /// gives equal roots and loses no mail that the other side did not expunge or delete.
    #[test]
    fn the_journal_and_the_merkle_path_agree(
        common in prop::collection::vec(arb_op(), 0..10),
        on_a in prop::collection::vec(arb_op(), 0..15),
        on_b in prop::collection::vec(arb_op(), 0..15),
        per in 1usize..6,
        window in any::<u8>(),
    ) {
        let a = Store::in_memory("a").expect("store");
        let b = Store::in_memory("b").expect("store");
        for op in &common { apply(&a, op); }
        prop_assert!(run(&a, window, false, in_process(&b)).expect("session").equal_after);
        a.journal_register_peers(&peers(&["b"]), 10_000).expect("register");
        b.journal_register_peers(&peers(&["a"]), 10_000).expect("register");
        for op in &on_a { apply(&a, op); }
        for op in &on_b { apply(&b, op); }
        let (sides_a, sides_b) = (sides(&a, &b), sides(&b, &a));
        let (before_a, before_b) = (live_digests(&a), live_digests(&b));

        // Both journals, each batch delivered twice (a retry after a lost ack).
        for (from, peer, to) in [(&a, "b", &b), (&b, "a", &a)] {
            loop {
                let batch = from.journal_batch(peer, per, 1 << 20).expect("batch");
                if batch.last_seq < batch.first_seq { break; }
                let decoded = decode_batch(&encode_batch(&batch)).expect("decode");
                to.journal_receive(&decoded).expect("receive");
                let ack = to.journal_receive(&decoded).expect("receive again");
                from.journal_ack(peer, ack).expect("ack");
            }
        }
        b.journal_apply_inbound(usize::MAX).expect("apply");
        a.journal_apply_inbound(usize::MAX).expect("apply");
        prop_assert!(a.verify().expect("verify").is_ok());
        prop_assert!(b.verify().expect("verify").is_ok());

        sync_to_equal(&a, &b, window)?;

        // No mail lost: every message live on one side before is live afterwards (in some
        // mailbox of its user), unless the other side expunged that UID and digest, or deleted
        // its mailbox after its last change.
        let after = live_digests(&a);
        prop_assert_eq!(&after, &live_digests(&b));
        for (mine, theirs) in [(&sides_a, &sides_b), (&sides_b, &sides_a)] {
            for (key, side) in mine {
                let Some(record) = &side.record else { continue };
                let other = theirs.get(key);
                for (uid, m) in &side.messages {
                    let expunged = other.is_some_and(|t| t.expunged.get(uid).is_some_and(|ts| ts.iter().any(|x| x.digest == m.digest)));
                    let deleted = other.and_then(|t| t.tombstone.as_ref()).is_some_and(|t| record.last_change <= t.stamp);
                    if !expunged && !deleted {
                        prop_assert!(
                            after.get(&key.0).is_some_and(|ds| ds.contains(&m.digest.to_hex())),
                            "lost {} (user {}, mailbox {}, uid {})", m.digest, key.0, key.1, uid
                        );
                    }
                }
            }
        }
        // Nothing duplicated.
        for (user, ds) in &after {
            for d in ds {
                let n_after = ds.iter().filter(|x| *x == d).count();
                let n_before = [&before_a, &before_b].iter().filter_map(|m| m.get(user)).flatten().filter(|x| *x == d).count();
                prop_assert!(n_after <= n_before, "{} copies of {} after, {} before", n_after, d, n_before);
            }
        }
    }

    #[test]
    fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_batch(&bytes);
        let mut v = vec![JOURNAL_WIRE_VERSION];
        v.extend_from_slice(&bytes);
        let _ = decode_batch(&v);
    }
}

/// The journal's cost per local write: `cargo test --release --test journal -- --ignored
/// --nocapture journal_cost`. Prints figures; asserts nothing about time.
#[test]
#[ignore]
fn journal_cost() {
    const N: usize = 2000;
    for on_disk in [false, true] {
        for peers_n in [0usize, 1, 3, 0, 1, 3] {
            let dir = tempfile::tempdir().expect("tempdir");
            let s = if on_disk {
                Store::init(dir.path(), "a").expect("init")
            } else {
                Store::in_memory("a").expect("store")
            };
            let names: Vec<String> = (0..peers_n).map(|i| format!("http://p{i}")).collect();
            s.journal_register_peers(&names, 1_000_000)
                .expect("register");
            s.append("u", "INBOX", vec![msg("warm")]).expect("append");
            let started = std::time::Instant::now();
            for i in 0..N {
                s.append("u", "INBOX", vec![msg(&format!("{i}"))])
                    .expect("append");
            }
            let per = started.elapsed() / N as u32;
            println!(
                "{} store, {peers_n} peers: {per:?} per append (head {})",
                if on_disk { "file" } else { "memory" },
                s.journal_head().expect("head")
            );
        }
    }
}

#[test]
fn the_empty_batch_is_six_bytes_as_docs_journal_md_draws_it() {
    let empty = JournalBatch {
        version: JOURNAL_WIRE_VERSION,
        from: "a".into(),
        first_seq: 5,
        last_seq: 4,
        entries: Vec::new(),
    };
    let wire = encode_batch(&empty);
    assert_eq!(wire, vec![0x02, 0x01, b'a', 0x05, 0x04, 0x00]);
    assert_eq!(decode_batch(&wire), Ok(empty));
    // And the deleted-mailbox entry's head: seq 7, at_ms 1 700 000 000 000, user "u".
    let entry = merkmail::model::ShippedEntry {
        seq: 7,
        at_ms: 1_700_000_000_000,
        user: "u".into(),
        guid: merkmail::model::MailboxGuid([0xab; 16]),
        record: None,
        tombstone: None,
        messages: BTreeMap::new(),
        expunged: BTreeMap::new(),
        bodies: Vec::new(),
    };
    let one = JournalBatch {
        version: JOURNAL_WIRE_VERSION,
        from: "a".into(),
        first_seq: 7,
        last_seq: 7,
        entries: vec![entry],
    };
    let wire = encode_batch(&one);
    let mut expect = vec![0x02, 0x01, b'a', 0x07, 0x07, 0x01, 0x07];
    expect.extend_from_slice(&[0x80, 0xd0, 0x95, 0xff, 0xbc, 0x31, 0x01, b'u']);
    expect.extend_from_slice(&[0xab; 16]);
    expect.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0x00]);
    assert_eq!(wire, expect);
}

/// Shipping throughput, file-backed on both sides: `cargo test --release --test journal --
/// --ignored --nocapture journal_shipping_rate`. 2000 appends of 4 KiB spread over 200 users,
/// shipped in batches of up to 500 records, received and applied. Prints; asserts no timing.
#[test]
#[ignore]
fn journal_shipping_rate() {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = Store::init(da.path(), "a").expect("init");
    let b = Store::init(db.path(), "b").expect("init");
    a.journal_register_peers(&peers(&["b"]), 1_000_000)
        .expect("register");
    const N: usize = 2000;
    for i in 0..N {
        let mut m = msg(&format!("{i}"));
        m.bytes.extend(std::iter::repeat_n(b'x', 4096));
        a.append(&format!("user{:03}", i % 200), "INBOX", vec![m])
            .expect("append");
    }
    let started = std::time::Instant::now();
    let mut bytes = 0usize;
    let mut batches = 0;
    loop {
        let batch = a.journal_batch("b", 500, 16 << 20).expect("batch");
        if batch.last_seq < batch.first_seq {
            break;
        }
        let wire = encode_batch(&batch);
        bytes += wire.len();
        batches += 1;
        let ack = b
            .journal_receive(&decode_batch(&wire).expect("decode"))
            .expect("receive");
        a.journal_ack("b", ack).expect("ack");
    }
    let shipped = started.elapsed();
    let out = b.journal_apply_inbound(usize::MAX).expect("apply");
    let total = started.elapsed();
    assert_eq!(a.root().expect("root"), b.root().expect("root"));
    println!(
        "{N} appends of 4 KiB, 200 users: {batches} batches, {bytes} bytes; shipped and stored in {shipped:?}, applied {} entries; total {total:?} = {:.0} changes/s",
        out.applied,
        N as f64 / total.as_secs_f64()
    );
}
