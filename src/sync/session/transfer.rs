//! Transfer: the bodies each side lacks, both ways in bounded batches, then the applies —
//! this side's groups once every fetched body is staged, the peer's in Apply rounds whose
//! last answer carries its new root.

use super::plan::bound_to;
use super::{protocol, Ask, Phase, Session, SessionError, APPLY_BATCH_BYTES, LOCAL_APPLY_CHANGES};
use crate::model::{Change, ChangeGroup, Progress};
use crate::model::{CheckedBody, Digest};
use crate::sync::wire::{encode, GuidRef, Request, BODY_BATCH_BYTES};
use std::collections::BTreeMap;

/// Takes the next batch of about `BODY_BATCH_BYTES` (at least one body) off the queue.
fn next_batch(queue: &mut BTreeMap<Digest, u64>) -> Vec<Digest> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    while let Some((&d, &size)) = queue.iter().next() {
        if !batch.is_empty() && bytes + size > BODY_BATCH_BYTES {
            break;
        }
        queue.remove(&d);
        batch.push(d);
        bytes += size;
    }
    batch
}

impl Session<'_> {
    /// Queues the next batch of bodies each way. Both travel in the same rounds; the last
    /// round also carries the first Apply, so a small session pays one round for transfer
    /// and apply.
    pub(super) fn queue_transfer(&mut self) -> Result<(), SessionError> {
        let fetch = next_batch(&mut self.fetch);
        if !fetch.is_empty() {
            self.next.push((
                Ask::Bodies(fetch.clone()),
                Request::Bodies { digests: fetch },
            ));
        }
        let push = next_batch(&mut self.push);
        if !push.is_empty() {
            let mut bodies = Vec::with_capacity(push.len());
            for d in &push {
                let bytes = self.local.body(d)?;
                self.report.body_bytes_sent += bytes.len() as u64;
                bodies.push(bytes);
            }
            self.next
                .push((Ask::PutBodies(push), Request::PutBodies { bodies }));
        }
        if self.fetch.is_empty() && self.push.is_empty() {
            self.phase = Phase::Apply;
            self.queue_apply();
        }
        Ok(())
    }

    /// Queues the next Apply: groups in rounds of about APPLY_BATCH_BYTES and at most about
    /// LOCAL_APPLY_CHANGES changes (each group whole, since its guard covers all its changes:
    /// the peer applies a round in one transaction, which holds what it writes in memory
    /// until it commits); at least one Apply, whose answer carries the peer's root.
    pub(super) fn queue_apply(&mut self) {
        let mut groups = Vec::new();
        let (mut bytes, mut changes) = (0usize, 0usize);
        while !self.remote_groups.is_empty() {
            let size = encode(&self.remote_groups[0]).len();
            let n = self.remote_groups[0].changes.len();
            if !groups.is_empty()
                && (bytes + size > APPLY_BATCH_BYTES || changes + n > LOCAL_APPLY_CHANGES)
                && !bound_to(&groups, &self.remote_groups[0])
            {
                break;
            }
            bytes += size;
            changes += n;
            groups.push(self.remote_groups.remove(0));
        }
        if !groups.is_empty() || !self.applied_once {
            self.applied_once = true;
            let sent = groups.iter().map(|g| (g.user.clone(), g.guid)).collect();
            self.next
                .push((Ask::Apply(sent), Request::Apply { groups }));
        }
    }

    /// The peer's answer to a Bodies question: one body (or none) per digest asked for.
    pub(super) fn take_bodies(
        &mut self,
        digests: Vec<Digest>,
        bodies: Vec<Option<Vec<u8>>>,
    ) -> Result<(), SessionError> {
        if bodies.len() != digests.len() {
            return Err(protocol("a different number of bodies than asked for"));
        }
        self.moved(&digests);
        self.stage_fetched(digests, bodies)
    }

    /// Stages a batch of fetched bodies locally; a body that does not match its digest is
    /// left out, and the mailboxes that needed it are left alone (reported).
    fn stage_fetched(
        &mut self,
        digests: Vec<Digest>,
        bodies: Vec<Option<Vec<u8>>>,
    ) -> Result<(), SessionError> {
        let mut good = Vec::new();
        for (d, b) in digests.iter().zip(&bodies) {
            // Hashed once: the check against the digest asked for is also the staging key.
            match b
                .as_deref()
                .and_then(|bytes| CheckedBody::matching(bytes, d))
            {
                Some(body) => {
                    self.report.body_bytes_received += body.bytes().len() as u64;
                    good.push(body);
                }
                None => {
                    self.bad.insert(*d);
                }
            }
        }
        self.local.stage_bodies(&good)?;
        Ok(())
    }

    /// The peer's answer to an Apply: this side applies its own groups with the first one
    /// (every fetched body has been staged by now: Bodies answers come first), then the
    /// roots are compared.
    ///
    /// A group here that takes the peer's UIDVALIDITY waits for the answer about the peer's
    /// group for the same mailbox: it applies only if that group passed its guard, i.e. the
    /// peer's mailbox was still what the session read when the record came (its record and
    /// its messages come in different rounds; a write between them gives a torn view, whose
    /// UIDVALIDITY winner no replica may hold mail under). Otherwise it is stale here too.
    pub(super) fn take_applied(
        &mut self,
        sent: &[(String, GuidRef)],
        applied: &[bool],
        root: [u8; 32],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), SessionError> {
        if !self.local_applied {
            self.local_applied = true;
            // Every body has moved by now (Bodies answers come first): say so before the
            // changes are written.
            progress(self.progress());
            self.apply_local()?;
        }
        let stale = applied.iter().filter(|ok| !**ok).count() as u64;
        self.report.stale_mailboxes += stale;
        let mut confirmed = Vec::new();
        for ((user, guid), ok) in sent.iter().zip(applied) {
            let (now, rest): (Vec<ChangeGroup>, Vec<ChangeGroup>) =
                std::mem::take(&mut self.deferred)
                    .into_iter()
                    .partition(|g| g.user == *user && guid.names(&g.guid));
            self.deferred = rest;
            if *ok {
                confirmed.extend(now);
            } else {
                self.report.stale_mailboxes += now.len() as u64;
            }
        }
        if !confirmed.is_empty() {
            let done = self.local.apply_groups(&confirmed)?;
            self.report.stale_mailboxes += done.iter().filter(|ok| !**ok).count() as u64;
        }
        self.report.equal_after = self.local.root()?.hash.0 == root;
        if self.remote_groups.is_empty() {
            // A group whose peer group never came back applied is stale.
            self.report.stale_mailboxes += self.deferred.len() as u64;
            self.deferred.clear();
            self.finish_chunk()?;
        }
        Ok(())
    }

    /// Applies this side's groups: those that need a body that never came are dropped
    /// whole, so their mailboxes stay as they were until the next session.
    fn apply_local(&mut self) -> Result<(), SessionError> {
        let bad = &self.bad;
        let groups: Vec<ChangeGroup> = std::mem::take(&mut self.local_groups);
        let (kept, dropped): (Vec<ChangeGroup>, Vec<ChangeGroup>) =
            groups.into_iter().partition(|g| {
                !g.changes.iter().any(
                    |c| matches!(c, Change::Message { record, .. } if bad.contains(&record.digest)),
                )
            });
        self.report.body_mismatches += self.bad.len() as u64;
        self.report.stale_mailboxes += dropped.len() as u64;
        let (deferred, kept): (Vec<ChangeGroup>, Vec<ChangeGroup>) = kept
            .into_iter()
            .partition(|g| self.confirm.contains(&(g.user.clone(), g.guid)));
        self.deferred = deferred;
        // In transactions of a bounded size: what one holds in memory until its commit does
        // not grow with the copy. Each group is guarded on its own.
        let mut slices = Vec::new();
        let mut rest = &kept[..];
        while !rest.is_empty() {
            let (mut n, mut changes) = (0, 0);
            // A merge's delete stays with its winner's group (`merge_order`).
            while n < rest.len()
                && (n == 0
                    || changes + rest[n].changes.len() <= LOCAL_APPLY_CHANGES
                    || bound_to(&rest[..n], &rest[n]))
            {
                changes += rest[n].changes.len();
                n += 1;
            }
            let (slice, after) = rest.split_at(n);
            slices.push(slice);
            rest = after;
        }
        if slices.len() > 1 {
            self.pin_held_elsewhere()?;
        }
        for slice in slices {
            let applied = self.local.apply_groups(slice)?;
            self.report.stale_mailboxes += applied.iter().filter(|ok| !**ok).count() as u64;
        }
        Ok(())
    }

    /// A body held here that one mailbox's change takes while another's lets it go (a move
    /// between mailboxes, one mail delivered to two users) must outlive the transaction that
    /// lets it go when the two land in different transactions: it is staged (a reference held
    /// by a staging mark, no bytes written again), and the taking change inherits the mark.
    fn pin_held_elsewhere(&mut self) -> Result<(), SessionError> {
        let digests: Vec<Digest> = std::mem::take(&mut self.held_elsewhere)
            .into_iter()
            .collect();
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        for d in digests {
            // One that rotted or went meanwhile cannot be pinned; its change fails its
            // checks as it would have anyway.
            let Some(body) = self.local.sound_body(&d)? else {
                continue;
            };
            bytes += body.len() as u64;
            batch.push(body);
            if bytes >= BODY_BATCH_BYTES {
                let checked: Vec<CheckedBody<'_>> =
                    batch.iter().map(|b| CheckedBody::new(b)).collect();
                self.local.stage_bodies(&checked)?;
                batch.clear();
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            let checked: Vec<CheckedBody<'_>> = batch.iter().map(|b| CheckedBody::new(b)).collect();
            self.local.stage_bodies(&checked)?;
        }
        Ok(())
    }
}
