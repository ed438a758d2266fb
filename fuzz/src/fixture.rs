//! The store the fuzz targets run against: a few users, mailboxes, messages, flags and
//! tombstones, built from fixed records (fixed GUIDs and stamps) so that every run starts
//! from the same bytes and a corpus entry that names a mailbox keeps naming it.
//!
//! Shared by the fuzz crate and `tests/fuzz_regressions.rs` (which includes this file by
//! path), so a regression test replays an input against exactly the store the target used.
//!
//! Building a store for every input cost more than the check itself (a redb database, its
//! tables, the fixture's commit, and the allocator state redb writes when the database is
//! dropped: about half of each input in the `http` target). So each thread builds the store
//! once and [`Store::rewind`]s it before every input; [`Reused::fresh`] checks that the rewind
//! brought back the root and the counters the store had when it was built.

use merkmail::merkle::NodeValue;
use merkmail::model::Change;
use merkmail::model::{
    inbox_guid, FlagName, FlagSet, MailboxGuid, MailboxRecord, MailboxTombstone, Stamp, Tombstone,
};
use merkmail::store::{Counters, Mark, Store, StoreError};
use merkmail::sync::wire::record_with_body;
use std::cell::RefCell;
use std::sync::Arc;

/// The fixture's node id.
pub const NODE: &str = "fuzz-a";
/// The users it holds.
pub const USERS: [&str; 2] = ["alice", "bob"];
/// The GUID of alice's `Work` mailbox.
pub const WORK: MailboxGuid = MailboxGuid([
    0x57, 0x6f, 0x72, 0x6b, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c,
]);
/// The GUID of alice's deleted `Old` mailbox (only its tombstone remains).
pub const OLD: MailboxGuid = MailboxGuid([0x0d; 16]);

/// 2026-05-01 in milliseconds: every fixed stamp lies shortly after it.
const BASE_MS: u64 = 1_777_593_600_000;

fn stamp(n: u64) -> Stamp {
    Stamp {
        ms: BASE_MS + n,
        counter: 0,
        node: merkmail::store::node_tag("fuzz-b"),
    }
}

fn mailbox(guid: MailboxGuid, name: &str, uidvalidity: u32, uidnext: u32) -> MailboxRecord {
    MailboxRecord {
        guid,
        name: name.to_string(),
        uidvalidity,
        uidnext,
        subscribed: name == "INBOX",
        name_stamp: stamp(1),
        subscribed_stamp: stamp(1),
        last_change: stamp(10),
    }
}

fn flags(names: &[&str], at: u64) -> FlagSet {
    let names: Vec<FlagName> = names
        .iter()
        .filter_map(|n| FlagName::parse(n).ok())
        .collect();
    FlagSet::initial(&names, stamp(at))
}

fn message(user: &str, guid: MailboxGuid, uid: u32, body: &[u8], set: &[&str]) -> Change {
    Change::Message {
        user: user.to_string(),
        guid,
        uid,
        record: record_with_body(
            1_777_000_000 + i64::from(uid),
            flags(set, 2 + u64::from(uid)),
            stamp(2 + u64::from(uid)),
            body,
        ),
        body: Some(body.to_vec()),
    }
}

/// A message body as a mail client would send it.
pub fn body(n: u32) -> Vec<u8> {
    format!(
        "From: a{n}@example.org\r\nTo: b@example.org\r\nSubject: fixture {n}\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

/// The fixture's changes, in an order the store can apply.
pub fn changes() -> Vec<Change> {
    let alice = "alice".to_string();
    let bob = "bob".to_string();
    let inbox_a = inbox_guid("alice");
    let inbox_b = inbox_guid("bob");
    vec![
        Change::Mailbox {
            user: alice.clone(),
            record: mailbox(inbox_a, "INBOX", 1_000, 5),
        },
        Change::Mailbox {
            user: alice.clone(),
            record: mailbox(WORK, "Work", 2_000, 70),
        },
        Change::Mailbox {
            user: bob.clone(),
            record: mailbox(inbox_b, "INBOX", 3_000, 2),
        },
        message("alice", inbox_a, 1, &body(1), &["\\Seen"]),
        message(
            "alice",
            inbox_a,
            2,
            &body(2),
            &["\\Seen", "\\Flagged", "$Label1"],
        ),
        message("alice", inbox_a, 4, &body(4), &[]),
        // The same body at two places: single-instance storage shares it.
        message("alice", WORK, 3, &body(1), &["Junk"]),
        message("alice", WORK, 65, &body(5), &["\\Answered"]),
        message("bob", inbox_b, 1, &body(6), &["\\Draft"]),
        Change::Expunge {
            user: alice.clone(),
            guid: inbox_a,
            uid: 3,
            tombstone: Tombstone {
                digest: merkmail::model::Digest::of(&body(3)),
                stamp: stamp(9),
                origin: Some(stamp(1)),
            },
        },
        Change::DeleteMailbox {
            user: alice,
            tombstone: MailboxTombstone {
                guid: OLD,
                name: "Old".to_string(),
                merged_into: None,
                stamp: stamp(8),
            },
        },
    ]
}

/// A fresh in-memory store holding the fixture.
pub fn store() -> Result<Store, StoreError> {
    let store = Store::in_memory(NODE)?;
    store.apply(&changes())?;
    Ok(store)
}

/// A store built once and put back before every use.
pub struct Reused {
    store: Arc<Store>,
    mark: RefCell<Mark>,
    built: (NodeValue, Counters),
}

impl Reused {
    /// Marks `store` as it is now: what every [`Reused::fresh`] returns to.
    pub fn new(store: Store) -> Result<Reused, StoreError> {
        let built = (store.root()?, store.counters()?);
        let mark = store.mark()?;
        Ok(Reused {
            store: Arc::new(store),
            mark: RefCell::new(mark),
            built,
        })
    }

    /// The store, rewound to the state it was built in. Panics if the rewind failed or did not
    /// bring back the root and the counters (then the inputs would no longer start equal).
    pub fn fresh(&self) -> &Arc<Store> {
        self.store
            .rewind(&mut self.mark.borrow_mut())
            .expect("rewind");
        let now = (
            self.store.root().expect("root"),
            self.store.counters().expect("counters"),
        );
        assert_eq!(
            now, self.built,
            "the rewound store differs from the one built"
        );
        &self.store
    }
}

thread_local! {
    static FIXTURE: Reused = Reused::new(store().expect("fixture")).expect("mark the fixture");
    static EMPTY: Reused =
        Reused::new(Store::in_memory("fuzz-ops").expect("empty store")).expect("mark it");
}

/// Runs `f` on the fixture as [`store`] builds it (this thread's, rewound).
pub fn with_fixture<T>(f: impl FnOnce(&Arc<Store>) -> T) -> T {
    FIXTURE.with(|r| f(r.fresh()))
}

/// Runs `f` on an empty in-memory store with node id `fuzz-ops` (this thread's, rewound).
pub fn with_empty<T>(f: impl FnOnce(&Arc<Store>) -> T) -> T {
    EMPTY.with(|r| f(r.fresh()))
}
