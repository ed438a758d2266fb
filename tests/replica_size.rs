//! What a replica's size depends on, as counts: a session writes each body into the body
//! table once and leaves nothing staged; compaction gives a grown file's free pages back
//! without changing what it holds; the stats show the file's size.

use merkmail::model::CheckedBody;
use merkmail::net::json::StatsView;
use merkmail::store::{NewMessage, Store};
use merkmail::sync::{in_process, run};

/// Distinct messages of a few kilobytes each, like real mail (and larger than a redb page).
fn mail(n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|i| NewMessage {
            bytes: format!(
                "Subject: message {i}\r\n\r\n{}\r\n",
                format!("line {i} of a body that takes some room. ").repeat(100 + i % 50)
            )
            .into_bytes(),
            ..Default::default()
        })
        .collect()
}

fn mail_bytes(s: &Store) -> u64 {
    StatsView::of(s).expect("stats").bytes
}

#[test]
fn a_session_writes_each_body_once_on_both_sides_and_leaves_nothing_staged() {
    let a = Store::in_memory("a").expect("store");
    a.append("u", "INBOX", mail(150)).expect("append");
    a.create_mailbox("u", "Archive").expect("mailbox");
    a.append("u", "Archive", mail(30)).expect("append"); // the same bodies: stored once
    let written_by_import = a.body_bytes_written();
    let held = StatsView::of(&a).expect("stats").body_bytes;
    assert_eq!(written_by_import, held);

    // A sends: the responder (B) stages the bodies the session pushes.
    let b = Store::in_memory("b").expect("store");
    let report = run(&a, 7, false, in_process(&b)).expect("session");
    assert!(report.equal_after);
    assert_eq!(b.body_bytes_written(), held, "B wrote a body twice");
    assert_eq!(b.staged_bodies().expect("staged"), 0);
    assert_eq!(mail_bytes(&b), mail_bytes(&a));

    // C fetches: the session's own side stages the bodies it asks for.
    let c = Store::in_memory("c").expect("store");
    let report = run(&c, 7, false, in_process(&a)).expect("session");
    assert!(report.equal_after);
    assert_eq!(c.body_bytes_written(), held, "C wrote a body twice");
    // C staged the bodies it fetched without waiting for the disk; its applies were durable.
    let (durable, soon) = c.commits();
    assert!(
        soon >= 1 && durable >= 1,
        "{durable} durable, {soon} not waited for"
    );
    assert_eq!(c.staged_bodies().expect("staged"), 0);
    assert_eq!(a.body_bytes_written(), written_by_import, "A wrote bodies");

    for s in [&a, &b, &c] {
        let v = s.verify().expect("verify");
        assert!(v.is_ok(), "{:?}", v.problems);
    }
}

#[test]
fn staged_bodies_count_and_verify_until_taken() {
    let a = Store::in_memory("a").expect("store");
    let bodies: Vec<Vec<u8>> = mail(3).into_iter().map(|m| m.bytes).collect();
    let checked: Vec<CheckedBody<'_>> = bodies.iter().map(|b| CheckedBody::new(b)).collect();
    let (durable, soon) = a.commits();
    assert_eq!(a.stage_bodies(&checked).expect("stage"), 3);
    // Staging does not wait for the disk: the change that takes the bodies will.
    assert_eq!(a.commits(), (durable, soon + 1));
    // Staged again (a retried batch): written once.
    a.stage_bodies(&checked).expect("stage");
    let total: u64 = bodies.iter().map(|b| b.len() as u64).sum();
    assert_eq!(a.body_bytes_written(), total);
    assert_eq!(a.staged_bodies().expect("staged"), 3);
    let v = a.verify().expect("verify");
    assert!(v.is_ok(), "{:?}", v.problems);
}

#[test]
fn compaction_shrinks_a_grown_store_and_keeps_its_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::init(dir.path(), "a").expect("init");
    // Many small commits, then most of the mail expunged: free pages stay in the file.
    for chunk in 0..20 {
        let msgs = mail(20)
            .into_iter()
            .map(|mut m| {
                m.bytes
                    .extend_from_slice(format!("chunk {chunk}\r\n").as_bytes());
                m
            })
            .collect();
        store.append("u", "INBOX", msgs).expect("append");
    }
    let uids: Vec<u32> = (1..=380).collect();
    store.expunge("u", "INBOX", &uids).expect("expunge");
    let root = store.root().expect("root");
    let stats = StatsView::of(&store).expect("stats");
    let grown = stats.file_bytes.expect("a file store has a file size");
    assert!(grown > 0);
    let json = serde_json::to_value(&stats).expect("json");
    assert_eq!(json["file_bytes"], grown);

    let done = store.compact().expect("compact");
    assert_eq!(done.before, grown);
    assert!(done.after < done.before, "{done:?}");
    assert_eq!(store.root().expect("root"), root);
    let v = store.verify().expect("verify");
    assert!(v.is_ok(), "{:?}", v.problems);
    drop(store);
    let reopened = Store::open(dir.path()).expect("reopen");
    assert_eq!(reopened.root().expect("root"), root);
    // Opening writes a little (redb's allocator state), far less than was given back.
    let reopened_size = StatsView::of(&reopened)
        .expect("stats")
        .file_bytes
        .expect("file size");
    assert!(reopened_size < grown, "{reopened_size} {done:?}");
}

#[test]
fn an_in_memory_store_shows_no_file_size() {
    let store = Store::in_memory("a").expect("store");
    let json = serde_json::to_value(StatsView::of(&store).expect("stats")).expect("json");
    assert!(json.get("file_bytes").is_none());
}

/// The same count in file sizes: a body table written twice (a staging copy) would leave the
/// replica's file about twice the source's.
#[test]
fn a_replica_file_is_about_the_size_of_its_source() {
    let dirs = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = Store::init(dirs.0.path(), "a").expect("init");
    a.append("u", "INBOX", mail(300)).expect("append");
    let b = Store::init(dirs.1.path(), "b").expect("init");
    let report = run(&b, 7, false, in_process(&a)).expect("session");
    assert!(report.equal_after);
    let size = |s: &Store| s.file_size().expect("size").expect("a file");
    let (source, replica) = (size(&a), size(&b));
    assert!(
        replica * 10 <= source * 13,
        "replica {replica} bytes, source {source} bytes"
    );
}

/// Bodies are kept in page-sized pieces plus a tail: a piece fills one redb page exactly
/// (none is rounded up to a run of pages), the tails share pages, and what comes back is
/// the bytes that went in, whatever their length around a piece's size.
#[test]
fn bodies_are_kept_in_pieces_that_each_fill_one_page() {
    use merkmail::store::PIECE;
    let a = Store::in_memory("a").expect("store");
    let mut msgs = mail(60); // 4–8 kB each: one or two pieces and a tail
    for len in [0, 1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE, 3 * PIECE + 7] {
        let head = format!("Subject: {len}\r\n\r\n").into_bytes();
        let mut bytes = head.clone();
        bytes.resize(len.max(head.len()), b'x');
        msgs.push(NewMessage {
            bytes,
            ..Default::default()
        });
    }
    let expected: Vec<Vec<u8>> = msgs.iter().map(|m| m.bytes.clone()).collect();
    let whole: u64 = expected.iter().map(|b| (b.len() / PIECE) as u64).sum();
    a.append("u", "INBOX", msgs).expect("append");

    let space = a.space().expect("space");
    let table = |name: &str| {
        space
            .tables
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no table {name}: {space:?}"))
            .clone()
    };
    let pieces = table("body_pieces");
    assert_eq!(pieces.rows, whole);
    assert_eq!(pieces.leaf_pages, whole, "one page per piece: {pieces:?}");
    // Every leaf is full to the byte: what is not filled is in the branch pages.
    assert!(
        pieces.fragmented_bytes < pieces.branch_pages * PIECE as u64,
        "{pieces:?}"
    );
    assert_eq!(table("body_tails").rows, expected.len() as u64);
    assert_eq!(table("bodies").rows, 0);

    for (uid, bytes) in (1u32..).zip(&expected) {
        assert_eq!(
            &a.fetch("u", "INBOX", uid).expect("fetch"),
            bytes,
            "UID {uid}"
        );
    }
    let v = a.verify_bodies(&mut |_| {}).expect("verify");
    assert_eq!(v.bodies_checked, expected.len() as u64);
    assert!(v.damaged.is_empty());
}

/// An initial copy into an empty store ends compacted (what `sync --data` does), and a
/// store that held mail before is left alone.
#[test]
fn an_initial_copy_into_an_empty_store_is_compacted_and_only_that() {
    let dirs = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = Store::in_memory("a").expect("store");
    a.append("u", "INBOX", mail(400)).expect("append");
    let b = Store::init(dirs.0.path(), "b").expect("init");
    let was_empty = b.counters().expect("counters").messages == 0;
    assert!(
        run(&b, 7, false, in_process(&a))
            .expect("session")
            .equal_after
    );
    let done = b
        .compact_after_first_fill(was_empty)
        .expect("compact")
        .expect("an initial copy is compacted");
    assert!(done.after <= done.before, "{done:?}");
    let space = b.space().expect("space");
    let free = space.file_bytes.expect("a file") - space.allocated_pages * space.page_size;
    assert!(
        free * 20 <= done.after,
        "{free} bytes unallocated: {space:?}"
    );
    assert!(b.verify().expect("verify").is_ok());

    // More mail later: not an initial copy, not compacted.
    let c = Store::init(dirs.1.path(), "c").expect("init");
    c.append("u", "INBOX", mail(5)).expect("append");
    let was_empty = c.counters().expect("counters").messages == 0;
    assert!(
        run(&c, 7, false, in_process(&a))
            .expect("session")
            .equal_after
    );
    assert_eq!(c.compact_after_first_fill(was_empty).expect("no-op"), None);
}
