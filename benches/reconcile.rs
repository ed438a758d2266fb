//! The reconciliation benchmark behind the "Reconciliation" section of docs/PERFORMANCE.md
//! (issue 3, "Figures to measure").
//!
//! Two stores of n messages (1 000 users × 10 mailboxes, n = 10 000, 100 000 or 1 000 000) are
//! built equal, then made to differ in d places, then reconciled over loopback HTTP: store B is
//! served in-process by `net::server::run` on 127.0.0.1:0 and store A runs `sync::run` against
//! it through the same HTTP client `net::sync::sync_with_peer` uses (one session, and a second
//! with another hash window only if the first did not converge, as `sync_with_peer` does). The
//! transport decodes every round to count bytes per `Request`/`Reply` variant; the time that
//! costs is measured and taken off the wall time. Beside each reconciliation, on the same data
//! and in the same run: the seed approach (every (UID, MD5) pair of every mailbox, both ways),
//! the `negentropy` crate over the same messages, and the information-theoretic minimum.
//!
//! Subcommands (scripts/bench-reconcile drives them; `cargo bench --bench reconcile` runs a
//! quick table at n = 10 000):
//!
//! - `fixtures N...`: build the equal base pairs, cached in `target/bench-fixtures/` (or
//!   `$MERKMAIL_BENCH_FIXTURES`) as `reconcile-v<format>-<n>/{a,b}`; reused while they open.
//! - `case N D SEED`: copy the pair of size N to a scratch pair, make it differ in D places
//!   (in a child process, which also computes the baselines), reconcile it, check that both
//!   sides are equal, and print one JSON line. Exits with status 3 if the stores did not
//!   converge (the line is still printed, with `"converged": false`).
//! - `diverge DIR N D SEED` (internal): the child's job.
//! - `table FILE...`: the table of medians over the JSON lines, the targets, and the byte
//!   breakdown per request and reply kind at d = 100.

use merkmail::model::Change;
use merkmail::model::{
    inbox_guid, Digest, FlagName, FlagOp, FlagSet, MailboxGuid, MailboxRecord, Md5, MessageRecord,
    Stamp,
};
use merkmail::net::client::{expect_success, BlockingClient, ClientConfig};
use merkmail::net::routes::{ROUND, SYNC_CONTENT_TYPE};
use merkmail::net::{server, Limits, ServerState};
use merkmail::store::{NewMessage, Store, DB_FILE, FORMAT_VERSION};
use merkmail::sync::wire::{
    decode_reply, decode_request, encode, GuidRef, Reply, Request, WireChange, WireRecord,
};
use merkmail::sync::{run, SyncReport};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

const USERS: usize = 1000;
const MAILBOXES: usize = 10;
/// The stamp time of every base record (2023-11-14): older than anything the stores mint.
const BASE_MS: u64 = 1_700_000_000_000;
const UIDVALIDITY: u32 = 1_700_000_000;
/// Messages per base transaction while building a fixture.
const BUILD_BATCH: usize = 5_000;

// ---------------------------------------------------------------------------------------------
// Names, generators

/// A deterministic pseudo-random sequence (SplitMix64): the same places for the same seed on
/// every machine and every version of every crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_0f4e_c011_c1a5)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn user_name(u: usize) -> String {
    format!("user{u:04}")
}

fn mailbox_name(j: usize) -> String {
    if j == 0 {
        "INBOX".to_string()
    } else {
        format!("Folder{j}")
    }
}

fn mailbox_guid(user: &str, j: usize) -> MailboxGuid {
    if j == 0 {
        return inbox_guid(user);
    }
    let h = blake3::hash(format!("bench mailbox {user}/{j}").as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    MailboxGuid(out)
}

fn flag(name: &str) -> FlagName {
    FlagName::parse(name).expect("a valid flag name")
}

/// A small message, unique by its Message-ID (bodies are stored once per digest).
fn body(tag: &str) -> Vec<u8> {
    format!("Message-ID: <{tag}@bench.example>\r\nSubject: {tag}\r\n\r\nbody {tag}\r\n")
        .into_bytes()
}

fn per_mailbox(n: usize) -> Result<u32, Error> {
    if n == 0 || !n.is_multiple_of(USERS * MAILBOXES) {
        return Err(format!("n must be a positive multiple of {}", USERS * MAILBOXES).into());
    }
    Ok((n / (USERS * MAILBOXES)) as u32)
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// target/bench-fixtures, found from this executable's path (target/release/deps/reconcile-…).
fn fixtures_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MERKMAIL_BENCH_FIXTURES") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the bench knows its own path");
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("bench-fixtures"))
        .unwrap_or_else(|| PathBuf::from("target/bench-fixtures"))
}

fn fixture_dir(n: usize) -> PathBuf {
    // The format version is in the name: a store of another format is another fixture.
    fixtures_root().join(format!("reconcile-v{FORMAT_VERSION}-{n}"))
}

/// The cached equal pair of size `n`, built first if missing, half-built or unreadable.
fn fixture(n: usize) -> Result<PathBuf, Error> {
    let dir = fixture_dir(n);
    if dir.join("complete").exists() {
        let check = || -> Result<bool, Error> {
            let a = Store::open(&dir.join("a"))?;
            let b = Store::open(&dir.join("b"))?;
            Ok(a.counters()?.messages == n as u64 && a.root()? == b.root()?)
        };
        match check() {
            Ok(true) => return Ok(dir),
            Ok(false) => eprintln!("fixture {} is not as expected; rebuilding", dir.display()),
            Err(e) => eprintln!("fixture {} does not open ({e}); rebuilding", dir.display()),
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    eprintln!(
        "building two equal stores of {n} messages in {} (once; cached)",
        dir.display()
    );
    let started = Instant::now();
    let per = per_mailbox(n)?;
    // Both stores take the same records with the same stamps, so they are equal; their node
    // ids differ, so the stamps each mints later never tie.
    let a = Store::init(&dir.join("a"), "bench-a")?;
    let b = Store::init(&dir.join("b"), "bench-b")?;
    let seen = flag("\\Seen");
    let mut seq = 0u64;
    let mut batch = Vec::new();
    let mut in_batch = 0usize;
    for u in 0..USERS {
        let user = user_name(u);
        for j in 0..MAILBOXES {
            let guid = mailbox_guid(&user, j);
            let created = Stamp {
                ms: BASE_MS + seq,
                counter: 0,
                node: 1,
            };
            batch.push(Change::Mailbox {
                user: user.clone(),
                record: MailboxRecord {
                    guid,
                    name: mailbox_name(j),
                    uidvalidity: UIDVALIDITY,
                    uidnext: per + 1,
                    subscribed: true,
                    name_stamp: created,
                    subscribed_stamp: created,
                    last_change: created,
                },
            });
            for uid in 1..=per {
                seq += 1;
                let bytes = body(&format!("base-{seq}"));
                let stamp = Stamp {
                    ms: BASE_MS + seq,
                    counter: 0,
                    node: 1,
                };
                // Half the mail has been read.
                let flags = if seq.is_multiple_of(2) {
                    FlagSet::initial(std::slice::from_ref(&seen), stamp)
                } else {
                    FlagSet::default()
                };
                batch.push(Change::Message {
                    user: user.clone(),
                    guid,
                    uid,
                    record: MessageRecord {
                        md5: Md5::of(&bytes),
                        digest: Digest::of(&bytes),
                        size: bytes.len() as u64,
                        internal_date: (BASE_MS / 1000 + seq) as i64,
                        flags,
                        appended: stamp,
                    },
                    body: Some(bytes),
                });
                in_batch += 1;
            }
        }
        if in_batch >= BUILD_BATCH || u + 1 == USERS {
            a.apply(&batch)?;
            b.apply(&batch)?;
            batch.clear();
            in_batch = 0;
        }
        if (u + 1).is_multiple_of(250) {
            eprintln!("  {} users, {:.0?}", u + 1, started.elapsed());
        }
    }
    if a.root()? != b.root()? || a.counters()?.messages != n as u64 {
        return Err("the two fixture stores came out different".into());
    }
    drop((a, b));
    std::fs::write(
        dir.join("complete"),
        format!(
            "{n} messages in each of a/ and b/, built in {:.1?}\n",
            started.elapsed()
        ),
    )?;
    eprintln!("  built in {:.1?}", started.elapsed());
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// Divergence

/// What happens at one place. The kinds cycle in this order, so any d gets the same mix:
/// 40 % new mail (half on each side), 30 % flag changes (on A, on B, on both), 20 % expunges,
/// 10 % UID clashes (both sides deliver a different message to the same mailbox).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NewA,
    FlagA,
    NewB,
    ExpungeA,
    FlagB,
    Clash,
    ExpungeB,
    FlagBoth,
}

const CYCLE: [Kind; 10] = [
    Kind::NewA,
    Kind::FlagA,
    Kind::NewB,
    Kind::ExpungeA,
    Kind::FlagB,
    Kind::NewA,
    Kind::Clash,
    Kind::NewB,
    Kind::ExpungeB,
    Kind::FlagBoth,
];

#[derive(Default)]
struct SideOps {
    appends: BTreeMap<usize, Vec<NewMessage>>,
    flags: Vec<(usize, u32, FlagName)>,
    expunges: BTreeMap<usize, Vec<u32>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    A,
    B,
    Clashed,
}

/// Makes the two stores differ in `d` places, through their own operations (new
/// stamps, new UIDs at the tail as delivery assigns them). Returns the kinds' counts.
fn diverge(a: &Store, b: &Store, n: usize, d: usize, seed: u64) -> Result<Value, Error> {
    let per = per_mailbox(n)?;
    let boxes = USERS * MAILBOXES;
    let mut rng = Rng::new(seed);
    let (mut on_a, mut on_b) = (SideOps::default(), SideOps::default());
    let mut tails: BTreeMap<usize, Tail> = BTreeMap::new();
    let mut touched: BTreeSet<(usize, u32)> = BTreeSet::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut new_mail = 0u64;
    let mut fresh = |side: &str| {
        new_mail += 1;
        NewMessage {
            bytes: body(&format!("new-{side}-{seed}-{new_mail}")),
            internal_date: 1_750_000_000,
            ..NewMessage::default()
        }
    };
    for i in 0..d {
        let kind = CYCLE[i % CYCLE.len()];
        *counts.entry(format!("{kind:?}")).or_default() += 1;
        match kind {
            Kind::NewA | Kind::NewB | Kind::Clash => {
                // A mailbox whose tail this kind may use: new mail on one side never lands
                // where the other side delivered too (that would be an unplanned clash).
                let want = match kind {
                    Kind::NewA => Tail::A,
                    Kind::NewB => Tail::B,
                    _ => Tail::Clashed,
                };
                let mut tries = 0;
                let mb = loop {
                    let mb = rng.below(boxes);
                    match tails.get(&mb) {
                        None => break mb,
                        Some(t) if *t == want && want != Tail::Clashed => break mb,
                        _ => {}
                    }
                    tries += 1;
                    if tries > 1_000_000 {
                        return Err("no mailbox left for new mail".into());
                    }
                };
                tails.insert(mb, want);
                if want != Tail::B {
                    on_a.appends.entry(mb).or_default().push(fresh("a"));
                }
                if want != Tail::A {
                    on_b.appends.entry(mb).or_default().push(fresh("b"));
                }
            }
            Kind::FlagA | Kind::FlagB | Kind::FlagBoth | Kind::ExpungeA | Kind::ExpungeB => {
                if touched.len() as u64 >= u64::from(per) * boxes as u64 {
                    return Err("more places than messages".into());
                }
                let (mb, uid) = loop {
                    let place = (rng.below(boxes), 1 + rng.below(per as usize) as u32);
                    if touched.insert(place) {
                        break place;
                    }
                };
                match kind {
                    Kind::FlagA => on_a.flags.push((mb, uid, flag("\\Flagged"))),
                    Kind::FlagB => on_b.flags.push((mb, uid, flag("\\Answered"))),
                    Kind::FlagBoth => {
                        on_a.flags.push((mb, uid, flag("\\Flagged")));
                        on_b.flags.push((mb, uid, flag("\\Answered")));
                    }
                    Kind::ExpungeA => on_a.expunges.entry(mb).or_default().push(uid),
                    _ => on_b.expunges.entry(mb).or_default().push(uid),
                }
            }
        }
    }
    for (store, ops) in [(a, on_a), (b, on_b)] {
        let place = |mb: usize| (user_name(mb / MAILBOXES), mailbox_name(mb % MAILBOXES));
        for (mb, messages) in ops.appends {
            let (user, mailbox) = place(mb);
            store.append(&user, &mailbox, messages)?;
        }
        for (mb, uid, f) in ops.flags {
            let (user, mailbox) = place(mb);
            store.set_flags(&user, &mailbox, uid, FlagOp::Add, &[f])?;
        }
        for (mb, uids) in ops.expunges {
            let (user, mailbox) = place(mb);
            store.expunge(&user, &mailbox, &uids)?;
        }
    }
    Ok(serde_json::to_value(counts)?)
}

// ---------------------------------------------------------------------------------------------
// Baselines

/// Every live message of a store: (user, mailbox name, GUID, UID, MD5, entry hash).
struct Item {
    user: String,
    mailbox: String,
    guid: MailboxGuid,
    uid: u32,
    md5: Md5,
    entry: [u8; 32],
}

fn items(store: &Store) -> Result<Vec<Item>, Error> {
    let mut out = Vec::new();
    for user in store.users()? {
        for mb in store.list_mailboxes(&user)? {
            let side = store.mailbox_side(&user, mb.guid, None)?;
            let last_bucket = mb.uidnext.saturating_sub(1) >> merkmail::merkle::BUCKET_SHIFT;
            let mut entries = BTreeMap::new();
            for bucket in 0..=last_bucket {
                entries.extend(store.bucket_entries(&user, mb.guid, bucket)?);
            }
            for (uid, m) in side.messages {
                let entry = entries
                    .get(&uid)
                    .ok_or("a message without an entry hash")?
                    .0;
                out.push(Item {
                    user: user.clone(),
                    mailbox: mb.name.clone(),
                    guid: mb.guid,
                    uid,
                    md5: m.md5,
                    entry,
                });
            }
        }
    }
    Ok(out)
}

/// The seed approach: each side sends every mailbox's (UID, MD5) pairs, postcard-encoded as
/// (user, mailbox name, [(uid varint, md5 16 bytes)]) per mailbox. Bytes of one side's list.
fn seed_bytes(items: &[Item]) -> usize {
    /// (user, mailbox name, [(uid, md5)]).
    type Listing = (String, String, Vec<(u32, [u8; 16])>);
    let mut lists: Vec<Listing> = Vec::new();
    for it in items {
        match lists.last_mut() {
            Some((u, m, pairs)) if *u == it.user && *m == it.mailbox => {
                pairs.push((it.uid, it.md5.0));
            }
            _ => lists.push((
                it.user.clone(),
                it.mailbox.clone(),
                vec![(it.uid, it.md5.0)],
            )),
        }
    }
    encode(&lists).len()
}

/// A message's negentropy id: the hash of its key and its replicated state (the entry hash
/// covers UID, digest, and every flag with its stamp).
fn negentropy_id(it: &Item) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(it.user.as_bytes());
    h.update(&[0]);
    h.update(&it.guid.0);
    h.update(&it.uid.to_be_bytes());
    h.update(&it.entry);
    *h.finalize().as_bytes()
}

/// Runs negentropy in-process (A initiates, B answers; no frame size limit, so the fewest
/// round trips): round trips, bytes both ways, ids found, time.
fn negentropy_run(a: &[Item], b: &[Item]) -> Result<Value, Error> {
    let storage = |items: &[Item]| -> Result<(NegentropyStorageVector, BTreeSet<[u8; 32]>), Error> {
        let mut s = NegentropyStorageVector::with_capacity(items.len());
        let mut ids = BTreeSet::new();
        for it in items {
            let id = negentropy_id(it);
            ids.insert(id);
            s.insert(0, Id::from_byte_array(id))?;
        }
        s.seal()?;
        Ok((s, ids))
    };
    let (sa, ids_a) = storage(a)?;
    let (sb, ids_b) = storage(b)?;
    let expected = ids_a.symmetric_difference(&ids_b).count();
    let started = Instant::now();
    let mut client = Negentropy::borrowed(&sa, 0)?;
    let mut relay = Negentropy::borrowed(&sb, 0)?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut message = client.initiate()?;
    let (mut rounds, mut bytes) = (0u64, 0u64);
    loop {
        rounds += 1;
        bytes += message.len() as u64;
        let answer = relay.reconcile(&message)?;
        bytes += answer.len() as u64;
        match client.reconcile_with_ids(&answer, &mut have, &mut need)? {
            Some(next) => message = next,
            None => break,
        }
    }
    let found = have.len() + need.len();
    if found != expected {
        return Err(format!("negentropy found {found} differing ids, expected {expected}").into());
    }
    Ok(json!({
        "neg_rounds": rounds,
        "neg_bytes": bytes,
        "neg_ms": started.elapsed().as_secs_f64() * 1e3,
        "differing_ids": expected,
    }))
}

/// The child process: diverge the scratch pair, then compute the baselines on it.
fn diverge_task(dir: &Path, n: usize, d: usize, seed: u64) -> Result<(), Error> {
    let started = Instant::now();
    let a = Store::open(&dir.join("a"))?;
    let b = Store::open(&dir.join("b"))?;
    let kinds = diverge(&a, &b, n, d, seed)?;
    let diverge_ms = started.elapsed().as_secs_f64() * 1e3;
    let (ia, ib) = (items(&a)?, items(&b)?);
    let seed_total = seed_bytes(&ia) + seed_bytes(&ib);
    let mut out = negentropy_run(&ia, &ib)?;
    let o = out.as_object_mut().ok_or("not an object")?;
    o.insert("kinds".into(), kinds);
    o.insert("diverge_ms".into(), json!(diverge_ms));
    o.insert("seed_bytes".into(), json!(seed_total));
    o.insert("messages_a".into(), json!(ia.len()));
    o.insert("messages_b".into(), json!(ib.len()));
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The measured reconciliation

/// A variant's name, from its Debug form (so a variant added to the wire later is counted
/// under its own name without a change here).
fn kind_name(x: &impl std::fmt::Debug) -> String {
    let s = format!("{x:?}");
    s.split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// (items inside, body bytes inside) of a request.
fn request_detail(r: &Request) -> (u64, u64) {
    match r {
        Request::Records {
            uids,
            ranges,
            buckets,
            ..
        } => ((uids.len() + ranges.len() + buckets.len()) as u64, 0),
        Request::Bodies { digests } => (digests.len() as u64, 0),
        Request::PutBodies { bodies } => (
            bodies.len() as u64,
            bodies.iter().map(|b| b.len() as u64).sum(),
        ),
        Request::Apply { groups } => (
            groups.iter().map(|g| g.changes.len() as u64).sum(),
            groups
                .iter()
                .flat_map(|g| &g.changes)
                .map(WireChange::body_len)
                .sum(),
        ),
        Request::Users { users, .. } => (users.len() as u64, 0),
        _ => (1, 0),
    }
}

fn reply_detail(r: &Reply) -> (u64, u64) {
    match r {
        Reply::Root { children, .. } | Reply::Children { children } => {
            (children.hashes.len() as u64, 0)
        }
        Reply::Records {
            messages,
            tombstones,
            ..
        }
        | Reply::Full {
            messages,
            tombstones,
        } => ((messages.len() + tombstones.len()) as u64, r.body_len()),
        Reply::Bodies { bodies } => (
            bodies.len() as u64,
            bodies.iter().flatten().map(|b| b.len() as u64).sum(),
        ),
        Reply::Applied { applied, .. } => (applied.len() as u64, 0),
        Reply::Users { users } => (users.iter().map(|u| u.mailboxes.len() as u64).sum(), 0),
        _ => (1, 0),
    }
}

/// Where the bytes of one request go, part by part (each part encoded alone with postcard;
/// "rest" is what the parts named do not cover: tags, lengths, small fields).
fn request_parts(r: &Request, out: &mut BTreeMap<String, u64>) {
    let mut add = |part: &str, n: usize| *out.entry(part.to_string()).or_default() += n as u64;
    let total = encode(r).len();
    let named = |user: &String, guid: &GuidRef| encode(user).len() + encode(guid).len();
    let mut covered = 0;
    let kind = kind_name(r);
    match r {
        Request::Children { node } => {
            let n = encode(node).len();
            add(&format!("Children.key.{}", kind_name(node)), n);
            covered += n;
        }
        Request::Mailbox { user, guid } | Request::Full { user, guid } => {
            add(&format!("{kind}.user+guid"), named(user, guid));
            covered += named(user, guid);
        }
        Request::Users { users, .. } => {
            for u in users {
                let (n, h) = (encode(&u.name).len(), 3 * u.mailboxes.len());
                add("Users.user.name", n);
                add("Users.user.guid digest", 3);
                add("Users.mailbox.hash", h);
                covered += n + 3 + h;
            }
        }
        Request::Records {
            user,
            guid,
            uids,
            ranges,
            buckets,
            ..
        } => {
            let (u, g) = (encode(uids).len(), encode(ranges).len());
            let h: usize = buckets.iter().map(|b| 3 * b.hashes.len()).sum();
            add("Records.user+guid", named(user, guid));
            add("Records.uids+held", u);
            add("Records.ranges", g);
            add("Records.run hashes", h);
            covered += named(user, guid) + u + g + h;
        }
        Request::Bodies { digests } => {
            add("Bodies.digests", encode(digests).len());
            covered += encode(digests).len();
        }
        Request::PutBodies { bodies } => {
            add("PutBodies.bodies", encode(bodies).len());
            covered += encode(bodies).len();
        }
        Request::Apply { groups } => {
            for g in groups {
                let header = named(&g.user, &g.guid) + 4;
                add("Apply.group.user+guid+expect", header);
                covered += header;
                for c in &g.changes {
                    let part = kind_name(c);
                    let (inner, detail): (usize, Vec<(&str, usize)>) = match c {
                        WireChange::Message { record, body, .. } => {
                            let flags = encode(&record.flags).len();
                            let stamp = encode(&record.appended).len();
                            let body = body.as_ref().map_or(0, |b| encode(b).len());
                            (
                                48 + flags + stamp + body,
                                vec![
                                    ("md5+digest", 48),
                                    ("flags", flags),
                                    ("appended", stamp),
                                    ("body", body),
                                ],
                            )
                        }
                        WireChange::Flags { flags, .. } => {
                            let f = encode(flags).len();
                            (f, vec![("flags", f)])
                        }
                        WireChange::New {
                            flags,
                            appended,
                            body,
                            ..
                        } => {
                            let flags = encode(flags).len();
                            let stamp = encode(appended).len();
                            let body = encode(body).len();
                            (
                                flags + stamp + body,
                                vec![("flags", flags), ("appended", stamp), ("body", body)],
                            )
                        }
                        WireChange::Mailbox(record) => {
                            let rec = encode(record).len();
                            (rec, vec![("record", rec)])
                        }
                        _ => (0, vec![]),
                    };
                    for (name, n) in detail {
                        add(&format!("Apply.{part}.{name}"), n);
                    }
                    add(&format!("Apply.{part}.rest"), encode(c).len() - inner);
                    covered += encode(c).len();
                }
            }
        }
        _ => {}
    }
    add(&format!("{kind}.rest"), total - covered.min(total));
}

fn reply_parts(r: &Reply, out: &mut BTreeMap<String, u64>) {
    let mut add = |part: &str, n: usize| *out.entry(part.to_string()).or_default() += n as u64;
    let total = encode(r).len();
    let mut covered = 0;
    let kind = kind_name(r);
    match r {
        Reply::Root { children, .. } | Reply::Children { children } => {
            add(&format!("{kind}.bitmap"), 2);
            add(&format!("{kind}.hashes"), 3 * children.hashes.len());
            covered += 2 + 3 * children.hashes.len();
        }
        Reply::Mailbox { record, node, .. } => {
            if let Some(rec) = record {
                add("Mailbox.record", encode(rec).len());
                covered += encode(rec).len();
            }
            add("Mailbox.node summary", encode(node).len());
            covered += encode(node).len();
        }
        Reply::Records {
            messages,
            tombstones,
            ..
        }
        | Reply::Full {
            messages,
            tombstones,
        } => {
            if let Reply::Records { runs, .. } = r {
                let h: usize = runs.iter().flatten().map(|r| 3 * r.hashes.len()).sum();
                add("Records.run hashes", h);
                covered += h;
            }
            for (uid, m) in messages {
                let m = match m {
                    WireRecord::Full(m) => m,
                    WireRecord::New {
                        flags,
                        appended,
                        body,
                        ..
                    } => {
                        let (f, a, b) = (
                            encode(flags).len(),
                            encode(appended).len(),
                            encode(body).len(),
                        );
                        add(&format!("{kind}.new.uid"), encode(uid).len());
                        add(&format!("{kind}.new.flags"), f);
                        add(&format!("{kind}.new.appended"), a);
                        add(&format!("{kind}.new.body"), b);
                        add(&format!("{kind}.new.date"), encode(m).len() - 1 - f - a - b);
                        covered += encode(uid).len() + encode(m).len();
                        continue;
                    }
                    WireRecord::Flags(f) => {
                        let n = encode(f).len();
                        add(&format!("{kind}.flags only"), n);
                        covered += n + encode(uid).len();
                        continue;
                    }
                };
                let (flags, stamp) = (encode(&m.flags).len(), encode(&m.appended).len());
                add(&format!("{kind}.message.uid"), encode(uid).len());
                add(&format!("{kind}.message.md5+digest"), 48);
                add(&format!("{kind}.message.flags"), flags);
                add(&format!("{kind}.message.appended"), stamp);
                add(
                    &format!("{kind}.message.size+date"),
                    encode(m).len() - 48 - flags - stamp,
                );
                covered += encode(uid).len() + encode(m).len();
            }
            for t in tombstones {
                add(&format!("{kind}.tombstone"), encode(t).len());
                covered += encode(t).len();
            }
        }
        Reply::Bodies { bodies } => {
            add("Bodies.bodies", encode(bodies).len());
            covered += encode(bodies).len();
        }
        Reply::Users { users } => {
            for u in users {
                let listing = encode(&u.listing).len();
                add("Users.diff.user+listing", encode(&u.user).len() + listing);
                covered += encode(&u.user).len() + listing;
                for m in &u.mailboxes {
                    let state = encode(&m.state).len();
                    let nodes = encode(&m.nodes).len();
                    add("Users.diff.mailbox.node", 4);
                    add("Users.diff.mailbox.state", state);
                    add("Users.diff.mailbox.uid level", nodes);
                    covered += 4 + state + nodes;
                }
            }
        }
        _ => {}
    }
    add(&format!("{kind}.rest"), total - covered.min(total));
}

/// Per kind: [messages, encoded bytes, items inside, body bytes inside].
type Kinds = BTreeMap<String, [u64; 4]>;

#[derive(Default)]
struct Tally {
    requests: Kinds,
    replies: Kinds,
    /// Per round: (request kinds, reply kinds, whole request bytes, whole reply bytes).
    rounds: Vec<(Kinds, Kinds, u64, u64)>,
    /// Bytes per part of a message kind ("Children.child.id.Mailbox" …), both directions.
    parts: BTreeMap<String, u64>,
    /// Per round: from sending the request to holding the answer (the peer's work and the
    /// loopback), in ms. The rest of the wall time is the initiator's own work.
    round_ms: Vec<f64>,
    time: Duration,
}

impl Tally {
    fn request(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let started = Instant::now();
        let round = decode_request(bytes)?;
        let mut kinds = Kinds::new();
        for r in &round.requests {
            let (kind, (items, body)) = (kind_name(r), request_detail(r));
            request_parts(r, &mut self.parts);
            let len = encode(r).len() as u64;
            for k in [&mut kinds, &mut self.requests] {
                let e = k.entry(kind.clone()).or_default();
                e[0] += 1;
                e[1] += len;
                e[2] += items;
                e[3] += body;
            }
        }
        self.rounds
            .push((kinds, Kinds::new(), bytes.len() as u64, 0));
        self.time += started.elapsed();
        Ok(())
    }

    fn reply(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let started = Instant::now();
        let round = decode_reply(bytes)?;
        let mut kinds = Kinds::new();
        for r in &round.replies {
            let (kind, (items, body)) = (kind_name(r), reply_detail(r));
            reply_parts(r, &mut self.parts);
            let len = encode(r).len() as u64;
            for k in [&mut kinds, &mut self.replies] {
                let e = k.entry(kind.clone()).or_default();
                e[0] += 1;
                e[1] += len;
                e[2] += items;
                e[3] += body;
            }
        }
        if let Some(last) = self.rounds.last_mut() {
            last.1 = kinds;
            last.3 = bytes.len() as u64;
        }
        self.time += started.elapsed();
        Ok(())
    }

    fn to_json(&self) -> Value {
        let kinds = |k: &Kinds| -> Value {
            k.iter()
                .map(|(name, v)| (name.clone(), json!(v)))
                .collect::<Map<String, Value>>()
                .into()
        };
        json!({
            "requests": kinds(&self.requests),
            "replies": kinds(&self.replies),
            "parts": self.parts,
            "rounds": self.rounds.iter().zip(&self.round_ms).map(|((q, a, qb, ab), ms)| json!({
                "req": kinds(q), "rep": kinds(a), "req_bytes": qb, "rep_bytes": ab, "ms": ms,
            })).collect::<Vec<_>>(),
        })
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Copies the base pair of size `n` into a fresh scratch pair and returns its directory (the
/// case removes it when it is done; a failed case leaves it for a look).
fn scratch_pair(n: usize) -> Result<PathBuf, Error> {
    let base = fixture(n)?;
    // Per process, so two runs sharing the fixtures cannot trample each other's pair.
    let dir = fixtures_root().join(format!("reconcile-scratch-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    for side in ["a", "b"] {
        std::fs::create_dir_all(dir.join(side))?;
        std::fs::copy(base.join(side).join(DB_FILE), dir.join(side).join(DB_FILE))?;
    }
    Ok(dir)
}

/// One measured case; prints one JSON line. Returns whether both sides converged.
fn case(n: usize, d: usize, seed: u64) -> Result<bool, Error> {
    let dir = scratch_pair(n)?;
    // Diverge and compute the baselines in a child, so that this process's peak memory is
    // the reconciliation's.
    let child = Command::new(std::env::current_exe()?)
        .arg("diverge")
        .arg(&dir)
        .args([n.to_string(), d.to_string(), seed.to_string()])
        .output()?;
    if !child.status.success() {
        return Err(format!("diverge failed: {}", String::from_utf8_lossy(&child.stderr)).into());
    }
    let mut out: Value = serde_json::from_slice(&child.stdout)?;

    let a = Store::open(&dir.join("a"))?;
    let b = Arc::new(Store::open(&dir.join("b"))?);
    let before = (a.root()?, b.root()?);
    if (before.0 == before.1) != (d == 0) {
        return Err(format!("d = {d} but the roots are equal: {}", before.0 == before.1).into());
    }
    let messages_before = (a.counters()?.messages, b.counters()?.messages);

    // Peak memory from here: reset the high-water mark to the current resident set.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let rss_before = status_kib("VmRSS:");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = Arc::new(ServerState::new(Arc::clone(&b), None, Limits::default()));
    let served = runtime.spawn(server::run(listener, state, async move {
        let _ = stopped.await;
    }));

    // What `net::sync::sync_with_peer` does, with a counting transport and a seeded window.
    let client = BlockingClient::new(&url, None, ClientConfig::default())?;
    let round_url = client.client().url(ROUND);
    let mut tally = Tally::default();
    let mut tally_error = None;
    let window = (Rng::new(seed ^ 0x77).next() % 32) as u8;
    let mut reports: Vec<SyncReport> = Vec::new();
    let started = Instant::now();
    for w in [window, (window + 13) % 32] {
        let send = |bytes: Vec<u8>| -> Result<Vec<u8>, String> {
            if let Err(e) = tally.request(&bytes) {
                tally_error = Some(e.to_string());
            }
            let posted = Instant::now();
            let answer = client
                .post(ROUND, SYNC_CONTENT_TYPE, bytes)
                .map_err(|e| e.to_string())?;
            let body = expect_success(&round_url, answer).map_err(|e| e.to_string())?;
            tally.round_ms.push(posted.elapsed().as_secs_f64() * 1e3);
            if let Err(e) = tally.reply(&body) {
                tally_error = Some(e.to_string());
            }
            Ok(body.to_vec())
        };
        let report = run(&a, w, false, send)?;
        let done = report.equal_after;
        reports.push(report);
        if done {
            break;
        }
    }
    let wall = started.elapsed().saturating_sub(tally.time);
    let peak = status_kib("VmHWM:");
    let _ = stop.send(());
    runtime.block_on(served)?;
    if let Some(e) = tally_error {
        return Err(format!("could not decode a round: {e}").into());
    }

    let after = (a.root()?, b.root()?);
    let equal_after = reports.last().is_some_and(|r| r.equal_after);
    let converged = equal_after && after.0 == after.1;
    let sum = |f: fn(&SyncReport) -> u64| reports.iter().map(f).sum::<u64>();
    let meta = sum(|r| r.bytes_sent + r.bytes_received);
    // The counting transport sees whole bodies; without the message bodies they must add up
    // to what the driver counted.
    let seen: u64 = tally.rounds.iter().map(|r| r.2 + r.3).sum();
    let bodies_seen: u64 = tally
        .requests
        .values()
        .chain(tally.replies.values())
        .map(|v| v[3])
        .sum();
    // Non-zero only if the wire grew a kind that carries bodies this file does not know yet:
    // then the per-kind table counts those bodies as metadata (the totals stay right).
    let unaccounted = (seen - bodies_seen) as i64 - meta as i64;
    if unaccounted != 0 {
        eprintln!(
            "warning: per-kind counts hold {unaccounted} B of bodies the driver does not count \
             as metadata (transport {seen} - known bodies {bodies_seen} != driver {meta})"
        );
    }
    let o = out.as_object_mut().ok_or("not an object")?;
    o.insert("n".into(), json!(n));
    o.insert("d".into(), json!(d));
    o.insert("seed".into(), json!(seed));
    o.insert("window".into(), json!(window));
    o.insert("sessions".into(), json!(reports.len()));
    o.insert("rounds".into(), json!(sum(|r| r.rounds)));
    o.insert("meta_bytes".into(), json!(meta));
    o.insert(
        "body_bytes".into(),
        json!(sum(|r| r.body_bytes_sent + r.body_bytes_received)),
    );
    o.insert("wall_ms".into(), json!(wall.as_secs_f64() * 1e3));
    o.insert("tally_ms".into(), json!(tally.time.as_secs_f64() * 1e3));
    o.insert("tally_unaccounted".into(), json!(unaccounted));
    o.insert("rss_before_kib".into(), json!(rss_before));
    o.insert("peak_kib".into(), json!(peak));
    o.insert("equal_after".into(), json!(equal_after));
    o.insert("roots_equal".into(), json!(after.0 == after.1));
    o.insert("converged".into(), json!(converged));
    o.insert("messages_before".into(), json!(messages_before));
    o.insert(
        "messages_after".into(),
        json!((a.counters()?.messages, b.counters()?.messages)),
    );
    o.insert("min_bytes".into(), json!(minimum(n, d)));
    o.insert("reports".into(), serde_json::to_value(&reports)?);
    o.insert("tally".into(), tally.to_json());
    println!("{}", serde_json::to_string(&out)?);
    drop((a, b));
    if converged {
        std::fs::remove_dir_all(&dir)?;
    } else {
        eprintln!(
            "NOT CONVERGED: n = {n}, d = {d}, seed = {seed}, window = {window}: \
             equal_after = {equal_after}, roots equal = {}; the pair is kept in {}",
            after.0 == after.1,
            dir.display()
        );
    }
    Ok(converged)
}

/// The information-theoretic minimum: d × (log2(e·n/d)/8 + 16) bytes.
fn minimum(n: usize, d: usize) -> f64 {
    if d == 0 {
        return 0.0;
    }
    let (n, d) = (n as f64, d as f64);
    d * ((std::f64::consts::E * n / d).log2() / 8.0 + 16.0)
}

// ---------------------------------------------------------------------------------------------
// The table

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn human(bytes: f64) -> String {
    if bytes.is_nan() {
        "-".into()
    } else if bytes < 10_000.0 {
        format!("{bytes:.0}")
    } else if bytes < 10_000_000.0 {
        format!("{:.1} K", bytes / 1e3)
    } else {
        format!("{:.1} M", bytes / 1e6)
    }
}

fn table(files: &[PathBuf]) -> Result<bool, Error> {
    let mut cases: BTreeMap<(u64, u64), Vec<Value>> = BTreeMap::new();
    for file in files {
        for line in std::fs::read_to_string(file)?.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)?;
            let key = (num(&v, "n") as u64, num(&v, "d") as u64);
            cases.entry(key).or_default().push(v);
        }
    }
    let med = |runs: &[Value], key: &str| median(runs.iter().map(|v| num(v, key)).collect());
    let mut all_converged = true;
    println!(
        "{:>9} {:>6} | {:>6} {:>9} {:>9} {:>9} {:>8} {:>5} | {:>9} {:>6} {:>9} {:>8} | {:>7} {:>8} {:>9}",
        "n", "d", "rounds", "metadata", "bodies", "wall ms", "peak MiB", "equal",
        "seed B", "neg rt", "neg B", "min B", "meta/min", "neg/meta", "seed/meta"
    );
    println!("{}", "-".repeat(146));
    for ((n, d), runs) in &cases {
        let converged = runs
            .iter()
            .filter(|v| v["converged"] == json!(true))
            .count();
        all_converged &= converged == runs.len();
        let meta = med(runs, "meta_bytes");
        let min = med(runs, "min_bytes");
        let neg = med(runs, "neg_bytes");
        let seed = med(runs, "seed_bytes");
        let ratio = |x: f64, y: f64| {
            if y > 0.0 && x.is_finite() {
                format!("{:.1}", x / y)
            } else {
                "-".into()
            }
        };
        println!(
            "{:>9} {:>6} | {:>6} {:>9} {:>9} {:>9.1} {:>8.1} {:>5} | {:>9} {:>6} {:>9} {:>8} | {:>7} {:>8} {:>9}",
            n,
            d,
            med(runs, "rounds"),
            human(meta),
            human(med(runs, "body_bytes")),
            med(runs, "wall_ms"),
            med(runs, "peak_kib") / 1024.0,
            format!("{converged}/{}", runs.len()),
            human(seed),
            med(runs, "neg_rounds"),
            human(neg),
            human(min),
            ratio(meta, min),
            ratio(neg, meta),
            ratio(seed, meta),
        );
    }
    println!(
        "\nmedians of {} run(s) per row; metadata = bytes_sent + bytes_received (postcard bodies, \
         message bodies excluded, HTTP headers excluded); peak = VmHWM of the process holding \
         both stores, the server and the client, reset just before the session; equal = runs \
         that converged (equal_after and equal 32-byte roots) / runs",
        cases.values().map(Vec::len).max().unwrap_or(0)
    );
    for ((n, d), runs) in &cases {
        for v in runs {
            if v["converged"] != json!(true) {
                println!(
                    "NOT CONVERGED: n = {n}, d = {d}, seed = {}, window = {}",
                    v["seed"], v["window"]
                );
            }
        }
    }

    // Targets.
    println!("\ntargets (issue 3), on the medians:");
    let get = |n: u64, d: u64, key: &str| cases.get(&(n, d)).map(|r| med(r, key));
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    for ((n, d), runs) in &cases {
        if *d == 0 {
            let (r, m) = (med(runs, "rounds"), med(runs, "meta_bytes"));
            println!(
                "  d = 0, n = {n}: {r} round trip(s), {m} bytes (1 and < 200): {}",
                check(r <= 1.0 && m < 200.0)
            );
        }
    }
    let big = cases.keys().map(|k| k.0).max().unwrap_or(0);
    let small = cases.keys().map(|k| k.0).min().unwrap_or(0);
    if let (Some(r), Some(m), Some(min), Some(neg), Some(seed), Some(wall)) = (
        get(big, 100, "rounds"),
        get(big, 100, "meta_bytes"),
        get(big, 100, "min_bytes"),
        get(big, 100, "neg_bytes"),
        get(big, 100, "seed_bytes"),
        get(big, 100, "wall_ms"),
    ) {
        println!("  d = 100, n = {big}:");
        println!("    round trips {r} (≤ 8): {}", check(r <= 8.0));
        println!(
            "    metadata {m} B = {:.1}× the minimum {min:.0} B (≤ 15×, ≈ {:.0} B): {}",
            m / min,
            15.0 * min,
            check(m <= 15.0 * min)
        );
        println!(
            "    negentropy {neg} B = {:.1}× ours (≥ 5×): {}",
            neg / m,
            check(neg >= 5.0 * m)
        );
        println!(
            "    full (UID, MD5) exchange {seed} B = {:.0}× ours (> 500×): {}",
            seed / m,
            check(seed > 500.0 * m)
        );
        println!(
            "    wall time {wall:.1} ms (well under a second): {}",
            check(wall < 500.0)
        );
    }
    if big != small {
        for d in [1u64, 100, 10_000] {
            if let (Some(mb), Some(ms), Some(wb), Some(ws)) = (
                get(big, d, "meta_bytes"),
                get(small, d, "meta_bytes"),
                get(big, d, "wall_ms"),
                get(small, d, "wall_ms"),
            ) {
                println!(
                    "  d = {d}: n = {big} / n = {small}: bytes {:.2}×, time {:.2}× (≤ 2× each): {}",
                    mb / ms,
                    wb / ws,
                    check(mb <= 2.0 * ms && wb <= 2.0 * ws)
                );
            }
        }
    }

    // Breakdown at d = 100: the run with the median metadata bytes.
    for ((n, d), runs) in &cases {
        if *d != 100 {
            continue;
        }
        let m = med(runs, "meta_bytes");
        let Some(v) = runs.iter().min_by(|x, y| {
            (num(x, "meta_bytes") - m)
                .abs()
                .total_cmp(&(num(y, "meta_bytes") - m).abs())
        }) else {
            continue;
        };
        println!(
            "\nbreakdown at n = {n}, d = {d} (seed {}, {} B metadata, {} round trips): bytes per kind, \
             each message encoded alone with postcard (the round envelope adds 3-6 B per round)",
            v["seed"], v["meta_bytes"], v["rounds"]
        );
        for side in ["requests", "replies"] {
            println!("  {side}:  kind        count     bytes   (metadata)   items inside");
            if let Some(kinds) = v["tally"][side].as_object() {
                for (kind, c) in kinds {
                    let c: Vec<u64> = c
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default();
                    if let [count, bytes, items, body] = c[..] {
                        println!(
                            "           {kind:<10} {count:>6} {bytes:>9}   {:>10}   {items:>8}",
                            bytes - body
                        );
                    }
                }
            }
        }
        if let Some(parts) = v["tally"]["parts"].as_object() {
            let mut parts: Vec<(&String, u64)> = parts
                .iter()
                .filter_map(|(k, b)| b.as_u64().map(|b| (k, b)))
                .collect();
            parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let meta = num(v, "meta_bytes");
            println!(
                "  parts, largest first (bytes, share of the metadata; bodies included, marked *):"
            );
            for (part, bytes) in parts {
                let body = part.ends_with(".body") || part.ends_with("Bodies.bodies");
                println!(
                    "    {part:<52} {bytes:>8}  {}",
                    if body {
                        "*".to_string()
                    } else {
                        format!("{:.1} %", 100.0 * bytes as f64 / meta)
                    }
                );
            }
        }
        println!(
            "  per round (request bytes → reply bytes, time to the answer: kinds; wall {:.1} ms):",
            num(v, "wall_ms")
        );
        if let Some(rounds) = v["tally"]["rounds"].as_array() {
            for (i, r) in rounds.iter().enumerate() {
                let list = |k: &Value| -> String {
                    k.as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(name, c)| format!("{}×{name}", c[0]))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default()
                };
                println!(
                    "    {:>2}: {:>7} → {:>7} {:>7.1} ms   {}  →  {}",
                    i + 1,
                    r["req_bytes"],
                    r["rep_bytes"],
                    r["ms"].as_f64().unwrap_or(f64::NAN),
                    list(&r["req"]),
                    list(&r["rep"])
                );
            }
        }
    }
    Ok(all_converged)
}

// ---------------------------------------------------------------------------------------------

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, Error> {
    args.get(i)
        .and_then(|a| a.replace('_', "").parse().ok())
        .ok_or_else(|| format!("expected {what} as argument {i}").into())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fixtures") => {
            for i in 1..args.len() {
                let n: usize = arg(&args, i, "n")?;
                fixture(n)?;
            }
        }
        Some("diverge") => {
            let dir = PathBuf::from(args.get(1).ok_or("expected a directory")?);
            diverge_task(
                &dir,
                arg(&args, 2, "n")?,
                arg(&args, 3, "d")?,
                arg(&args, 4, "seed")?,
            )?;
        }
        Some("case") => {
            if !case(
                arg(&args, 1, "n")?,
                arg(&args, 2, "d")?,
                arg(&args, 3, "seed")?,
            )? {
                std::process::exit(3);
            }
        }
        Some("table") => {
            let files: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
            if !table(&files)? {
                std::process::exit(3);
            }
        }
        // `cargo bench` (it passes --bench): a quick table at n = 10 000, one run.
        _ => {
            let out = fixtures_root().join("reconcile-quick.jsonl");
            let mut lines = String::new();
            for d in [0, 1, 100, 10_000] {
                let child = Command::new(std::env::current_exe()?)
                    .args(["case", "10000", &d.to_string(), "1"])
                    .output()?;
                if !child.status.success() && child.status.code() != Some(3) {
                    return Err(String::from_utf8_lossy(&child.stderr).into_owned().into());
                }
                lines.push_str(&String::from_utf8_lossy(&child.stdout));
            }
            std::fs::write(&out, lines)?;
            if !table(&[out])? {
                std::process::exit(3);
            }
        }
    }
    Ok(())
}
