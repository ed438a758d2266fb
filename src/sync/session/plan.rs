//! The plan: once both sides of every differing mailbox are known, merge them with the clash
//! rules (one name under two GUIDs, mailboxes merged into others), and turn each outcome into
//! this side's change groups and the peer's wire groups, with the bodies each side lacks.

use super::{Key, Phase, Session, SessionError, Work};
use crate::merkle::{NodeHash, NodeKey};
use crate::model::{
    absorb, merge_into, merge_mailbox, Digest, MailboxGuid, MailboxOutcome, MailboxRecord,
    MailboxSide, MessageRecord,
};
use crate::model::{changes_for, same_name_winner, Change, ChangeCounts, ChangeGroup};
use crate::sync::responder::normalize;
use crate::sync::wire::{group_stamp, ApplyGroup, GuidRef, WireChange, BODY_BATCH_BYTES};
use std::collections::{BTreeMap, BTreeSet};

/// One mailbox as the plan sees it: our node hash (what our group must expect), our side and
/// the peer's.
struct Pair {
    hash: NodeHash,
    local: MailboxSide,
    remote: MailboxSide,
}

type Pairs = BTreeMap<Key, Pair>;
type Outcomes = BTreeMap<Key, MailboxOutcome>;

/// A UID where the peer holds this message (the same but for flags and append stamp).
fn moved(remote: &MailboxSide, record: &MessageRecord) -> Option<u32> {
    remote.messages.iter().find_map(|(uid, m)| {
        (m.digest == record.digest
            && m.md5 == record.md5
            && m.size == record.size
            && m.internal_date == record.internal_date)
            .then_some(*uid)
    })
}

/// A record change as the peer needs it: UIDNEXT alone when the record differs from the one
/// it holds in nothing else.
fn mailbox_change(record: MailboxRecord, remote: &MailboxSide) -> WireChange {
    match &remote.record {
        Some(r)
            if MailboxRecord {
                uidnext: record.uidnext,
                last_change: record.last_change,
                ..r.clone()
            } == record =>
        {
            WireChange::Next {
                uidnext: record.uidnext,
                last_change: Some(record.last_change),
            }
        }
        _ => WireChange::Mailbox(record),
    }
}

/// One change as the peer needs it, with a delta where it already holds the rest: flags
/// alone for a message whose digest it holds at that UID, a move for one it holds at another
/// UID, an expunge without the digest of the message it holds there.
fn wire_change(change: Change, remote: &MailboxSide) -> WireChange {
    match change {
        Change::Mailbox { record, .. } => mailbox_change(record, remote),
        Change::Message {
            uid,
            record,
            body: None,
            ..
        } if remote
            .messages
            .get(&uid)
            .is_some_and(|m| m.digest == record.digest) =>
        {
            WireChange::Flags {
                uid,
                flags: record.flags,
            }
        }
        Change::Message {
            uid,
            record,
            body: None,
            ..
        } if moved(remote, &record).is_some() => WireChange::Move {
            uid,
            from: moved(remote, &record).unwrap_or_default(),
            flags: record.flags,
            appended: record.appended,
        },
        Change::Expunge { uid, tombstone, .. } => WireChange::Expunge {
            uid,
            digest: (remote.messages.get(&uid).map(|m| m.digest) != Some(tombstone.digest))
                .then_some(tombstone.digest),
            stamp: tombstone.stamp,
            origin: tombstone.origin,
        },
        other => WireChange::verbatim(other),
    }
}

/// A change group for the peer, with deltas where the peer already holds the rest.
fn to_wire(group: ChangeGroup, remote: &MailboxSide) -> ApplyGroup {
    let mut changes: Vec<WireChange> = group
        .changes
        .into_iter()
        .map(|c| wire_change(c, remote))
        .collect();
    // A `Next` whose stamp is the largest of the group's changes leaves it out.
    let implied = group_stamp(&changes);
    for c in &mut changes {
        if let WireChange::Next { last_change, .. } = c {
            if *last_change == implied {
                *last_change = None;
            }
        }
    }
    ApplyGroup {
        user: group.user,
        guid: GuidRef::Full(group.guid),
        expect: group.expect,
        changes,
    }
}

/// Same name under two GUIDs, both known whole by now: the winner is
/// `model::same_name_winner`'s (the mailbox made first) and the others' messages merge into it.
fn merge_same_names(users: &BTreeSet<String>, outcomes: &mut Outcomes) {
    for user in users {
        let mut names: BTreeMap<String, Vec<MailboxGuid>> = BTreeMap::new();
        for ((u, guid), o) in outcomes.iter() {
            if let (true, Some(r)) = (u == user, &o.record) {
                names.entry(r.name.clone()).or_default().push(*guid);
            }
        }
        for guids in names.into_values().filter(|g| g.len() > 1) {
            let Some(winner) = same_name_winner(user, guids.iter().copied()) else {
                continue;
            };
            for loser in guids.into_iter().filter(|g| *g != winner) {
                let mut lo = outcomes.remove(&(user.clone(), loser)).unwrap_or_default();
                if let Some(wo) = outcomes.get_mut(&(user.clone(), winner)) {
                    tracing::info!(user = %user, from = %loser, into = %winner, messages = lo.messages.len(), "two mailboxes share a name: merging into the one made first");
                    merge_into(wo, &mut lo, loser);
                }
                outcomes.insert((user.clone(), loser), lo);
            }
        }
    }
}

impl Session<'_> {
    /// [`Session::finish_chunk`], then the next chunk's first questions (if there is one).
    fn finish_chunk_then_advance(&mut self) -> Result<(), SessionError> {
        self.finish_chunk()?;
        if self.phase == Phase::Done {
            return Ok(());
        }
        self.advance()
    }

    /// Merges every differing mailbox of the chunk, resolves name clashes, and prepares both sides' changes.
    pub(super) fn plan(&mut self) -> Result<(), SessionError> {
        if self.work.is_empty() {
            // Roots differed but no mailbox does: only possible if the peer changed meanwhile.
            self.phase = Phase::Done;
            return Ok(());
        }
        // The users not in this chunk wait for the next one (a mailbox the peer never
        // described is planned as before: there is nothing to ask for it).
        let admitted = &self.admitted;
        let (chunk, later): (BTreeMap<Key, Work>, BTreeMap<Key, Work>) =
            std::mem::take(&mut self.work)
                .into_iter()
                .partition(|(k, w)| admitted.contains(&k.0) || !w.remote_known);
        self.work = chunk;
        self.later.extend(later);
        if self.work.is_empty() {
            return self.finish_chunk_then_advance();
        }
        let mut sides = self.pairs()?;
        let mut outcomes: Outcomes = sides
            .iter()
            .map(|(k, p)| (k.clone(), merge_mailbox(&p.local, &p.remote)))
            .collect();
        let users: BTreeSet<String> = self.work.keys().map(|(u, _)| u.clone()).collect();
        if self.ask_losers_whole(&users, &mut sides, &mut outcomes)? {
            // Ask again; the next call to `advance` requests the whole mailboxes.
            return self.advance();
        }
        merge_same_names(&users, &mut outcomes);
        self.follow_forwards(&mut sides, &mut outcomes)?;
        let held: usize = sides
            .values()
            .map(|p| p.local.messages.len() + p.remote.messages.len())
            .sum();
        self.report.largest_plan_messages = self.report.largest_plan_messages.max(held as u64);
        self.plan_changes(&sides, &outcomes);
        drop(sides);
        drop(outcomes);
        for w in self.work.values_mut() {
            // The peer's side is in the groups now.
            w.remote_side = None;
        }
        self.inline_pushed()?;
        self.deletions_last();
        if self.dry_run {
            self.report.equal_after = false;
            return self.finish_chunk_then_advance();
        }
        self.phase = Phase::Transfer;
        self.advance()
    }

    /// Both sides of every mailbox the session found different: ours read at what was
    /// compared (the whole mailbox, or the differing UIDs, ranges and tail).
    fn pairs(&self) -> Result<Pairs, SessionError> {
        let mut pairs = Pairs::new();
        for (key, w) in &self.work {
            let node = self.local.node(&NodeKey::Mailbox {
                user: key.0.clone(),
                guid: key.1,
            })?;
            let hash = node.map_or(NodeHash::EMPTY, |v| v.hash);
            let local = if w.full {
                self.local.mailbox_side(&key.0, key.1, None)?
            } else {
                let ranges = normalize(
                    w.uids
                        .iter()
                        .map(|u| (*u, *u))
                        .chain(w.ranges.iter().copied())
                        .chain(w.tail.then_some((w.limit, u32::MAX)))
                        .collect(),
                );
                self.local.mailbox_side_in(&key.0, key.1, &ranges)?
            };
            let mut remote = w.remote_side.clone().unwrap_or_default();
            remote.record = w.remote_record.clone();
            remote.tombstone = w.remote_tombstone.clone();
            pairs.insert(
                key.clone(),
                Pair {
                    hash,
                    local,
                    remote,
                },
            );
        }
        Ok(pairs)
    }

    /// The GUIDs of each of `user`'s mailbox names, among the outcomes and the mailboxes of
    /// ours that are not in the plan.
    fn names_of(&self, user: &str, outcomes: &Outcomes) -> BTreeMap<String, BTreeSet<MailboxGuid>> {
        let mut names: BTreeMap<String, BTreeSet<MailboxGuid>> = BTreeMap::new();
        if let Ok(list) = self.local.mailbox_names(user) {
            for (name, guid) in list {
                if !outcomes.contains_key(&(user.to_string(), guid)) {
                    names.entry(name).or_default().insert(guid);
                }
            }
        }
        for ((u, guid), o) in outcomes {
            if let (true, Some(r)) = (u == user, &o.record) {
                names.entry(r.name.clone()).or_default().insert(*guid);
            }
        }
        names
    }

    /// Same name under two GUIDs: `model::same_name_winner` picks the winner (added to the
    /// plan if it is equal on both sides); the loser must be known whole. Returns whether some loser is not, after
    /// marking it to be asked for whole.
    fn ask_losers_whole(
        &mut self,
        users: &BTreeSet<String>,
        sides: &mut Pairs,
        outcomes: &mut Outcomes,
    ) -> Result<bool, SessionError> {
        let mut need_full = Vec::new();
        for user in users {
            let names = self.names_of(user, outcomes);
            for guids in names.values().filter(|g| g.len() > 1) {
                let Some(winner) = same_name_winner(user, guids.iter().copied()) else {
                    continue;
                };
                for loser in guids.iter().filter(|g| **g != winner) {
                    let k = (user.clone(), *loser);
                    match self.work.get(&k) {
                        Some(w) if w.full => {}
                        _ => need_full.push(k),
                    }
                }
                let wk = (user.clone(), winner);
                self.load_equal(&wk, sides, outcomes)?;
            }
        }
        if need_full.is_empty() {
            return Ok(false);
        }
        for k in need_full {
            let w = self.work.entry(k).or_default();
            w.full = true;
            w.records_asked = false;
            w.remote_side = None;
        }
        Ok(true)
    }

    /// A mailbox one side holds that the other knows merged into another: its messages move
    /// into the winner; when neither side holds the winner, the mailbox survives.
    fn follow_forwards(
        &mut self,
        sides: &mut Pairs,
        outcomes: &mut Outcomes,
    ) -> Result<(), SessionError> {
        let forwards: Vec<Key> = outcomes
            .iter()
            .filter(|(_, o)| o.forward.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in forwards {
            let Some(forward) = outcomes.get_mut(&key).and_then(|o| o.forward.take()) else {
                continue;
            };
            let wk = self.merge_target(&key.0, forward.into, sides, outcomes)?;
            if let Some(wo) = outcomes.get_mut(&wk).filter(|o| o.record.is_some()) {
                tracing::info!(user = %key.0, from = %key.1, into = %wk.1, messages = forward.messages.len(), "moving a merged mailbox's messages into the mailbox it merged into");
                absorb(wo, forward.messages, &forward.kills);
                continue;
            }
            // The mailbox it merged into is gone: a writer deleted it (or it is unknown here).
            // The delete wins over this one too unless it changed after the delete, as for any
            // mailbox (DESIGN §5); else it survives with its messages.
            let end = match outcomes.get(&wk) {
                Some(o) => o.tombstone.clone(),
                None => {
                    self.local
                        .mailbox_side(&wk.0, wk.1, Some(&BTreeSet::new()))?
                        .tombstone
                }
            };
            // A chain that ends at no writer's delete but at another merge survives too: a
            // cycle of merges (g1 into g2 on one replica, g2 into g1 on another: replicas that
            // ranked a name by different rules, an older merkmail's and this one) or a chain
            // longer than 16 steps. No one deleted the mail; the same-name rule merges the
            // mailboxes again in a later session.
            let survives = forward.survive.record.as_ref().is_some_and(|r| {
                end.as_ref()
                    .is_none_or(|t| t.merged_into.is_some() || r.last_change > t.stamp)
            });
            if survives {
                outcomes.insert(key, *forward.survive);
            } else if let Some(o) = outcomes.get_mut(&key) {
                // The delete wins: the messages go with it, explicitly (`reset`).
                o.reset = true;
            }
        }
        Ok(())
    }

    /// Where a mailbox merged into `into` ends: `into`, or, when that was merged into another
    /// in turn, the end of the chain (at most 16 steps: a longer one is left to survive).
    fn merge_target(
        &mut self,
        user: &str,
        into: MailboxGuid,
        sides: &mut Pairs,
        outcomes: &mut Outcomes,
    ) -> Result<Key, SessionError> {
        let mut key = (user.to_string(), into);
        for _ in 0..16 {
            self.load_equal(&key, sides, outcomes)?;
            let next = match outcomes.get(&key) {
                Some(o) if o.record.is_some() => return Ok(key),
                Some(o) => o.tombstone.as_ref().and_then(|t| t.merged_into),
                None => self
                    .local
                    .mailbox_side(user, key.1, Some(&BTreeSet::new()))?
                    .tombstone
                    .and_then(|t| t.merged_into),
            };
            match next {
                Some(guid) if guid != key.1 => key.1 = guid,
                _ => return Ok(key),
            }
        }
        Ok(key)
    }

    /// Adds to the plan a mailbox the session did not find different (so both sides hold what
    /// this side holds), when this side holds it and it is not in the plan yet.
    fn load_equal(
        &mut self,
        key: &Key,
        sides: &mut Pairs,
        outcomes: &mut Outcomes,
    ) -> Result<(), SessionError> {
        if outcomes.contains_key(key) {
            return Ok(());
        }
        let (user, guid) = (&key.0, key.1);
        let side = self
            .local
            .mailbox_side(user, guid, Some(&BTreeSet::new()))?;
        if side.record.is_none() {
            return Ok(());
        }
        let hash = self
            .local
            .node(&NodeKey::Mailbox {
                user: user.clone(),
                guid,
            })?
            .map_or(NodeHash::EMPTY, |v| v.hash);
        outcomes.insert(key.clone(), merge_mailbox(&side, &side));
        sides.insert(
            key.clone(),
            Pair {
                hash,
                local: side.clone(),
                remote: side,
            },
        );
        let w = self.work.entry(key.clone()).or_default();
        w.remote_known = true;
        w.remote_node = Some(hash.truncated(self.window));
        Ok(())
    }

    /// Every outcome's change groups for both sides, and the count of mailboxes changed.
    fn plan_changes(&mut self, sides: &Pairs, outcomes: &Outcomes) {
        // What the peer holds anywhere in what we fetched: such a body needs no shipping (the
        // peer frees bodies only at the end of a transaction, and deletions go last).
        let remote_all: BTreeSet<Digest> = sides
            .values()
            .flat_map(|p| p.remote.messages.values().map(|m| m.digest))
            .collect();
        let mut counts_changed = 0;
        for (key, outcome) in outcomes {
            let Some(pair) = sides.get(key) else {
                continue;
            };
            if self.plan_mailbox(key, outcome, pair, &remote_all) {
                counts_changed += 1;
            }
        }
        self.report.mailboxes_changed += counts_changed;
    }

    /// One mailbox's change groups for both sides, and the bodies each lacks; returns whether
    /// either side's mailbox record changes.
    fn plan_mailbox(
        &mut self,
        key: &Key,
        outcome: &MailboxOutcome,
        pair: &Pair,
        remote_all: &BTreeSet<Digest>,
    ) -> bool {
        let w = self.window;
        let remote_expect = self
            .work
            .get(key)
            .and_then(|w| w.remote_node)
            .unwrap_or(NodeHash::EMPTY.truncated(w));
        let (local_changes, lc) = self.local_changes(&key.0, &pair.local, outcome);
        let mut push = Vec::new();
        let (remote_changes, rc) = changes_for(&key.0, &pair.remote, outcome, |m| {
            if !remote_all.contains(&m.digest) {
                push.push((m.digest, m.size));
            }
            None
        });
        self.wait_for(&push);
        self.push.extend(push);
        self.count(&lc, &rc, outcome);
        // Our UIDVALIDITY changes (the peer's side won the conflict): only on a state of the
        // peer's that its own group's guard confirms, so the peer gets a group even when it
        // has nothing to change (`take_applied`, finding 16 of docs/RELIABILITY.md).
        let confirm = !local_changes.is_empty()
            && pair.remote.record.is_some()
            && matches!((&pair.local.record, &outcome.record),
                (Some(l), Some(o)) if l.uidvalidity != o.uidvalidity);
        if confirm {
            self.confirm.insert(key.clone());
        }
        if !local_changes.is_empty() {
            self.local_groups.push(ChangeGroup {
                user: key.0.clone(),
                guid: key.1,
                window: w,
                expect: pair.hash.truncated(w),
                changes: local_changes,
            });
        }
        if !remote_changes.is_empty() || confirm {
            let mut group = to_wire(
                ChangeGroup {
                    user: key.0.clone(),
                    guid: key.1,
                    window: w,
                    expect: remote_expect,
                    changes: remote_changes,
                },
                &pair.remote,
            );
            if pair.remote.record.is_some() {
                group.guid = self.guid_ref(key);
            }
            self.remote_groups.push(group);
        }
        lc.mailbox_changed || rc.mailbox_changed
    }

    /// The changes that take our side to the outcome; the bodies they need that are held
    /// nowhere here are queued to be fetched.
    fn local_changes(
        &mut self,
        user: &str,
        local: &MailboxSide,
        outcome: &MailboxOutcome,
    ) -> (Vec<Change>, ChangeCounts) {
        let local_digests: BTreeSet<Digest> = local.messages.values().map(|m| m.digest).collect();
        let (replica, prefetched) = (self.local, &self.prefetched);
        let mut fetch = Vec::new();
        let held_elsewhere = &mut self.held_elsewhere;
        let planned = changes_for(user, local, outcome, |m| {
            // A body held anywhere here is enough: the store frees bodies only at the end
            // of a transaction, so one moving between mailboxes is never lost meanwhile
            // (`apply_local` pins it when the groups take more than one transaction).
            if !local_digests.contains(&m.digest) && !prefetched.contains(&m.digest) {
                if replica.has_body(&m.digest).unwrap_or(false) {
                    held_elsewhere.insert(m.digest);
                } else {
                    fetch.push((m.digest, m.size));
                }
            }
            // Bodies travel apart from the changes (staged first), in bounded batches.
            None
        });
        self.wait_for(&fetch);
        self.fetch.extend(fetch);
        planned
    }

    /// For progress: each copied message whose body must move (one entry per message).
    fn wait_for(&mut self, bodies: &[(Digest, u64)]) {
        for (d, _) in bodies {
            *self.waiting.entry(*d).or_default() += 1;
        }
    }

    /// Deletions last, so a body moving out of a deleted mailbox is still referenced when
    /// the mailbox that receives it takes its reference; a mailbox deleted as merged into
    /// another comes right after its winner's group instead (which takes the references as
    /// well), so that the two land in one transaction: a store applies a merge's two groups
    /// together or neither (`Store::apply_groups`, finding 15 of docs/RELIABILITY.md).
    fn deletions_last(&mut self) {
        let local = merge_order(&self.local_groups);
        self.local_groups = reorder(std::mem::take(&mut self.local_groups), &local);
        let remote = merge_order(&self.remote_groups);
        self.remote_groups = reorder(std::mem::take(&mut self.remote_groups), &remote);
    }

    /// When all the bodies the peer lacks fit in one batch, they travel inside the changes
    /// that need them (`WireChange::New`: MD5, digest and size follow from the body), not
    /// apart in PutBodies.
    fn inline_pushed(&mut self) -> Result<(), SessionError> {
        let total: u64 = self.push.values().sum();
        if self.push.is_empty() || total > BODY_BATCH_BYTES || self.dry_run {
            return Ok(());
        }
        let push = std::mem::take(&mut self.push);
        for g in &mut self.remote_groups {
            for c in &mut g.changes {
                let WireChange::Message {
                    uid,
                    record,
                    body: None,
                } = c
                else {
                    continue;
                };
                if !push.contains_key(&record.digest) {
                    continue;
                }
                let body = self.local.body(&record.digest)?;
                self.report.body_bytes_sent += body.len() as u64;
                *c = WireChange::New {
                    uid: *uid,
                    internal_date: record.internal_date,
                    flags: std::mem::take(&mut record.flags),
                    appended: record.appended,
                    body,
                };
            }
        }
        Ok(())
    }

    fn count(&mut self, local: &ChangeCounts, remote: &ChangeCounts, outcome: &MailboxOutcome) {
        let r = &mut self.report;
        r.copied_from_peer += local.added;
        r.copied_to_peer += remote.added;
        r.expunged += local.expunged + remote.expunged;
        r.flag_updates += local.flag_updates + remote.flag_updates;
        r.uid_clashes_renumbered += outcome.stats.uid_clashes;
        r.late_copies += outcome.stats.late_copies;
        r.moves_redone += outcome.stats.moves_redone;
    }
}

/// A change group as the apply order sees it: whose mailbox, and whether it deletes it as
/// merged into another.
pub(super) trait Grouped {
    fn user(&self) -> &str;
    /// Whether this group is for mailbox `guid`.
    fn is_for(&self, guid: &MailboxGuid) -> bool;
    /// `Some(merged_into)` for a group that deletes its mailbox (`Some(None)`: a writer's
    /// delete).
    fn deletes(&self) -> Option<Option<MailboxGuid>>;

    /// The winner of the merge this group deletes its mailbox for.
    fn merged_into(&self) -> Option<MailboxGuid> {
        self.deletes().flatten()
    }

    /// Whether this group deletes its mailbox as merged into one `winner` is for.
    fn follows(&self, winner: &impl Grouped) -> bool {
        self.user() == winner.user() && self.merged_into().is_some_and(|w| winner.is_for(&w))
    }
}

impl Grouped for ChangeGroup {
    fn user(&self) -> &str {
        &self.user
    }
    fn is_for(&self, guid: &MailboxGuid) -> bool {
        self.guid == *guid
    }
    fn deletes(&self) -> Option<Option<MailboxGuid>> {
        self.changes.iter().find_map(|c| match c {
            Change::DeleteMailbox { tombstone, .. } => Some(tombstone.merged_into),
            _ => None,
        })
    }
}

impl Grouped for ApplyGroup {
    fn user(&self) -> &str {
        &self.user
    }
    fn is_for(&self, guid: &MailboxGuid) -> bool {
        self.guid.names(guid)
    }
    fn deletes(&self) -> Option<Option<MailboxGuid>> {
        self.changes.iter().find_map(|c| match c {
            WireChange::DeleteMailbox(t) => Some(t.merged_into),
            _ => None,
        })
    }
}

/// The order to apply groups in (positions into `groups`): every group that deletes nothing
/// in its order, each followed by the groups that delete a mailbox merged into its mailbox
/// (and theirs in turn), then the other deletions.
pub(super) fn merge_order<G: Grouped>(groups: &[G]) -> Vec<usize> {
    let merged: Vec<usize> = (0..groups.len())
        .filter(|&i| groups[i].merged_into().is_some())
        .collect();
    let mut placed = vec![false; groups.len()];
    let mut order = Vec::with_capacity(groups.len());
    let starts = (0..groups.len())
        .filter(|&i| groups[i].deletes().is_none())
        .chain((0..groups.len()).filter(|&i| groups[i].deletes().is_some()));
    for start in starts {
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut placed[i], true) {
                continue;
            }
            order.push(i);
            stack.extend(
                merged
                    .iter()
                    .rev()
                    .copied()
                    .filter(|&j| !placed[j] && groups[j].follows(&groups[i])),
            );
        }
    }
    order
}

/// `groups` in `order` (a permutation of its positions).
fn reorder<G>(groups: Vec<G>, order: &[usize]) -> Vec<G> {
    let mut slots: Vec<Option<G>> = groups.into_iter().map(Some).collect();
    order
        .iter()
        .filter_map(|&i| slots.get_mut(i)?.take())
        .collect()
}

/// Whether `next` must land in the same transaction as `before` (the groups of the current
/// one): it deletes a mailbox merged into one a group there is for.
pub(super) fn bound_to<G: Grouped>(before: &[G], next: &G) -> bool {
    next.merged_into().is_some() && before.iter().any(|g| next.follows(g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MailboxTombstone, Stamp};

    fn group(user: &str, guid: u8, deletes: Option<Option<u8>>) -> ChangeGroup {
        ChangeGroup {
            user: user.into(),
            guid: MailboxGuid([guid; 16]),
            window: 0,
            expect: [0; 4],
            changes: deletes
                .map(|into| Change::DeleteMailbox {
                    user: user.into(),
                    tombstone: MailboxTombstone {
                        guid: MailboxGuid([guid; 16]),
                        name: "x".into(),
                        stamp: Stamp::ZERO,
                        merged_into: into.map(|g| MailboxGuid([g; 16])),
                    },
                })
                .into_iter()
                .collect(),
        }
    }

    /// A merged mailbox's delete follows its winner's group (and a chain of merges follows
    /// in turn), other deletes come last, and a transaction never ends between a winner and
    /// the merge's delete.
    #[test]
    fn a_merges_delete_follows_its_winner_and_other_deletes_come_last() {
        let groups = vec![
            group("u", 1, Some(None)),    // a writer's delete
            group("u", 2, Some(Some(3))), // merged into 3
            group("u", 3, None),          // the winner
            group("u", 4, Some(Some(2))), // merged into 2, which merged into 3
            group("v", 5, Some(Some(3))), // another user's: not bound to u's 3
            group("u", 6, None),
        ];
        let order = merge_order(&groups);
        assert_eq!(order, vec![2, 1, 3, 5, 0, 4]);
        let ordered = reorder(groups, &order);
        assert!(bound_to(&ordered[..1], &ordered[1]));
        assert!(bound_to(&ordered[..2], &ordered[2]));
        assert!(!bound_to(&ordered[..3], &ordered[3]));
        assert!(!bound_to(&ordered[..4], &ordered[4]));
        assert!(!bound_to(&ordered[..5], &ordered[5]));
    }
}
