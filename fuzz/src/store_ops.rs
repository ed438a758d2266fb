//! Mail operations on an in-memory store, checked against a model made of `BTreeMap`s: after
//! every operation the user it named lists the same mailboxes (UIDNEXT, subscription),
//! messages (UIDs, flags, bodies) and counts as the model, and the store's counters (all
//! users) are the model's; a refused operation changes nothing; a change moves the root and a
//! no-op does not; at the end every user lists what the model holds and `verify` passes.
//!
//! The input is a byte string read as operations (a tag byte, then one byte per argument);
//! names come from small vocabularies so that operations meet each other often.

use merkmail::model::{parse_flag_list, FlagOp, MailboxName};
use merkmail::store::{Counters, NewMessage, Store};
use std::collections::{BTreeMap, BTreeSet};

/// At most this many operations per input.
pub const MAX_OPS: usize = 64;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// "inbox" is INBOX in another case; "Bad//name" is refused by the name rules.
const MAILBOXES: [&str; 8] = [
    "INBOX",
    "Work",
    "Work/2026",
    "Lists",
    "Lists/rust",
    "INBOX/Sub",
    "inbox",
    "Bad//name",
];
const FLAGS: [&str; 5] = ["\\Seen", "\\Flagged", "\\Deleted", "$Label1", "Junk"];

#[derive(Clone, Debug, PartialEq, Eq)]
struct Mailbox {
    uidnext: u32,
    subscribed: bool,
    messages: BTreeMap<u32, Message>,
    /// Expunge tombstones held for this mailbox.
    tombstones: u64,
}

impl Mailbox {
    fn new(subscribed: bool) -> Mailbox {
        Mailbox {
            uidnext: 1,
            subscribed,
            messages: BTreeMap::new(),
            tombstones: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    body: Vec<u8>,
    flags: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    /// user → canonical mailbox name → mailbox.
    users: BTreeMap<String, BTreeMap<String, Mailbox>>,
    mailbox_tombstones: u64,
}

impl Model {
    fn ensure_user(&mut self, user: &str) {
        self.users
            .entry(user.to_string())
            .or_insert_with(|| BTreeMap::from([("INBOX".to_string(), Mailbox::new(true))]));
    }

    fn mailbox(&mut self, user: &str, name: &str, create_inbox: bool) -> Option<&mut Mailbox> {
        if create_inbox && name == "INBOX" {
            self.ensure_user(user);
        }
        self.users.get_mut(user)?.get_mut(name)
    }

    fn counters(&self) -> Counters {
        let mut c = Counters {
            users: self.users.len() as u64,
            mailbox_tombstones: self.mailbox_tombstones,
            ..Counters::default()
        };
        let mut bodies = BTreeSet::new();
        for mailboxes in self.users.values() {
            c.mailboxes += mailboxes.len() as u64;
            for m in mailboxes.values() {
                c.tombstones += m.tombstones;
                for msg in m.messages.values() {
                    c.messages += 1;
                    c.message_bytes += msg.body.len() as u64;
                    bodies.insert(msg.body.as_slice());
                }
            }
        }
        c.bodies = bodies.len() as u64;
        c.body_bytes = bodies.iter().map(|b| b.len() as u64).sum();
        c
    }
}

/// One operation, decoded from the input.
#[derive(Clone, Debug)]
pub enum Op {
    Create {
        user: &'static str,
        mailbox: &'static str,
    },
    Rename {
        user: &'static str,
        from: &'static str,
        to: &'static str,
    },
    Delete {
        user: &'static str,
        mailbox: &'static str,
    },
    /// `bodies`: one message per entry (which of 8 bodies); `flags`: a bit mask of [`FLAGS`];
    /// `uid`: a UID to keep, as in an import.
    Append {
        user: &'static str,
        mailbox: &'static str,
        bodies: Vec<u8>,
        flags: u8,
        uid: Option<u32>,
    },
    Flags {
        user: &'static str,
        mailbox: &'static str,
        uid: UidPick,
        op: FlagOp,
        flags: u8,
    },
    Expunge {
        user: &'static str,
        mailbox: &'static str,
        uids: Vec<UidPick>,
    },
    Subscribe {
        user: &'static str,
        mailbox: &'static str,
        on: bool,
    },
}

impl Op {
    /// The user the operation names.
    fn user(&self) -> &'static str {
        match self {
            Op::Create { user, .. }
            | Op::Rename { user, .. }
            | Op::Delete { user, .. }
            | Op::Append { user, .. }
            | Op::Flags { user, .. }
            | Op::Expunge { user, .. }
            | Op::Subscribe { user, .. } => user,
        }
    }
}

/// A UID: the n-th message the model holds in the mailbox (so operations hit live messages
/// often), or a number as it is.
#[derive(Clone, Copy, Debug)]
pub enum UidPick {
    Nth(u8),
    Raw(u32),
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        let b = self.byte()?;
        from.get(usize::from(b) % from.len()).copied()
    }

    fn uid(&mut self) -> Option<UidPick> {
        let b = self.byte()?;
        Some(match b {
            0xff => UidPick::Raw(u32::MAX),
            0xfe => UidPick::Raw(0),
            b if b & 0x80 == 0 => UidPick::Nth(b),
            b => UidPick::Raw(u32::from(b & 0x7f)),
        })
    }
}

/// Reads operations until the input ends (a half-read operation is dropped).
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut r = Reader(data);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(op) = decode_one(&mut r) else {
            break;
        };
        ops.push(op);
    }
    ops
}

fn decode_one(r: &mut Reader) -> Option<Op> {
    let tag = r.byte()?;
    let user = r.pick(&USERS)?;
    let mailbox = r.pick(&MAILBOXES)?;
    Some(match tag % 7 {
        0 => Op::Create { user, mailbox },
        1 => Op::Rename {
            user,
            from: mailbox,
            to: r.pick(&MAILBOXES)?,
        },
        2 => Op::Delete { user, mailbox },
        3 => {
            let n = usize::from(r.byte()? % 3) + 1;
            let mut bodies = Vec::with_capacity(n);
            for _ in 0..n {
                bodies.push(r.byte()? % 8);
            }
            let flags = r.byte()?;
            let uid = match r.byte()? {
                0..=0x7f => None,
                0x80 => Some(u32::MAX),
                0x81 => Some(u32::MAX - 1),
                0x82 => Some(0),
                b => Some(u32::from(b) * 1000),
            };
            Op::Append {
                user,
                mailbox,
                bodies,
                flags,
                uid,
            }
        }
        4 => Op::Flags {
            user,
            mailbox,
            uid: r.uid()?,
            op: r.pick(&[FlagOp::Add, FlagOp::Remove, FlagOp::Set])?,
            flags: r.byte()?,
        },
        5 => {
            let n = usize::from(r.byte()? % 3) + 1;
            let mut uids = Vec::with_capacity(n);
            for _ in 0..n {
                uids.push(r.uid()?);
            }
            Op::Expunge {
                user,
                mailbox,
                uids,
            }
        }
        _ => Op::Subscribe {
            user,
            mailbox,
            on: r.byte()? & 1 == 1,
        },
    })
}

fn body(n: u8) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    format!("Subject: {n}\r\n\r\n{}\r\n", "x".repeat(usize::from(n) * 7)).into_bytes()
}

fn flag_names(mask: u8) -> Vec<String> {
    FLAGS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, f)| f.to_string())
        .collect()
}

fn resolve_uid(model: &Model, user: &str, mailbox: &str, pick: UidPick) -> u32 {
    match pick {
        UidPick::Raw(uid) => uid,
        UidPick::Nth(n) => {
            let uids: Vec<u32> = MailboxName::parse(mailbox)
                .ok()
                .and_then(|name| model.users.get(user)?.get(name.as_str()))
                .map(|m| m.messages.keys().copied().collect())
                .unwrap_or_default();
            if uids.is_empty() {
                u32::from(n)
            } else {
                uids[usize::from(n) % uids.len()]
            }
        }
    }
}

/// What the model says an operation does: `Err` if the store must refuse it, else the
/// operation's result as the store reports it (UIDs, flags or a count) and the new model.
fn expect(model: &Model, op: &Op) -> Result<(Vec<String>, Model), ()> {
    let mut m = model.clone();
    let canonical = |name: &str| MailboxName::parse(name).map_err(|_| ());
    let out = match op {
        Op::Create { user, mailbox } => {
            let name = canonical(mailbox)?;
            let existed = m.users.contains_key(*user);
            m.ensure_user(user);
            let mailboxes = m.users.get_mut(*user).ok_or(())?;
            if name.is_inbox() {
                if existed {
                    return Err(());
                }
            } else if mailboxes.contains_key(name.as_str()) {
                return Err(());
            } else {
                mailboxes.insert(name.to_string(), Mailbox::new(false));
            }
            vec![]
        }
        Op::Rename { user, from, to } => {
            let (old, new) = (canonical(from)?, canonical(to)?);
            if old.is_inbox() || new.is_inbox() || new.is_below(&old) {
                return Err(());
            }
            let mailboxes = m.users.get_mut(*user).ok_or(())?;
            if !mailboxes.contains_key(old.as_str()) {
                return Err(());
            }
            let moving: Vec<String> = mailboxes
                .keys()
                .filter(|n| {
                    *n == old.as_str() || MailboxName::parse(n).is_ok_and(|n| n.is_below(&old))
                })
                .cloned()
                .collect();
            let mut moved = Vec::new();
            for name in &moving {
                let renamed = format!("{new}{}", &name[old.as_str().len()..]);
                let renamed = canonical(&renamed)?.to_string();
                if mailboxes.contains_key(&renamed) && !moving.contains(&renamed) {
                    return Err(());
                }
                moved.push((name.clone(), renamed));
            }
            let taken: Vec<(String, Mailbox)> = moved
                .iter()
                .filter_map(|(from, to)| Some((to.clone(), mailboxes.remove(from)?)))
                .collect();
            mailboxes.extend(taken);
            vec![]
        }
        Op::Delete { user, mailbox } => {
            let name = canonical(mailbox)?;
            if name.is_inbox() {
                return Err(());
            }
            m.users
                .get_mut(*user)
                .ok_or(())?
                .remove(name.as_str())
                .ok_or(())?;
            m.mailbox_tombstones += 1;
            vec![]
        }
        Op::Append {
            user,
            mailbox,
            bodies,
            flags,
            uid,
        } => {
            let name = canonical(mailbox)?;
            let target = m.mailbox(user, name.as_str(), true).ok_or(())?;
            let mut uids = Vec::new();
            for b in bodies {
                let next = match uid {
                    Some(w) if *w >= target.uidnext && *w < u32::MAX => *w,
                    _ => target.uidnext,
                };
                if next == u32::MAX {
                    return Err(());
                }
                target.messages.insert(
                    next,
                    Message {
                        body: body(*b),
                        flags: flag_names(*flags).into_iter().collect(),
                    },
                );
                target.uidnext = next + 1;
                uids.push(next.to_string());
            }
            uids
        }
        Op::Flags {
            user,
            mailbox,
            uid,
            op,
            flags,
        } => {
            let name = canonical(mailbox)?;
            let uid = resolve_uid(model, user, mailbox, *uid);
            let target = m.mailbox(user, name.as_str(), false).ok_or(())?;
            let message = target.messages.get_mut(&uid).ok_or(())?;
            let given = flag_names(*flags);
            match op {
                FlagOp::Add => message.flags.extend(given),
                FlagOp::Remove => message.flags.retain(|f| !given.contains(f)),
                FlagOp::Set => message.flags = given.into_iter().collect(),
            }
            message.flags.iter().cloned().collect()
        }
        Op::Expunge {
            user,
            mailbox,
            uids,
        } => {
            let name = canonical(mailbox)?;
            let uids: BTreeSet<u32> = uids
                .iter()
                .map(|p| resolve_uid(model, user, mailbox, *p))
                .collect();
            let target = m.mailbox(user, name.as_str(), false).ok_or(())?;
            for uid in &uids {
                target.messages.remove(uid).ok_or(())?;
                target.tombstones += 1;
            }
            vec![uids.len().to_string()]
        }
        Op::Subscribe { user, mailbox, on } => {
            let name = canonical(mailbox)?;
            m.mailbox(user, name.as_str(), true).ok_or(())?.subscribed = *on;
            vec![]
        }
    };
    Ok((out, m))
}

/// Runs `op` on the store; the result in the same form as [`expect`]'s.
fn run(store: &Store, model: &Model, op: &Op) -> Result<Vec<String>, String> {
    let e = |e: merkmail::store::StoreError| e.to_string();
    let flags = |mask: u8| {
        let list = flag_names(mask).join(",");
        parse_flag_list(&list).map_err(|e| e.to_string())
    };
    match op {
        Op::Create { user, mailbox } => store
            .create_mailbox(user, mailbox)
            .map(|_| vec![])
            .map_err(e),
        Op::Rename { user, from, to } => store
            .rename_mailbox(user, from, to)
            .map(|_| vec![])
            .map_err(e),
        Op::Delete { user, mailbox } => store
            .delete_mailbox(user, mailbox)
            .map(|_| vec![])
            .map_err(e),
        Op::Append {
            user,
            mailbox,
            bodies,
            flags: mask,
            uid,
        } => {
            let flags = flags(*mask)?;
            let messages = bodies
                .iter()
                .map(|b| NewMessage {
                    bytes: body(*b),
                    flags: flags.clone(),
                    internal_date: 1_777_000_000,
                    uid: *uid,
                    exact_uid: false,
                    source: None,
                    md5: None,
                    digest: None,
                })
                .collect();
            let outcomes = store.append(user, mailbox, messages).map_err(e)?;
            Ok(outcomes.iter().map(|o| o.uid.to_string()).collect())
        }
        Op::Flags {
            user,
            mailbox,
            uid,
            op,
            flags: mask,
        } => {
            let uid = resolve_uid(model, user, mailbox, *uid);
            let now = store
                .set_flags(user, mailbox, uid, *op, &flags(*mask)?)
                .map_err(e)?;
            Ok(now.iter().map(|f| f.as_str().to_string()).collect())
        }
        Op::Expunge {
            user,
            mailbox,
            uids,
        } => {
            let uids: Vec<u32> = uids
                .iter()
                .map(|p| resolve_uid(model, user, mailbox, *p))
                .collect();
            let n = store.expunge(user, mailbox, &uids).map_err(e)?;
            Ok(vec![n.to_string()])
        }
        Op::Subscribe { user, mailbox, on } => store
            .subscribe(user, mailbox, *on)
            .map(|_| vec![])
            .map_err(e),
    }
}

/// The store's state in the model's form: every user's, or `only` that one's.
fn observe(store: &Store, only: Option<&str>) -> Model {
    let mut model = Model::default();
    let users = match only {
        Some(user) => store
            .users()
            .expect("users")
            .into_iter()
            .filter(|u| u == user)
            .collect(),
        None => store.users().expect("users"),
    };
    for user in users {
        let mut mailboxes = BTreeMap::new();
        for info in store.list_mailboxes(&user).expect("mailboxes") {
            let mut messages = BTreeMap::new();
            for msg in store
                .list_messages(&user, Some(&info.name))
                .expect("messages")
            {
                let body = store.fetch(&user, &info.name, msg.uid).expect("fetch");
                assert_eq!(body.len() as u64, msg.record.size, "size of {}", msg.uid);
                messages.insert(
                    msg.uid,
                    Message {
                        body,
                        flags: msg.record.flags.live().map(|f| f.to_string()).collect(),
                    },
                );
            }
            assert_eq!(
                info.messages,
                messages.len() as u64,
                "count of {}",
                info.name
            );
            mailboxes.insert(
                info.name.clone(),
                Mailbox {
                    uidnext: info.uidnext,
                    subscribed: info.subscribed,
                    messages,
                    tombstones: 0,
                },
            );
        }
        model.users.insert(user, mailboxes);
    }
    model
}

/// The model without what the store does not list (tombstones), for comparing with
/// [`observe`]: every user, or `only` that one.
fn listed(model: &Model, only: Option<&str>) -> Model {
    let mut m = model.clone();
    if let Some(user) = only {
        m.users.retain(|u, _| u == user);
    }
    m.mailbox_tombstones = 0;
    for mailboxes in m.users.values_mut() {
        for mailbox in mailboxes.values_mut() {
            mailbox.tombstones = 0;
        }
    }
    m
}

/// Runs the operations `data` encodes against an empty store and the model.
pub fn check(data: &[u8]) {
    crate::fixture::with_empty(|store| run_all(store, data));
}

fn run_all(store: &Store, data: &[u8]) {
    let mut model = Model::default();
    for (i, op) in decode(data).iter().enumerate() {
        let before = (
            store.root().expect("root"),
            store.counters().expect("counters"),
        );
        let expected = expect(&model, op);
        let got = run(store, &model, op);
        let after = (
            store.root().expect("root"),
            store.counters().expect("counters"),
        );
        match (expected, got) {
            (Err(()), Err(_)) => {
                assert_eq!(
                    before, after,
                    "op {i} {op:?} was refused but changed the store"
                );
            }
            (Ok((want, next)), Ok(got)) => {
                assert_eq!(got, want, "op {i} {op:?} answered differently");
                if next != model {
                    assert_ne!(
                        before.0, after.0,
                        "op {i} {op:?} changed mail, not the root"
                    );
                }
                if matches!(op, Op::Flags { .. }) && next == model {
                    assert_eq!(
                        before.0, after.0,
                        "op {i} {op:?} was a no-op, moved the root"
                    );
                }
                model = next;
            }
            (Err(()), Ok(got)) => panic!("op {i} {op:?} should have been refused, gave {got:?}"),
            (Ok((want, _)), Err(e)) => panic!("op {i} {op:?} should have given {want:?}: {e}"),
        }
        // The user the operation named, listed in full after each operation; every user at
        // the end; the counters (all users) after each. (Listing every user after every
        // operation was a third of the target's time.)
        let user = op.user();
        assert_eq!(
            observe(store, Some(user)),
            listed(&model, Some(user)),
            "after op {i} {op:?}"
        );
        assert_eq!(after.1, model.counters(), "counters after op {i} {op:?}");
    }
    assert_eq!(observe(store, None), listed(&model, None), "at the end");
    let report = store.verify().expect("verify runs");
    assert!(report.is_ok(), "verify: {report:?}");
}
