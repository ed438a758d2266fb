//! A whole reconciliation session between two in-memory models of a replica (maps behind
//! `sync::Replica`, no store, no redb): the session converges them, and over the same records
//! it asks and applies exactly what it does between two stores, round for round and byte for
//! byte.

use merkmail::merkle::{entry_hash, Dirty, MemoryTree, NodeHash, NodeKey, NodeValue};
use merkmail::model::{Change, ChangeGroup, CheckedBody};
use merkmail::model::{
    Digest, FlagName, FlagOp, FlagSet, MailboxGuid, MailboxName, MailboxRecord, MailboxSide,
    MailboxTombstone, Md5, MessageRecord, Stamp, Tombstone,
};
use merkmail::store::{Store, StoreError};
use merkmail::sync::{in_process, run, Replica, SyncReport};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

type MessageKey = (String, MailboxGuid, u32);

/// What a model replica holds: the live mailbox records, entry hashes and tree nodes are the
/// maps of a `merkle::MemoryTree`, so the store's own node computation runs over them.
#[derive(Clone, Default)]
struct State {
    mailboxes: BTreeMap<(String, MailboxGuid), MailboxRecord>,
    entries: BTreeMap<MessageKey, NodeHash>,
    nodes: BTreeMap<Vec<u8>, NodeValue>,
    messages: BTreeMap<MessageKey, MessageRecord>,
    expunged: BTreeMap<MessageKey, Vec<Tombstone>>,
    deleted: BTreeMap<(String, MailboxGuid), MailboxTombstone>,
    bodies: BTreeMap<Digest, Vec<u8>>,
    staged: BTreeMap<Digest, Vec<u8>>,
}

/// A replica in maps. It keeps the rules a session relies on (a message needs its mailbox,
/// a UID below UIDNEXT and a body that matches; a group applies only if its mailbox is as
/// the session saw it; all of an apply or none) and leaves out what these scenarios never
/// reach (reference counts, the identity index, purging).
#[derive(Default)]
struct Model {
    state: Mutex<State>,
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

fn corrupt(msg: impl Into<String>) -> StoreError {
    StoreError::Corrupt(msg.into())
}

impl State {
    fn apply_change(&mut self, change: &Change, dirty: &mut Dirty) -> Result<(), StoreError> {
        match change {
            Change::Mailbox { user, record } => {
                MailboxName::parse(&record.name).map_err(|e| invalid(e.to_string()))?;
                self.deleted.remove(&(user.clone(), record.guid));
                self.mailboxes
                    .insert((user.clone(), record.guid), record.clone());
                dirty.mark_mailbox(user, record.guid);
            }
            Change::Message {
                user,
                guid,
                uid,
                record,
                body,
            } => self.put_message(user, *guid, *uid, record, body.as_deref(), dirty)?,
            Change::Expunge {
                user,
                guid,
                uid,
                tombstone,
            } => {
                self.remove_message(user, *guid, *uid, dirty);
                let list = self
                    .expunged
                    .entry((user.clone(), *guid, *uid))
                    .or_default();
                list.retain(|t| t.digest != tombstone.digest);
                list.push(*tombstone);
            }
            Change::Remove { user, guid, uid } => self.remove_message(user, *guid, *uid, dirty),
            Change::DeleteMailbox { user, tombstone } => {
                let guid = tombstone.guid;
                let uids: Vec<u32> = self
                    .messages
                    .keys()
                    .filter(|(u, g, _)| u == user && *g == guid)
                    .map(|(_, _, uid)| *uid)
                    .collect();
                for uid in uids {
                    self.remove_message(user, guid, uid, dirty);
                }
                self.expunged
                    .retain(|(u, g, _), _| !(u == user && *g == guid));
                self.mailboxes.remove(&(user.clone(), guid));
                self.deleted.insert((user.clone(), guid), tombstone.clone());
                dirty.mark_mailbox(user, guid);
            }
        }
        Ok(())
    }

    fn put_message(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
        record: &MessageRecord,
        body: Option<&[u8]>,
        dirty: &mut Dirty,
    ) -> Result<(), StoreError> {
        let mailbox = self
            .mailboxes
            .get(&(user.to_string(), guid))
            .ok_or_else(|| invalid(format!("message {uid} for unknown mailbox {guid}")))?;
        if uid == 0 || uid >= mailbox.uidnext {
            return Err(invalid(format!("UID {uid} is not below UIDNEXT")));
        }
        let key = (user.to_string(), guid, uid);
        let old = self.messages.get(&key).map(|m| m.digest);
        if old != Some(record.digest) && !self.bodies.contains_key(&record.digest) {
            let bytes = match body {
                Some(b) => b.to_vec(),
                None => self.staged.remove(&record.digest).ok_or_else(|| {
                    invalid(format!("body {} neither sent nor held", record.digest))
                })?,
            };
            if Digest::of(&bytes) != record.digest
                || Md5::of(&bytes) != record.md5
                || bytes.len() as u64 != record.size
            {
                return Err(invalid(format!("a body that is not {}", record.digest)));
            }
            self.bodies.insert(record.digest, bytes);
        }
        let hash = entry_hash(uid, &record.digest, &record.flags);
        self.entries.insert(key.clone(), hash);
        self.messages.insert(key, record.clone());
        dirty.mark_message(user, guid, uid);
        Ok(())
    }

    fn remove_message(&mut self, user: &str, guid: MailboxGuid, uid: u32, dirty: &mut Dirty) {
        let key = (user.to_string(), guid, uid);
        self.messages.remove(&key);
        self.entries.remove(&key);
        dirty.mark_message(user, guid, uid);
    }

    /// The mailbox node's hash (empty when absent): what a group's guard is checked against.
    fn mailbox_hash(&self, user: &str, guid: MailboxGuid) -> NodeHash {
        let key = NodeKey::Mailbox {
            user: user.to_string(),
            guid,
        };
        self.nodes
            .get(&key.encode())
            .map_or(NodeHash::EMPTY, |v| v.hash)
    }
}

impl Model {
    /// Applies changes verbatim, all or none (the store's `apply`).
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        self.write(|state, dirty| {
            for c in changes {
                state.apply_change(c, dirty)?;
            }
            Ok(())
        })
    }

    /// One "transaction": the closure works on a copy, which replaces the state (with its
    /// tree brought up to date) only if the closure succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut State, &mut Dirty) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut next = self.state.lock().expect("model lock").clone();
        let mut dirty = Dirty::default();
        let out = f(&mut next, &mut dirty)?;
        let mut tree = MemoryTree {
            mailboxes: std::mem::take(&mut next.mailboxes),
            entries: std::mem::take(&mut next.entries),
            nodes: std::mem::take(&mut next.nodes),
        };
        let Ok(()) = dirty.flush(&mut tree);
        (next.mailboxes, next.entries, next.nodes) = (tree.mailboxes, tree.entries, tree.nodes);
        *self.state.lock().expect("model lock") = next;
        Ok(out)
    }

    fn messages(&self) -> BTreeMap<MessageKey, MessageRecord> {
        self.state.lock().expect("model lock").messages.clone()
    }

    fn mailboxes(&self) -> BTreeMap<(String, MailboxGuid), MailboxRecord> {
        self.state.lock().expect("model lock").mailboxes.clone()
    }
}

impl Replica for Model {
    fn node(&self, key: &NodeKey) -> Result<Option<NodeValue>, StoreError> {
        Ok(self
            .state
            .lock()
            .expect("model lock")
            .nodes
            .get(&key.encode())
            .copied())
    }

    fn children(&self, key: &NodeKey) -> Result<Vec<(NodeKey, NodeValue)>, StoreError> {
        let Some((start, end)) = key.children_range() else {
            return Ok(Vec::new());
        };
        let state = self.state.lock().expect("model lock");
        state
            .nodes
            .range(start..=end)
            .map(|(k, v)| {
                NodeKey::decode(k)
                    .map(|k| (k, *v))
                    .ok_or_else(|| corrupt("malformed tree key"))
            })
            .collect()
    }

    fn uid_level(
        &self,
        user: &str,
        guid: MailboxGuid,
        level: u8,
    ) -> Result<Vec<(u32, NodeValue)>, StoreError> {
        let node = |index| NodeKey::Uid {
            user: user.to_string(),
            guid,
            level,
            index,
        };
        let state = self.state.lock().expect("model lock");
        let range = node(0).encode()..=node(u32::MAX).encode();
        state
            .nodes
            .range(range)
            .map(|(k, v)| match NodeKey::decode(k) {
                Some(NodeKey::Uid { index, .. }) => Ok((index, *v)),
                _ => Err(corrupt("malformed UID node key")),
            })
            .collect()
    }

    fn bucket_entries(
        &self,
        user: &str,
        guid: MailboxGuid,
        bucket: u32,
    ) -> Result<Vec<(u32, NodeHash)>, StoreError> {
        let first = bucket << merkmail::merkle::BUCKET_SHIFT;
        let last = first | ((1 << merkmail::merkle::BUCKET_SHIFT) - 1);
        let range = (user.to_string(), guid, first)..=(user.to_string(), guid, last);
        let state = self.state.lock().expect("model lock");
        Ok(state
            .entries
            .range(range)
            .map(|((_, _, uid), h)| (*uid, *h))
            .collect())
    }

    fn mailbox_side_in(
        &self,
        user: &str,
        guid: MailboxGuid,
        ranges: &[(u32, u32)],
    ) -> Result<MailboxSide, StoreError> {
        let state = self.state.lock().expect("model lock");
        let key = (user.to_string(), guid);
        let mut side = MailboxSide {
            record: state.mailboxes.get(&key).cloned(),
            tombstone: state.deleted.get(&key).cloned(),
            ..MailboxSide::default()
        };
        for &(first, last) in ranges {
            let range = (user.to_string(), guid, first)..=(user.to_string(), guid, last);
            for ((_, _, uid), m) in state.messages.range(range.clone()) {
                side.messages.insert(*uid, m.clone());
            }
            for ((_, _, uid), ts) in state.expunged.range(range) {
                side.expunged
                    .entry(*uid)
                    .or_default()
                    .extend(ts.iter().copied());
            }
        }
        Ok(side)
    }

    fn mailbox_names(&self, user: &str) -> Result<Vec<(String, MailboxGuid)>, StoreError> {
        let state = self.state.lock().expect("model lock");
        let mut names: Vec<(String, MailboxGuid)> = state
            .mailboxes
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|((_, g), r)| (r.name.clone(), *g))
            .collect();
        if names.is_empty() {
            return Err(StoreError::UnknownUser(user.to_string()));
        }
        names.sort();
        Ok(names)
    }

    fn has_body(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self
            .state
            .lock()
            .expect("model lock")
            .bodies
            .contains_key(digest))
    }

    fn body(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        self.state
            .lock()
            .expect("model lock")
            .bodies
            .get(digest)
            .cloned()
            .ok_or_else(|| corrupt(format!("body {digest} is not held")))
    }

    fn stage_bodies(&self, bodies: &[CheckedBody<'_>]) -> Result<usize, StoreError> {
        self.write(|state, _| {
            for b in bodies {
                state.staged.insert(*b.digest(), b.bytes().to_vec());
            }
            Ok(bodies.len())
        })
    }

    fn apply_groups(&self, groups: &[ChangeGroup]) -> Result<Vec<bool>, StoreError> {
        self.write(|state, dirty| {
            let mut applied = Vec::with_capacity(groups.len());
            for g in groups {
                // Like the store, guards read the tree as the transaction found it.
                if state.mailbox_hash(&g.user, g.guid).truncated(g.window) != g.expect {
                    applied.push(false);
                    continue;
                }
                for c in &g.changes {
                    state.apply_change(c, dirty)?;
                }
                applied.push(true);
            }
            Ok(applied)
        })
    }
}

const USER: &str = "alice";
const INBOX: MailboxGuid = MailboxGuid([1; 16]);
const WORK: MailboxGuid = MailboxGuid([2; 16]);

fn stamp(ms: u64) -> Stamp {
    Stamp {
        ms,
        counter: 0,
        node: 1,
    }
}

fn mailbox(guid: MailboxGuid, name: &str, uidnext: u32, at: u64) -> Change {
    Change::Mailbox {
        user: USER.to_string(),
        record: MailboxRecord {
            guid,
            name: name.to_string(),
            uidvalidity: 7,
            uidnext,
            subscribed: true,
            name_stamp: stamp(at),
            subscribed_stamp: stamp(at),
            last_change: stamp(at),
        },
    }
}

fn message(guid: MailboxGuid, uid: u32, text: &str, flags: FlagSet, at: u64) -> Change {
    let body = format!("Subject: {text}\r\n\r\n{text}\r\n").into_bytes();
    Change::Message {
        user: USER.to_string(),
        guid,
        uid,
        record: MessageRecord {
            md5: Md5::of(&body),
            digest: Digest::of(&body),
            size: body.len() as u64,
            internal_date: 1_700_000_000 + i64::from(uid),
            flags,
            appended: stamp(at),
        },
        body: Some(body),
    }
}

fn seen(at: u64) -> FlagSet {
    let mut flags = FlagSet::default();
    let seen = FlagName::parse("\\Seen").expect("flag");
    flags.apply(FlagOp::Add, &[seen], stamp(at));
    flags
}

/// The same records in a model and in a store.
fn both(name: &str, changes: &[Change]) -> (Model, Store) {
    let model = Model::default();
    model.apply(changes).expect("model apply");
    let store = Store::in_memory(name).expect("store");
    store.apply(changes).expect("store apply");
    (model, store)
}

/// The report without its wall-clock time.
fn timeless(mut r: SyncReport) -> SyncReport {
    r.duration_ms = 0;
    r
}

/// Runs `a ← → b` over the models and over the stores, checks both converge, and that the
/// session did the same over both. Returns the models' report.
fn reconcile(a: &[Change], b: &[Change]) -> (Model, Model, SyncReport) {
    let (ma, sa) = both("a", a);
    let (mb, sb) = both("b", b);
    assert_eq!(
        ma.root().expect("root"),
        sa.root().expect("root"),
        "a's tree"
    );
    assert_eq!(
        mb.root().expect("root"),
        sb.root().expect("root"),
        "b's tree"
    );
    let over_models = timeless(run(&ma, 7, false, in_process(&mb)).expect("session"));
    let over_stores = timeless(run(&sa, 7, false, in_process(&sb)).expect("session"));
    assert_eq!(over_models, over_stores, "the session differs over models");
    assert!(over_models.equal_after, "{over_models:?}");
    assert_eq!(ma.root().expect("root"), mb.root().expect("root"));
    assert_eq!(ma.root().expect("root"), sa.root().expect("root"));
    assert_eq!(ma.messages(), mb.messages());
    assert_eq!(ma.mailboxes(), mb.mailboxes());
    (ma, mb, over_models)
}

#[test]
fn an_empty_model_learns_the_peers_mailbox_and_messages() {
    let remote = [
        mailbox(INBOX, "INBOX", 3, 10),
        message(INBOX, 1, "one", FlagSet::default(), 11),
        message(INBOX, 2, "two", seen(12), 12),
    ];
    let (a, _, report) = reconcile(&[], &remote);
    assert_eq!(report.copied_from_peer, 2);
    assert_eq!(report.copied_to_peer, 0);
    let Change::Message { record, .. } = &remote[2] else {
        unreachable!("the third change is a message");
    };
    let held = a.messages();
    let learned = held
        .get(&(USER.to_string(), INBOX, 2))
        .expect("message 2 learned");
    assert_eq!(learned, record);
    assert!(learned.flags.is_set("\\Seen"));
    let body = a.body(&record.digest).expect("body learned");
    assert_eq!(Digest::of(&body), record.digest);
}

#[test]
fn both_models_learn_what_the_other_changed() {
    let common = [
        mailbox(INBOX, "INBOX", 2, 10),
        message(INBOX, 1, "one", FlagSet::default(), 11),
    ];
    // Ours: message 1 seen later, and a mailbox the peer lacks.
    let mut ours = common.to_vec();
    ours.push(message(INBOX, 1, "one", seen(20), 11));
    ours.push(mailbox(WORK, "Work", 2, 21));
    ours.push(message(WORK, 1, "work", FlagSet::default(), 22));
    // Theirs: a second message in INBOX, at the UIDNEXT both sides had (so it keeps its UID).
    let mut theirs = common.to_vec();
    theirs.push(mailbox(INBOX, "INBOX", 3, 30));
    theirs.push(message(INBOX, 2, "two", FlagSet::default(), 30));
    let (a, b, report) = reconcile(&ours, &theirs);
    assert_eq!(report.copied_from_peer, 1, "{report:?}");
    assert_eq!(report.copied_to_peer, 1, "{report:?}");
    assert_eq!(report.flag_updates, 1, "{report:?}");
    assert_eq!(report.late_copies, 0, "{report:?}");
    let inbox_1 = (USER.to_string(), INBOX, 1);
    assert!(b.messages()[&inbox_1].flags.is_set("\\Seen"));
    assert!(a.messages().contains_key(&(USER.to_string(), INBOX, 2)));
    assert!(b.mailboxes().contains_key(&(USER.to_string(), WORK)));
}

#[test]
fn a_peers_expunge_and_delete_reach_the_model() {
    let common = [
        mailbox(INBOX, "INBOX", 3, 10),
        message(INBOX, 1, "one", FlagSet::default(), 11),
        message(INBOX, 2, "two", FlagSet::default(), 12),
        mailbox(WORK, "Work", 1, 13),
    ];
    let Change::Message { record, .. } = &common[1] else {
        unreachable!("the second change is a message");
    };
    let mut theirs = common.to_vec();
    theirs.push(Change::Expunge {
        user: USER.to_string(),
        guid: INBOX,
        uid: 1,
        tombstone: Tombstone::expunge(record, stamp(40)),
    });
    theirs.push(Change::DeleteMailbox {
        user: USER.to_string(),
        tombstone: MailboxTombstone {
            guid: WORK,
            name: "Work".to_string(),
            stamp: stamp(41),
            merged_into: None,
        },
    });
    let (a, _, report) = reconcile(&common, &theirs);
    assert_eq!(report.expunged, 1, "{report:?}");
    let uids: BTreeSet<u32> = a.messages().keys().map(|(_, _, uid)| *uid).collect();
    assert_eq!(uids, BTreeSet::from([2]));
    assert!(!a.mailboxes().contains_key(&(USER.to_string(), WORK)));
}
