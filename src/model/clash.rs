//! The clash rules (DESIGN §5) as pure functions: given what two replicas hold of a mailbox,
//! the state both must end in. The session computes it once and applies it to both sides, so
//! replicas converge; the functions are commutative (swapping the sides gives the same
//! outcome) and never drop a live message that no tombstone names.

use super::flags::FlagSet;
use super::ids::{Digest, MailboxGuid};
use super::record::{MailboxRecord, MailboxTombstone, MessageRecord, Tombstone};
use super::stamp::Stamp;
use std::collections::BTreeMap;

/// What one replica holds of a mailbox, restricted to the UIDs being compared (or all of
/// them, when the session fetched the whole mailbox).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailboxSide {
    pub record: Option<MailboxRecord>,
    pub tombstone: Option<MailboxTombstone>,
    pub messages: BTreeMap<u32, MessageRecord>,
    pub expunged: BTreeMap<u32, Vec<Tombstone>>,
}

/// Counts of what a merge decided, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClashStats {
    /// UIDs that held different messages on the two sides.
    pub uid_clashes: u64,
    /// Messages given a new UID (clash, new mail over a tombstone, UIDVALIDITY or GUID merge).
    pub renumbered: u64,
    /// Messages one side held below the other side's UIDNEXT where the other side held
    /// neither a message nor a tombstone: renumbered on both sides (the other side's IMAP
    /// clients may have seen its UIDNEXT and never look below it); in `renumbered` too when
    /// it moves (not when the same append is live higher up already).
    pub late_copies: u64,
    /// Messages one side held at a UID where the other side has a move tombstone of the
    /// same body, and whose destination this merge does not hold: given a new UID on both
    /// sides, as a late copy is (in `renumbered` too). A move tombstone alone never takes a
    /// message; where the merge holds the destination, the message stays there instead
    /// (finding 14 of docs/RELIABILITY.md).
    pub moves_redone: u64,
}

/// The state both replicas must end in, for the compared UIDs and any new ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailboxOutcome {
    /// The final record; `None` when the mailbox ends deleted.
    pub record: Option<MailboxRecord>,
    pub tombstone: Option<MailboxTombstone>,
    /// Final live messages at the compared UIDs and at new UIDs.
    pub messages: BTreeMap<u32, MessageRecord>,
    /// Final expunge tombstones at the compared UIDs.
    pub expunged: BTreeMap<u32, Vec<Tombstone>>,
    /// When the UIDVALIDITY changed, every message of the losing side not kept here is removed
    /// without a tombstone: its UID meant nothing under the new UIDVALIDITY. With no record
    /// (a mailbox merged into one a writer deleted, whose delete wins): its messages go with
    /// it, said explicitly, since a merged mailbox's delete alone never drops mail.
    pub reset: bool,
    /// The mailbox was merged into another elsewhere, and one side still holds it: its live
    /// messages must move into that mailbox ([`absorb`]). When the caller cannot (the other
    /// mailbox is gone too), it takes `Forward::survive` instead: no mail is lost.
    pub forward: Option<Forward>,
    pub stats: ClashStats,
}

/// A mailbox one side holds that the other knows merged into `into`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub into: MailboxGuid,
    pub messages: BTreeMap<u32, MessageRecord>,
    /// Its writers' expunges: they follow the identities they name into the other mailbox.
    pub kills: Vec<Tombstone>,
    /// The outcome if the messages cannot move: the mailbox survives with them.
    pub survive: Box<MailboxOutcome>,
}

/// Merges two flag sets and picks the record both sides keep for the same message.
fn merge_same(a: &MessageRecord, b: &MessageRecord) -> MessageRecord {
    let mut flags: FlagSet = a.flags.clone();
    flags.merge(&b.flags);
    // Unhashed metadata is chosen symmetrically so the outcome does not depend on the side.
    let base = if (a.appended, a.internal_date) <= (b.appended, b.internal_date) {
        a
    } else {
        b
    };
    MessageRecord {
        flags,
        ..base.clone()
    }
}

fn sort_key(m: &MessageRecord, old_uid: u32) -> (Digest, Stamp, u32) {
    (m.digest, m.appended, old_uid)
}

/// Gives messages new UIDs from `next` on, in digest order (then append stamp, then old UID),
/// the order both sides compute alike. Returns the UIDNEXT after them.
fn renumber(
    pending: &mut Vec<(u32, MessageRecord)>,
    next: u32,
    into: &mut BTreeMap<u32, MessageRecord>,
) -> u32 {
    pending.sort_by_key(|(old, m)| sort_key(m, *old));
    let mut uid = next;
    for (_, m) in pending.drain(..) {
        into.insert(uid, m);
        uid = uid.saturating_add(1);
    }
    uid
}

fn push_tomb(map: &mut BTreeMap<u32, Vec<Tombstone>>, uid: u32, t: Tombstone) {
    let list = map.entry(uid).or_default();
    match list.iter_mut().find(|x| x.digest == t.digest) {
        Some(x) => {
            x.stamp = x.stamp.max(t.stamp);
            // A writer's expunge outweighs a move at the same UID.
            x.origin = x.origin.max(t.origin);
        }
        None => {
            list.push(t);
            list.sort_by_key(|x| x.digest);
        }
    }
}

fn max_tombstone(
    a: &Option<MailboxTombstone>,
    b: &Option<MailboxTombstone>,
) -> Option<MailboxTombstone> {
    match (a, b) {
        (Some(x), Some(y)) => Some(
            if (x.stamp, &x.name, x.merged_into) >= (y.stamp, &y.name, y.merged_into) {
                x.clone()
            } else {
                y.clone()
            },
        ),
        (x, y) => x.clone().or_else(|| y.clone()),
    }
}

/// The mailbox record both sides keep: name and subscription by their stamps, the larger
/// UIDVALIDITY (a UIDVALIDITY conflict then takes its winner's, [`uidvalidity_key`]) and
/// UIDNEXT, the latest change.
fn merge_records(a: &MailboxRecord, b: &MailboxRecord) -> MailboxRecord {
    let (name, name_stamp) = if (a.name_stamp, &a.name) >= (b.name_stamp, &b.name) {
        (a.name.clone(), a.name_stamp)
    } else {
        (b.name.clone(), b.name_stamp)
    };
    let (subscribed, subscribed_stamp) =
        if (a.subscribed_stamp, a.subscribed) >= (b.subscribed_stamp, b.subscribed) {
            (a.subscribed, a.subscribed_stamp)
        } else {
            (b.subscribed, b.subscribed_stamp)
        };
    MailboxRecord {
        guid: a.guid,
        name,
        uidvalidity: a.uidvalidity.max(b.uidvalidity),
        uidnext: a.uidnext.max(b.uidnext),
        subscribed,
        name_stamp,
        subscribed_stamp,
        last_change: a.last_change.max(b.last_change),
    }
}

/// Merges what two replicas hold of one mailbox (the same GUID).
///
/// The caller must pass whole mailboxes (every message and tombstone) when the mailbox is
/// missing on one side or the UIDVALIDITYs differ; otherwise the compared UIDs suffice.
pub fn merge_mailbox(a: &MailboxSide, b: &MailboxSide) -> MailboxOutcome {
    let mut out = merge_sides(a, b);
    uidnext_above_every_uid(&mut out);
    // The outcome a session takes instead when a merged mailbox's messages cannot move (the
    // mailbox it merged into was deleted) must hold the same invariant.
    if let Some(forward) = &mut out.forward {
        uidnext_above_every_uid(&mut forward.survive);
    }
    out
}

/// Every UID lies below UIDNEXT. A side read over several rounds can break that (the peer
/// took a message after telling its record, before listing its messages: found by the
/// simulation); the outcome mends it rather than plan a change the store refuses.
fn uidnext_above_every_uid(out: &mut MailboxOutcome) {
    if let Some(record) = &mut out.record {
        let top = [
            out.messages.keys().next_back(),
            out.expunged.keys().next_back(),
        ]
        .into_iter()
        .flatten()
        .max()
        .map_or(0, |uid| uid.saturating_add(1));
        record.uidnext = record.uidnext.max(top);
    }
}

fn merge_sides(a: &MailboxSide, b: &MailboxSide) -> MailboxOutcome {
    let tombstone = max_tombstone(&a.tombstone, &b.tombstone);
    match (&a.record, &b.record) {
        (None, None) => MailboxOutcome {
            tombstone,
            ..Default::default()
        },
        (Some(ra), None) => one_sided(a, ra, tombstone, b),
        (None, Some(rb)) => one_sided(b, rb, tombstone, a),
        (Some(ra), Some(rb)) if ra.uidvalidity != rb.uidvalidity => {
            let (winner, loser, uidvalidity) = if uidvalidity_key(a, ra) > uidvalidity_key(b, rb) {
                (a, b, ra.uidvalidity)
            } else {
                (b, a, rb.uidvalidity)
            };
            let record = MailboxRecord {
                uidvalidity,
                ..merge_records(ra, rb)
            };
            reset_merge(winner, loser, record)
        }
        (Some(ra), Some(rb)) => merge_messages(a, b, merge_records(ra, rb)),
    }
}

/// What decides a UIDVALIDITY conflict: the side holding more messages, then the larger
/// UIDVALIDITY (dsync's rule). An empty mailbox (a fresh replica, or a user who logged in on
/// one before it caught up) therefore never imposes its UIDVALIDITY on one that holds mail.
/// The sides are whole mailboxes here (the session fetches both when UIDVALIDITY differs).
/// Why this converges: docs/PROTOCOL.md, "Why replicas converge".
fn uidvalidity_key(side: &MailboxSide, record: &MailboxRecord) -> (usize, u32) {
    (side.messages.len(), record.uidvalidity)
}

/// The mailbox exists on one side only. A mailbox tombstone on the other side wins unless the
/// mailbox changed after the delete (then it survives with its messages: no mail is lost).
/// A tombstone that says the mailbox merged into another always wins, and the messages move
/// there (whenever they were appended: the pair that merged may not have seen them all).
fn one_sided(
    side: &MailboxSide,
    record: &MailboxRecord,
    tombstone: Option<MailboxTombstone>,
    other: &MailboxSide,
) -> MailboxOutcome {
    let survive = || MailboxOutcome {
        record: Some(record.clone()),
        tombstone: None,
        messages: side.messages.clone(),
        expunged: side.expunged.clone(),
        ..Default::default()
    };
    if let Some(
        t @ MailboxTombstone {
            merged_into: Some(into),
            ..
        },
    ) = &tombstone
    {
        // The side that merged it keeps its writers' expunges for this.
        let kills: Vec<Tombstone> = writers_expunges(&side.expunged)
            .into_iter()
            .chain(writers_expunges(&other.expunged))
            .collect();
        return MailboxOutcome {
            tombstone: Some(t.clone()),
            // A message here that a writer expunged does not move: its expunge is stored here
            // before the mailbox goes, so the store sees that nothing live is left behind.
            expunged: kills_at(&side.messages, &kills),
            forward: Some(Forward {
                into: *into,
                messages: side.messages.clone(),
                kills,
                survive: Box::new(survive()),
            }),
            ..Default::default()
        };
    }
    match tombstone {
        Some(t) if record.last_change <= t.stamp => MailboxOutcome {
            tombstone: Some(t),
            ..Default::default()
        },
        _ => survive(),
    }
}

type Identity = (Digest, Stamp);

/// Same GUID, same UIDVALIDITY: per UID, per flag; then per message identity (digest and
/// append stamp), so that one append ends up live once, wherever clashes moved it:
/// - a writer's expunge (a tombstone with an origin) on either side kills its identity at
///   every compared UID;
/// - an identity live at two UIDs keeps the higher one (a clash only ever moves a message
///   up, so the highest placement is the one no move has left), the flags merged, and the
///   lower UIDs get move tombstones.
fn merge_messages(a: &MailboxSide, b: &MailboxSide, mut record: MailboxRecord) -> MailboxOutcome {
    let mut out = MailboxOutcome::default();
    let mut expunged: BTreeMap<u32, Vec<Tombstone>> = BTreeMap::new();
    let mut kills: BTreeMap<Identity, Stamp> = BTreeMap::new();
    for (uid, list) in a.expunged.iter().chain(b.expunged.iter()) {
        for t in list {
            push_tomb(&mut expunged, *uid, *t);
            if let Some(origin) = t.origin {
                let k = kills.entry((t.digest, origin)).or_insert(t.stamp);
                *k = (*k).max(t.stamp);
            }
        }
    }
    let killed = |m: &MessageRecord| kills.get(&m.identity()).copied();
    let kill_tomb = |m: &MessageRecord, stamp: Stamp| Tombstone {
        digest: m.digest,
        stamp,
        origin: Some(m.appended),
    };
    let mut pending: Vec<(u32, MessageRecord)> = Vec::new();
    // Identities held where the other side has a move tombstone of them.
    let mut after_move: std::collections::BTreeSet<Identity> = Default::default();
    let uids: std::collections::BTreeSet<u32> = a
        .messages
        .keys()
        .chain(b.messages.keys())
        .copied()
        .collect();
    for uid in uids {
        match (a.messages.get(&uid), b.messages.get(&uid)) {
            (Some(ma), Some(mb)) if ma.digest == mb.digest => {
                let merged = merge_same(ma, mb);
                match killed(&merged) {
                    Some(stamp) => push_tomb(&mut expunged, uid, kill_tomb(&merged, stamp)),
                    None => {
                        out.messages.insert(uid, merged);
                    }
                }
            }
            (Some(ma), Some(mb)) => {
                // A UID clash: both took mail under this UID during a split. Keep both under
                // new UIDs and expunge the old one everywhere (clients cached it).
                out.stats.uid_clashes += 1;
                let stamp = ma.appended.max(mb.appended);
                for m in [ma, mb] {
                    match killed(m) {
                        Some(k) => push_tomb(&mut expunged, uid, kill_tomb(m, k)),
                        None => {
                            push_tomb(&mut expunged, uid, Tombstone::moved(m.digest, stamp));
                            pending.push((uid, m.clone()));
                        }
                    }
                }
            }
            (Some(m), None) | (None, Some(m)) => {
                let other = if a.messages.contains_key(&uid) { b } else { a };
                let tombs = other.expunged.get(&uid).map(Vec::as_slice).unwrap_or(&[]);
                if let Some(k) = killed(m) {
                    // A writer expunged this message (here or where a clash moved it).
                    push_tomb(&mut expunged, uid, kill_tomb(m, k));
                } else if tombs
                    .iter()
                    .any(|t| t.digest == m.digest && t.origin.is_some())
                {
                    // A writer expunged this body at this UID on the other side: it wins.
                } else if tombs.iter().any(|t| t.digest == m.digest) {
                    // The other side moved it up from here. A move tombstone is no kill: it
                    // wins only where the message lives on, and where it went is in this
                    // merge whenever the other side still holds it there (this side holds
                    // the identity here, so not there: that UID differs and is compared),
                    // so the wait below keeps it there. Otherwise the move's destination is
                    // gone (its only holder was removed, or a journal brought the tombstone
                    // without the copy): the move is made again, from both UIDNEXTs, as for
                    // a late copy. Never a UID under the tombstone side's UIDNEXT, never lost.
                    after_move.insert(m.identity());
                    push_tomb(&mut expunged, uid, Tombstone::moved(m.digest, m.appended));
                    pending.push((uid, m.clone()));
                } else if let Some(latest) = tombs.iter().map(|t| t.stamp).max() {
                    // The other side expunged a different message under this UID: this one is
                    // new mail and needs a UID the other side never used.
                    push_tomb(
                        &mut expunged,
                        uid,
                        Tombstone::moved(m.digest, latest.max(m.appended)),
                    );
                    pending.push((uid, m.clone()));
                } else if other.record.as_ref().is_some_and(|r| uid < r.uidnext) {
                    // The other side never held anything here, yet its UIDNEXT is past this
                    // UID: its IMAP clients may have seen that UIDNEXT and will never look
                    // below it. New mail there, renumbered alike on both sides (as dsync does).
                    out.stats.late_copies += 1;
                    push_tomb(&mut expunged, uid, Tombstone::moved(m.digest, m.appended));
                    pending.push((uid, m.clone()));
                } else {
                    out.messages.insert(uid, m.clone());
                }
            }
            (None, None) => {}
        }
    }
    // A message waiting for a new UID that is live higher up already stays there.
    let mut highest: BTreeMap<Identity, u32> = BTreeMap::new();
    for (uid, m) in &out.messages {
        highest.insert(m.identity(), *uid);
    }
    let mut waiting: BTreeMap<Identity, (u32, MessageRecord)> = BTreeMap::new();
    let mut sources: BTreeMap<Identity, u32> = BTreeMap::new();
    for (_, m) in &pending {
        *sources.entry(m.identity()).or_default() += 1;
    }
    for (old, m) in pending {
        match highest.get(&m.identity()) {
            Some(&at) if at > old => {
                if let Some(kept) = out.messages.get_mut(&at) {
                    kept.flags.merge(&m.flags);
                }
            }
            _ => match waiting.get_mut(&m.identity()) {
                Some((_, w)) => w.flags.merge(&m.flags),
                None => {
                    waiting.insert(m.identity(), (old, m));
                }
            },
        }
    }
    // A move whose destination this merge does not hold is made again.
    out.stats.moves_redone = after_move
        .iter()
        .filter(|id| waiting.contains_key(id) && sources.get(id) == Some(&1))
        .count() as u64;
    let mut pending: Vec<(u32, MessageRecord)> = waiting.into_values().collect();
    out.stats.renumbered = pending.len() as u64;
    record.uidnext = renumber(&mut pending, record.uidnext, &mut out.messages);
    dedup(&mut out.messages, &mut expunged);
    // A live message and a tombstone never share a UID in the outcome.
    expunged.retain(|uid, _| !out.messages.contains_key(uid));
    out.expunged = expunged;
    out.record = Some(record);
    out
}

/// Keeps each identity at its highest UID only: the flags of the lower copies merge into it,
/// and the lower UIDs get move tombstones.
fn dedup(
    messages: &mut BTreeMap<u32, MessageRecord>,
    expunged: &mut BTreeMap<u32, Vec<Tombstone>>,
) {
    let mut seen: BTreeMap<Identity, u32> = BTreeMap::new();
    let mut lower: Vec<(u32, u32)> = Vec::new();
    // Highest UID first: the first placement seen of an identity is the one kept.
    for (uid, m) in messages.iter().rev() {
        match seen.get(&m.identity()) {
            Some(&kept) => lower.push((*uid, kept)),
            None => {
                seen.insert(m.identity(), *uid);
            }
        }
    }
    for (uid, kept) in lower {
        let Some(m) = messages.remove(&uid) else {
            continue;
        };
        if let Some(k) = messages.get_mut(&kept) {
            k.flags.merge(&m.flags);
        }
        push_tomb(expunged, uid, Tombstone::moved(m.digest, m.appended));
    }
}

/// Different UIDVALIDITY: the winner is the side with more messages, then the larger value
/// ([`uidvalidity_key`]). The loser's messages are matched to the winner's by
/// digest (flags merged); the rest are new mail with fresh UIDs. Needs whole mailboxes.
fn reset_merge(
    winner: &MailboxSide,
    loser: &MailboxSide,
    mut record: MailboxRecord,
) -> MailboxOutcome {
    let mut out = MailboxOutcome {
        reset: true,
        expunged: winner.expunged.clone(),
        ..Default::default()
    };
    out.messages = winner.messages.clone();
    // Match one to one, in UID order, so duplicates of one digest pair up deterministically.
    let mut by_digest: BTreeMap<Digest, Vec<u32>> = BTreeMap::new();
    for (uid, m) in &winner.messages {
        by_digest.entry(m.digest).or_default().push(*uid);
    }
    let mut pending = Vec::new();
    for (uid, m) in &loser.messages {
        match by_digest
            .get_mut(&m.digest)
            .and_then(|uids| (!uids.is_empty()).then(|| uids.remove(0)))
        {
            Some(wuid) => {
                if let Some(w) = out.messages.get(&wuid) {
                    let merged = merge_same(w, m);
                    out.messages.insert(wuid, merged);
                }
            }
            None => pending.push((*uid, m.clone())),
        }
    }
    out.stats.renumbered = pending.len() as u64;
    record.uidnext = renumber(&mut pending, record.uidnext, &mut out.messages);
    out.record = Some(record);
    out
}

/// Where a mailbox stands when two mailboxes of one user end with the same name: the one
/// with the larger rank wins ([`same_name_winner`]). The rank is a total order on what never
/// changes over a mailbox's life and every replica holds alike (the user and the GUID), so
/// every pair of replicas picks the same winner, whatever else each holds and whenever they
/// meet; a rule on counts or stamps could not promise that, and two replicas that merged
/// each mailbox into the other would strand the mail of both.
///
/// In order: the user's INBOX GUID first (the INBOX every server makes); then the mailbox
/// made first, by the creation time its GUID carries ([`MailboxGuid::created`]: Dovecot's
/// GUIDs and merkmail's own), so a folder Dovecot made empty on a new replica at a user's
/// first login, or made again on a second side during a split, gives way to the one that
/// held the mail; a GUID with no creation time (a random one from an older merkmail) counts
/// as older than any that has one; then the larger GUID (the rule before, kept among GUIDs
/// of older versions).
pub fn same_name_rank(
    user: &str,
    guid: MailboxGuid,
) -> (bool, std::cmp::Reverse<(u32, u32)>, MailboxGuid) {
    (
        guid == super::ids::inbox_guid(user),
        std::cmp::Reverse(guid.created().unwrap_or((0, 0))),
        guid,
    )
}

/// The mailbox that wins among `guids` of `user` that ended with the same name (the largest
/// [`same_name_rank`]), or `None` for none.
pub fn same_name_winner(
    user: &str,
    guids: impl IntoIterator<Item = MailboxGuid>,
) -> Option<MailboxGuid> {
    guids.into_iter().max_by_key(|g| same_name_rank(user, *g))
}

/// Two mailboxes of one user ended with the same name under different GUIDs (both created
/// "Archive" during a split). The winner is [`same_name_winner`]'s; the other's messages move
/// into it as new mail with fresh UIDs, and its GUID is tombstoned as merged into the winner.
/// `loser` must hold the whole mailbox.
pub fn merge_into(
    winner: &mut MailboxOutcome,
    loser: &mut MailboxOutcome,
    loser_guid: MailboxGuid,
) {
    let Some(l) = loser.record.take() else {
        return;
    };
    let Some(w) = winner.record.as_ref() else {
        loser.record = Some(l);
        return;
    };
    let (into, name_stamp) = (w.guid, w.name_stamp);
    let kills = writers_expunges(&loser.expunged);
    absorb(winner, std::mem::take(&mut loser.messages), &kills);
    if let Some(w) = winner.record.as_mut() {
        w.last_change = w.last_change.max(l.last_change);
    }
    // Only the writers' expunges stay, for the UIDs where a side still holds the message:
    // stored there before the mailbox goes (the store refuses to drop a merged mailbox
    // that holds mail no other mailbox has, `merged_delete_strands_mail`).
    loser.expunged.retain(|_, list| {
        list.retain(|t| t.origin.is_some());
        !list.is_empty()
    });
    loser.tombstone = Some(MailboxTombstone {
        guid: loser_guid,
        name: l.name,
        stamp: name_stamp.max(l.name_stamp),
        merged_into: Some(into),
    });
}

/// The writers' expunges among `kills` that name a message of `messages`, at its UID.
fn kills_at(
    messages: &BTreeMap<u32, MessageRecord>,
    kills: &[Tombstone],
) -> BTreeMap<u32, Vec<Tombstone>> {
    let mut out = BTreeMap::new();
    for (uid, m) in messages {
        for t in kills {
            if t.origin == Some(m.appended) && t.digest == m.digest {
                push_tomb(&mut out, *uid, *t);
            }
        }
    }
    out
}

fn writers_expunges(expunged: &BTreeMap<u32, Vec<Tombstone>>) -> Vec<Tombstone> {
    expunged
        .values()
        .flatten()
        .filter(|t| t.origin.is_some())
        .copied()
        .collect()
}

/// Moves another mailbox's messages into `winner` (which must have a record) as new mail
/// with fresh UIDs, keeping their identities; one whose identity the winner's outcome holds
/// already only merges its flags there. The other mailbox's writers' expunges (`kills`) go
/// with them: an identity they name that the winner holds (moved there by an earlier merge
/// elsewhere) is expunged there too. Returns how many moved.
pub fn absorb(
    winner: &mut MailboxOutcome,
    mut messages: BTreeMap<u32, MessageRecord>,
    kills: &[Tombstone],
) -> u64 {
    if winner.record.is_none() {
        return 0;
    }
    let killed: BTreeMap<Identity, &Tombstone> = kills
        .iter()
        .filter_map(|t| t.origin.map(|o| ((t.digest, o), t)))
        .collect();
    messages.retain(|_, m| !killed.contains_key(&m.identity()));
    let gone: Vec<(u32, Tombstone)> = winner
        .messages
        .iter()
        .filter_map(|(uid, m)| killed.get(&m.identity()).map(|t| (*uid, **t)))
        .collect();
    for (uid, t) in gone {
        winner.messages.remove(&uid);
        push_tomb(&mut winner.expunged, uid, t);
    }
    let Some(w) = winner.record.as_mut() else {
        return 0;
    };
    let held: BTreeMap<Identity, u32> = winner
        .messages
        .iter()
        .map(|(uid, m)| (m.identity(), *uid))
        .collect();
    let mut pending = Vec::new();
    for (uid, m) in messages {
        match held
            .get(&m.identity())
            .and_then(|at| winner.messages.get_mut(at))
        {
            Some(kept) => kept.flags.merge(&m.flags),
            None => pending.push((uid, m)),
        }
    }
    let moved = pending.len() as u64;
    winner.stats.renumbered += moved;
    w.uidnext = renumber(&mut pending, w.uidnext, &mut winner.messages);
    dedup(&mut winner.messages, &mut winner.expunged);
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FlagName, FlagOp};
    use proptest::prelude::*;

    fn st(ms: u64, node: u32) -> Stamp {
        Stamp {
            ms,
            counter: 0,
            node,
        }
    }

    fn msg(d: u8, appended: u64, flags: &[(&str, bool, u64)]) -> MessageRecord {
        let mut set = FlagSet::default();
        for (f, on, ms) in flags {
            let name = FlagName::parse(f).expect("flag");
            let mut one = FlagSet::initial(std::slice::from_ref(&name), st(*ms, 1));
            if !on {
                one.apply(FlagOp::Remove, &[name], st(*ms, 2));
            }
            set.merge(&one);
        }
        MessageRecord {
            md5: crate::model::Md5([d; 16]),
            digest: Digest([d; 32]),
            size: 10,
            internal_date: 0,
            flags: set,
            appended: st(appended, u32::from(d)),
        }
    }

    fn record(uidnext: u32, uidvalidity: u32, name: &str, stamp: u64) -> MailboxRecord {
        MailboxRecord {
            guid: MailboxGuid([1; 16]),
            name: name.into(),
            uidvalidity,
            uidnext,
            subscribed: false,
            name_stamp: st(stamp, 1),
            subscribed_stamp: st(stamp, 1),
            last_change: st(stamp, 1),
        }
    }

    fn side(
        uidnext: u32,
        messages: Vec<(u32, MessageRecord)>,
        expunged: Vec<(u32, u8, u64)>,
    ) -> MailboxSide {
        let mut s = MailboxSide {
            record: Some(record(uidnext, 1, "Box", 1)),
            messages: messages.into_iter().collect(),
            ..Default::default()
        };
        for (uid, d, ms) in expunged {
            push_tomb(
                &mut s.expunged,
                uid,
                Tombstone {
                    digest: Digest([d; 32]),
                    stamp: st(ms, 9),
                    // Even stamps: a writer's expunge of the message appended at 0; odd: a move.
                    origin: (ms % 2 == 0).then(|| st(0, u32::from(d))),
                },
            );
        }
        s
    }

    #[test]
    fn same_uid_same_digest_merges_flags_by_stamp() {
        let a = side(
            2,
            vec![(1, msg(7, 1, &[("\\Seen", true, 5), ("\\Flagged", true, 3)]))],
            vec![],
        );
        let b = side(
            2,
            vec![(
                1,
                msg(7, 1, &[("\\Seen", false, 9), ("\\Flagged", false, 2)]),
            )],
            vec![],
        );
        let out = merge_mailbox(&a, &b);
        let live: Vec<&str> = out.messages[&1]
            .flags
            .live()
            .map(FlagName::as_str)
            .collect();
        assert_eq!(
            live,
            vec!["\\Flagged"],
            "\\Seen cleared later wins; \\Flagged set later wins"
        );
    }

    #[test]
    fn uid_clash_keeps_both_messages() {
        let a = side(6, vec![(5, msg(0xaa, 10, &[]))], vec![]);
        let b = side(8, vec![(5, msg(0x11, 11, &[]))], vec![]);
        let out = merge_mailbox(&a, &b);
        assert_eq!(out.stats.uid_clashes, 1);
        // New UIDs above both UIDNEXTs, ordered by digest.
        assert_eq!(out.messages[&8].digest, Digest([0x11; 32]));
        assert_eq!(out.messages[&9].digest, Digest([0xaa; 32]));
        assert!(!out.messages.contains_key(&5));
        assert_eq!(
            out.expunged[&5].len(),
            2,
            "the old UID is expunged for both digests"
        );
        assert_eq!(out.record.as_ref().map(|r| r.uidnext), Some(10));
    }

    #[test]
    fn expunge_beats_never_received() {
        let a = side(3, vec![(2, msg(5, 1, &[]))], vec![]);
        let b = side(3, vec![], vec![(2, 5, 4)]);
        let out = merge_mailbox(&a, &b);
        assert!(out.messages.is_empty());
        assert_eq!(out.expunged[&2][0].digest, Digest([5; 32]));
    }

    #[test]
    fn a_message_over_another_digests_tombstone_is_new_mail() {
        let a = side(3, vec![(2, msg(5, 1, &[]))], vec![]);
        let b = side(3, vec![], vec![(2, 6, 4)]);
        let out = merge_mailbox(&a, &b);
        assert_eq!(out.messages.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(out.stats.renumbered, 1);
    }

    #[test]
    fn mail_below_the_other_sides_uidnext_is_renumbered_on_both_sides() {
        // B's clients may have seen UIDNEXT 5: message 3 must not appear below it there.
        let a = side(10, vec![(3, msg(5, 1, &[])), (9, msg(6, 1, &[]))], vec![]);
        let b = side(5, vec![], vec![]);
        let out = merge_mailbox(&a, &b);
        assert_eq!(
            out.messages.keys().copied().collect::<Vec<_>>(),
            vec![9, 10]
        );
        assert_eq!(out.messages[&10].digest, Digest([5; 32]));
        assert_eq!(
            out.messages[&10].appended,
            st(1, 5),
            "the identity moves with it"
        );
        assert_eq!(out.stats.late_copies, 1, "UID 3 is below B's UIDNEXT 5");
        assert_eq!(out.stats.renumbered, 1);
        assert_eq!(
            out.expunged[&3],
            vec![Tombstone::moved(Digest([5; 32]), st(1, 5))],
            "UID 3 gets a move tombstone, so a third replica that holds it there follows"
        );
        assert_eq!(out.record.map(|r| r.uidnext), Some(11));
        assert_eq!(merge_mailbox(&b, &a).messages, out.messages);
    }

    #[test]
    fn mail_at_or_above_the_other_sides_uidnext_keeps_its_uid() {
        // Mail that arrives in order (the other side's UIDNEXT has not passed it) is copied.
        let a = side(
            7,
            vec![
                (4, msg(4, 1, &[])),
                (5, msg(5, 1, &[])),
                (6, msg(6, 1, &[])),
            ],
            vec![],
        );
        let b = side(5, vec![(4, msg(4, 1, &[("\\Seen", true, 2)]))], vec![]);
        let out = merge_mailbox(&a, &b);
        assert_eq!(
            out.messages.keys().copied().collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        assert_eq!((out.stats.late_copies, out.stats.renumbered), (0, 0));
        assert_eq!(out.record.map(|r| r.uidnext), Some(7));
    }

    #[test]
    fn a_third_replica_follows_a_message_renumbered_below_uidnext() {
        // A and B renumbered message 3 to 10 (B's UIDNEXT had passed it); C still holds it
        // at 3. C meets A: the move tombstone wins at 3, the copy at 10 stays.
        let c = side(4, vec![(3, msg(5, 1, &[]))], vec![]);
        let mut a = side(11, vec![(10, msg(5, 1, &[]))], vec![]);
        push_tomb(
            &mut a.expunged,
            3,
            Tombstone::moved(Digest([5; 32]), st(1, 5)),
        );
        let out = merge_mailbox(&c, &a);
        assert_eq!(out.messages.keys().copied().collect::<Vec<_>>(), vec![10]);
        assert_eq!(out.stats.renumbered, 0);
        assert_eq!(out.messages[&10].digest, Digest([5; 32]));
    }

    /// Finding 14 of docs/RELIABILITY.md (seed 120772): p0 moved a message from UID 5 to 7;
    /// a journal brought p2 the move tombstone at 5 without the copy at 7, and p0 was then
    /// removed. A move tombstone alone must not take the copy the others hold at 5: the move
    /// is made again (above both UIDNEXTs, never at 5 under p2's UIDNEXT), in either order.
    #[test]
    fn a_move_tombstone_without_its_destination_takes_no_mail() {
        let p1 = side(6, vec![(5, msg(5, 1, &[("\\Seen", true, 2)]))], vec![]);
        let mut p2 = side(8, vec![], vec![]);
        push_tomb(
            &mut p2.expunged,
            5,
            Tombstone::moved(Digest([5; 32]), st(1, 5)),
        );
        for out in [merge_mailbox(&p1, &p2), merge_mailbox(&p2, &p1)] {
            assert_eq!(out.messages.keys().copied().collect::<Vec<_>>(), vec![8]);
            assert_eq!(out.messages[&8].identity(), p1.messages[&5].identity());
            assert_eq!(out.stats.moves_redone, 1);
            assert_eq!(out.stats.renumbered, 1);
            assert_eq!(
                out.expunged[&5],
                vec![Tombstone::moved(Digest([5; 32]), st(1, 5))]
            );
            assert_eq!(out.record.map(|r| r.uidnext), Some(9));
        }
        // With the destination in the merge the message stays there, moved once only.
        let mut p0 = p2.clone();
        p0.messages.insert(7, msg(5, 1, &[]));
        let out = merge_mailbox(&p1, &p0);
        assert_eq!(out.messages.keys().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!((out.stats.moves_redone, out.stats.renumbered), (0, 0));
        assert!(
            out.messages[&7]
                .flags
                .live()
                .any(|f| f.as_str() == "\\Seen"),
            "the copy's flags merge into the destination"
        );
        // A writer's expunge at that UID still wins.
        let mut w = side(8, vec![], vec![]);
        push_tomb(
            &mut w.expunged,
            5,
            Tombstone {
                digest: Digest([5; 32]),
                stamp: st(3, 5),
                origin: Some(st(9, 9)),
            },
        );
        assert!(merge_mailbox(&p1, &w).messages.is_empty());
    }

    /// Found by the simulation (seed 80641, finding 13 of docs/RELIABILITY.md): a mailbox
    /// the other side knows merged into one a writer deleted, read over two rounds (its
    /// record told before the peer took a message at UID 3, its messages listed after). The
    /// outcome a session falls back on when the messages cannot move (`Forward::survive`)
    /// kept UIDNEXT 3, so the store refused the whole apply ("message UID 3 is not in 1..3").
    #[test]
    fn a_surviving_merged_mailbox_keeps_every_uid_below_uidnext() {
        let a = side(
            3,
            vec![
                (1, msg(5, 1, &[])),
                (2, msg(6, 2, &[])),
                (3, msg(7, 3, &[])),
            ],
            vec![],
        );
        let b = MailboxSide {
            tombstone: Some(MailboxTombstone {
                guid: MailboxGuid([1; 16]),
                name: "Box".into(),
                stamp: st(50, 2),
                merged_into: Some(MailboxGuid([2; 16])),
            }),
            ..Default::default()
        };
        for out in [merge_mailbox(&a, &b), merge_mailbox(&b, &a)] {
            let survive = &out.forward.as_ref().expect("a forward").survive;
            assert_eq!(survive.messages.len(), 3);
            assert_eq!(survive.record.as_ref().map(|r| r.uidnext), Some(4));
        }
        // Without a merge, the mailbox that survives its delete is mended alike.
        let plain = MailboxSide {
            tombstone: Some(MailboxTombstone {
                merged_into: None,
                stamp: st(0, 2),
                ..b.tombstone.clone().expect("tombstone")
            }),
            ..Default::default()
        };
        let out = merge_mailbox(&a, &plain);
        assert_eq!(out.record.as_ref().map(|r| r.uidnext), Some(4));
    }

    #[test]
    fn a_mailbox_changed_after_its_delete_survives() {
        let mut a = side(3, vec![(1, msg(5, 1, &[]))], vec![]);
        let tomb = MailboxTombstone {
            guid: MailboxGuid([1; 16]),
            name: "Box".into(),
            stamp: st(50, 2),
            merged_into: None,
        };
        let b = MailboxSide {
            tombstone: Some(tomb.clone()),
            ..Default::default()
        };
        if let Some(r) = a.record.as_mut() {
            r.last_change = st(60, 1);
        }
        let out = merge_mailbox(&a, &b);
        assert!(out.record.is_some() && out.messages.len() == 1 && out.tombstone.is_none());
        if let Some(r) = a.record.as_mut() {
            r.last_change = st(40, 1);
        }
        let out = merge_mailbox(&a, &b);
        assert_eq!((out.record, out.tombstone), (None, Some(tomb)));
    }

    fn with_uidvalidity(mut s: MailboxSide, v: u32) -> MailboxSide {
        if let Some(r) = s.record.as_mut() {
            r.uidvalidity = v;
        }
        s
    }

    #[test]
    fn more_messages_win_a_uidvalidity_conflict_and_nothing_is_lost() {
        let a = with_uidvalidity(
            side(
                3,
                vec![(1, msg(5, 1, &[("\\Seen", true, 3)])), (2, msg(6, 1, &[]))],
                vec![],
            ),
            100,
        );
        let b = with_uidvalidity(
            side(2, vec![(1, msg(6, 1, &[("\\Flagged", true, 3)]))], vec![]),
            200,
        );
        let out = merge_mailbox(&a, &b);
        assert_eq!(out, merge_mailbox(&b, &a));
        assert!(out.reset);
        assert_eq!(
            out.record.as_ref().map(|r| (r.uidvalidity, r.uidnext)),
            Some((100, 3)),
            "A holds two messages, B one: A's UIDVALIDITY and UIDs stay"
        );
        assert_eq!(out.messages[&1].digest, Digest([5; 32]));
        assert_eq!(out.messages[&2].digest, Digest([6; 32]));
        assert!(
            out.messages[&2].flags.is_set("\\Flagged"),
            "B's copy matched by digest"
        );
        assert_eq!(out.messages.len(), 2);
    }

    #[test]
    fn equal_counts_leave_a_uidvalidity_conflict_to_the_larger_value() {
        let a = with_uidvalidity(
            side(3, vec![(1, msg(5, 1, &[])), (2, msg(6, 1, &[]))], vec![]),
            100,
        );
        let b = with_uidvalidity(
            side(
                2,
                vec![
                    (1, msg(6, 1, &[("\\Flagged", true, 3)])),
                    (2, msg(7, 1, &[])),
                ],
                vec![],
            ),
            200,
        );
        let out = merge_mailbox(&a, &b);
        assert_eq!(out, merge_mailbox(&b, &a));
        assert_eq!(
            out.record.as_ref().map(|r| (r.uidvalidity, r.uidnext)),
            Some((200, 4))
        );
        assert_eq!(out.messages[&1].digest, Digest([6; 32]));
        assert!(out.messages[&1].flags.is_set("\\Flagged"));
        assert_eq!(out.messages[&2].digest, Digest([7; 32]));
        assert_eq!(
            out.messages[&3].digest,
            Digest([5; 32]),
            "A's other message is new mail"
        );
    }

    #[test]
    fn an_empty_mailbox_never_imposes_its_uidvalidity() {
        // A fresh replica (or a user logging in on it early) made the mailbox empty, later
        // and so with a larger UIDVALIDITY; even a UIDNEXT it raised does not count.
        let full = with_uidvalidity(
            side(3, vec![(1, msg(5, 1, &[])), (2, msg(6, 1, &[]))], vec![]),
            100,
        );
        let empty = with_uidvalidity(side(9, vec![], vec![(4, 7, 2)]), 4_000_000);
        let out = merge_mailbox(&full, &empty);
        assert_eq!(out, merge_mailbox(&empty, &full));
        assert_eq!(
            out.record.as_ref().map(|r| (r.uidvalidity, r.uidnext)),
            Some((100, 9))
        );
        assert_eq!(out.messages, full.messages, "the full side's UIDs stay");
        let changes = crate::model::changes_for("u", &full, &out, |_| None).0;
        assert!(
            changes
                .iter()
                .all(|c| matches!(c, crate::model::Change::Mailbox { .. })),
            "the full side only raises its UIDNEXT: {changes:?}"
        );
    }

    #[test]
    fn same_name_other_guid_merges_into_the_winner() {
        let mut w = merge_mailbox(
            &side(3, vec![(1, msg(1, 1, &[])), (2, msg(2, 1, &[]))], vec![]),
            &MailboxSide::default(),
        );
        let mut l = merge_mailbox(
            &side(2, vec![(1, msg(3, 1, &[]))], vec![]),
            &MailboxSide::default(),
        );
        merge_into(&mut w, &mut l, MailboxGuid([0; 16]));
        assert_eq!(w.messages.len(), 3);
        assert_eq!(w.messages[&3].digest, Digest([3; 32]));
        assert!(l.record.is_none());
        let tomb = l.tombstone.expect("tombstoned");
        assert_eq!(tomb.merged_into, Some(MailboxGuid([1; 16])));

        // A replica that still holds the loser, with a message the merging pair never saw
        // (appended before the merge's stamp): the message moves into the winner, and one
        // the winner holds already (same identity) is not copied twice.
        let old = side(
            3,
            vec![(1, msg(3, 1, &[("\\Seen", true, 4)])), (2, msg(4, 1, &[]))],
            vec![],
        );
        let out = merge_mailbox(
            &old,
            &MailboxSide {
                tombstone: Some(tomb),
                ..Default::default()
            },
        );
        assert!(out.record.is_none() && out.messages.is_empty());
        let forward = out.forward.expect("forwarded");
        assert_eq!(forward.into, MailboxGuid([1; 16]));
        assert_eq!(
            absorb(&mut w, forward.messages, &forward.kills),
            1,
            "only the unseen message moves"
        );
        assert_eq!(w.messages.len(), 4);
        assert!(
            w.messages[&3].flags.is_set("\\Seen"),
            "flags merge into the copy held"
        );
        assert_eq!(w.messages[&4].digest, Digest([4; 32]));
    }

    fn arb_side() -> impl Strategy<Value = MailboxSide> {
        (
            1u32..12,
            prop::collection::btree_map(
                1u32..10,
                (
                    0u8..4,
                    0u64..5,
                    prop::collection::vec((0usize..2, any::<bool>(), 0u64..6), 0..2),
                ),
                0..6,
            ),
            prop::collection::vec((1u32..10, 0u8..4, 0u64..5), 0..3),
        )
            .prop_map(|(next, msgs, tombs)| {
                let flags = ["\\Seen", "$X"];
                let messages: Vec<(u32, MessageRecord)> = msgs
                    .into_iter()
                    .map(|(uid, (d, app, fl))| {
                        let fl: Vec<(&str, bool, u64)> = fl
                            .into_iter()
                            .map(|(f, on, ms)| (flags[f], on, ms))
                            .collect();
                        (uid, msg(d, app, &fl))
                    })
                    .collect();
                let top = messages.iter().map(|(u, _)| u + 1).max().unwrap_or(1);
                side(next.max(top), messages, tombs)
            })
    }

    /// A side with a UIDVALIDITY of 1 or 2, so that conflicts happen.
    fn arb_side_v() -> impl Strategy<Value = MailboxSide> {
        (arb_side(), 1u32..3).prop_map(|(s, v)| with_uidvalidity(s, v))
    }

    proptest! {
        #[test]
        fn merge_is_commutative_across_uidvalidities(a in arb_side_v(), b in arb_side_v()) {
            prop_assert_eq!(merge_mailbox(&a, &b), merge_mailbox(&b, &a));
        }

        #[test]
        fn uidvalidity_goes_to_more_messages_then_the_larger_value(a in arb_side_v(), b in arb_side_v()) {
            let out = merge_mailbox(&a, &b);
            let key = |s: &MailboxSide| s.record.as_ref().map(|r| (s.messages.len(), r.uidvalidity));
            let v = out.record.as_ref().map(|r| r.uidvalidity);
            prop_assert_eq!(v, key(&a).max(key(&b)).map(|k| k.1));
            // Nothing held on either side is lost in a reset (no tombstone decides there).
            if out.reset {
                prop_assert_eq!(out.messages.len(), {
                    let mut d: Vec<Digest> = a.messages.values().chain(b.messages.values()).map(|m| m.digest).collect();
                    let (w, l) = if key(&a) > key(&b) { (&a, &b) } else { (&b, &a) };
                    let mut matched = 0;
                    let mut pool: Vec<Digest> = w.messages.values().map(|m| m.digest).collect();
                    for m in l.messages.values() {
                        if let Some(i) = pool.iter().position(|x| *x == m.digest) {
                            pool.remove(i);
                            matched += 1;
                        }
                    }
                    d.truncate(d.len() - matched);
                    d.len()
                });
            }
        }

        /// The IMAP promise: a side whose UIDVALIDITY stays never gets a message below the
        /// UIDNEXT its clients may have seen, unless it held that very message there.
        #[test]
        fn no_message_appears_below_a_sides_uidnext(a in arb_side_v(), b in arb_side_v()) {
            let out = merge_mailbox(&a, &b);
            let Some(r) = &out.record else { return Ok(()) };
            for s in [&a, &b] {
                let Some(sr) = &s.record else { continue };
                if sr.uidvalidity != r.uidvalidity {
                    continue;
                }
                prop_assert!(r.uidnext >= sr.uidnext);
                for (uid, m) in out.messages.range(..sr.uidnext) {
                    prop_assert!(
                        s.messages.get(uid).is_some_and(|x| x.digest == m.digest),
                        "{:?} appears at UID {} below UIDNEXT {}", m.digest, uid, sr.uidnext
                    );
                }
            }
        }

        #[test]
        fn merge_is_commutative(a in arb_side(), b in arb_side()) {
            prop_assert_eq!(merge_mailbox(&a, &b), merge_mailbox(&b, &a));
        }

        #[test]
        fn no_mail_is_lost(a in arb_side(), b in arb_side()) {
            let out = merge_mailbox(&a, &b);
            let kills: Vec<(Digest, Stamp)> = a.expunged.values().chain(b.expunged.values()).flatten()
                .filter_map(|t| t.origin.map(|o| (t.digest, o))).collect();
            for s in [&a, &b] {
                let other = if std::ptr::eq(s, &a) { &b } else { &a };
                for (uid, m) in &s.messages {
                    // Only a writer's expunge takes a message at its UID: a move tombstone
                    // alone never does (finding 14).
                    let expunged_there = other.expunged.get(uid).is_some_and(|ts| ts.iter().any(|t| t.digest == m.digest && t.origin.is_some()));
                    let killed = kills.contains(&m.identity());
                    if !expunged_there && !killed {
                        // Live once, at this UID or above it (a clash only moves mail up). The
                        // same digest at the same UID on both sides is one message: the earlier
                        // append stamp names it.
                        let id = match other.messages.get(uid) {
                            Some(o) if o.digest == m.digest => (m.digest, m.appended.min(o.appended)),
                            _ => m.identity(),
                        };
                        if kills.contains(&id) {
                            continue;
                        }
                        let at: Vec<u32> = out.messages.iter().filter(|(_, x)| x.identity() == id).map(|(u, _)| *u).collect();
                        prop_assert!(at.len() == 1 && at[0] >= *uid, "{:?} from UID {} ends at {:?}", m.digest, uid, at);
                    }
                }
            }
            // Nothing a writer expunged stays live; no identity is live twice.
            let live: Vec<(Digest, Stamp)> = out.messages.values().map(MessageRecord::identity).collect();
            prop_assert!(live.iter().all(|i| !kills.contains(i)));
            let unique: std::collections::BTreeSet<_> = live.iter().collect();
            prop_assert_eq!(unique.len(), live.len());
            // Every final UID is below UIDNEXT, and no UID is both live and tombstoned.
            let next = out.record.as_ref().map_or(0, |r| r.uidnext);
            prop_assert!(out.messages.keys().all(|u| *u < next));
            prop_assert!(out.expunged.keys().all(|u| !out.messages.contains_key(u)));
        }

        #[test]
        fn merging_the_outcome_again_changes_nothing(a in arb_side(), b in arb_side()) {
            let out = merge_mailbox(&a, &b);
            let side = MailboxSide { record: out.record.clone(), tombstone: out.tombstone.clone(), messages: out.messages.clone(), expunged: out.expunged.clone() };
            let again = merge_mailbox(&side, &side);
            prop_assert_eq!(again.messages, out.messages);
            prop_assert_eq!(again.record, out.record);
        }
    }

    /// A GUID made at `secs`.`nanos` in Dovecot's layout, unique by `n`.
    fn made_at(secs: u32, nanos: u32, n: u8) -> MailboxGuid {
        MailboxGuid::from_time(secs, nanos, [n; 8])
    }

    #[test]
    fn the_mailbox_made_first_wins_a_name_whatever_the_guids_bytes() {
        // A's Sent, made in 2023; B's, made empty by Dovecot at a login in 2026, with larger
        // bytes (the old rule, "larger GUID wins", kept B's and renumbered A's mail).
        let old = made_at(1_700_000_000, 5, 0x00);
        let new = made_at(1_790_000_000, 999_999_999, 0xff);
        assert!(new > old, "the old rule would pick the new one");
        assert_eq!(same_name_winner("u", [old, new]), Some(old));
        assert_eq!(same_name_winner("u", [new, old]), Some(old));
        // In the same second, by the nanoseconds; at the same instant, the larger GUID.
        let a = made_at(1_700_000_000, 1, 0xff);
        let b = made_at(1_700_000_000, 2, 0x00);
        assert_eq!(same_name_winner("u", [a, b]), Some(a));
        let c = made_at(1_700_000_000, 1, 0x01);
        assert_eq!(same_name_winner("u", [a, c]), Some(a));
        // A GUID with no creation time (an older merkmail's random one) counts as older than
        // any with one; among such GUIDs the larger wins, as before.
        let legacy = MailboxGuid([0xf0; 16]);
        let legacy2 = MailboxGuid([0xf1; 16]);
        assert_eq!(legacy.created(), None);
        assert_eq!(same_name_winner("u", [old, legacy]), Some(legacy));
        assert_eq!(same_name_winner("u", [legacy, legacy2]), Some(legacy2));
        // The user's INBOX GUID before all.
        let inbox = crate::model::inbox_guid("u");
        assert_eq!(same_name_winner("u", [legacy2, inbox, old]), Some(inbox));
        assert_eq!(same_name_winner("u", []), None);
    }

    fn arb_guid() -> impl Strategy<Value = MailboxGuid> {
        prop_oneof![
            // Dovecot's layout, a few seconds apart so that ties happen.
            (1_700_000_000u32..1_700_000_004, 0u32..3, 0u8..4)
                .prop_map(|(s, n, u)| made_at(s, n, u)),
            any::<[u8; 16]>().prop_map(MailboxGuid),
            Just(crate::model::inbox_guid("u")),
        ]
    }

    proptest! {
        /// The winner of a name does not depend on the order in which mailboxes are met, nor
        /// on how they are grouped (three replicas meeting pairwise pick the winner a session
        /// seeing all three would), and it is one of them: the rank is a total order on the
        /// GUIDs, so same-name merges form no cycle.
        #[test]
        fn the_same_name_winner_is_a_total_order(a in arb_guid(), b in arb_guid(), c in arb_guid()) {
            let all = same_name_winner("u", [a, b, c]);
            prop_assert_eq!(all, same_name_winner("u", [c, a, b]));
            let ab = same_name_winner("u", [a, b]).expect("two");
            prop_assert_eq!(same_name_winner("u", [ab, c]), all);
            let bc = same_name_winner("u", [b, c]).expect("two");
            prop_assert_eq!(same_name_winner("u", [a, bc]), all);
            prop_assert!(all == Some(a) || all == Some(b) || all == Some(c));
            if a != b {
                prop_assert_ne!(same_name_rank("u", a), same_name_rank("u", b));
            }
            // The older of two GUIDs that carry a time wins (unless one is INBOX's).
            let inbox = crate::model::inbox_guid("u");
            if let (Some(ta), Some(tb), false) = (a.created(), b.created(), a == inbox || b == inbox) {
                if ta < tb {
                    prop_assert_eq!(ab, a);
                }
            }
        }
    }
}
