//! Records: the questions that compare buckets run by run and fetch the records and
//! tombstones at the differing UIDs (and whole ranges, tails and mailboxes), and the answers
//! that build the peer's side of each mailbox.

use super::{protocol, Ask, Key, Session, SessionError, RECORDS_PER_REQUEST};
use crate::merkle::{NodeKey, BUCKET_SHIFT};
use crate::model::{CheckedBody, MessageRecord, Tombstone};
use crate::sync::responder::runs_of;
use crate::sync::wire::{
    digest_prefix, from_gaps, record_with_body, run_hash, to_gaps, BucketRuns, Fp, GuidRef,
    Request, Run, WireRecord, RUNS_PER_BUCKET, RUN_SHIFT,
};
use std::collections::{BTreeMap, BTreeSet};

/// Gap-coded UIDs and what came with them, as plain UIDs.
fn ungapped<T>(items: Vec<(u32, T)>) -> Result<(Vec<u32>, Vec<T>), SessionError> {
    let (gaps, values): (Vec<u32>, Vec<T>) = items.into_iter().unzip();
    let uids = from_gaps(&gaps).ok_or_else(|| protocol("UIDs beyond 32 bits"))?;
    Ok((uids, values))
}

/// The record the peer sent for one UID: whole, with its body, or as flags on the message
/// we hold there (taken out of `ours`). A body that came is added to `bodies`.
fn remote_message(
    uid: u32,
    record: WireRecord,
    ours: &mut BTreeMap<u32, MessageRecord>,
    bodies: &mut Vec<Vec<u8>>,
) -> Result<MessageRecord, SessionError> {
    Ok(match record {
        WireRecord::Full(m) => m,
        WireRecord::New {
            internal_date,
            flags,
            appended,
            body,
        } => {
            let m = record_with_body(internal_date, flags, appended, &body);
            bodies.push(body);
            m
        }
        WireRecord::Flags(flags) => {
            let Some(mut m) = ours.remove(&uid) else {
                return Err(protocol("flags for a message we do not hold"));
            };
            m.flags = flags;
            m
        }
    })
}

impl Session<'_> {
    /// Takes into the chunk the users of the mailboxes whose descent is over, in order, while
    /// the records they bring fit the chunk's budget (the first always fits); the others
    /// wait for a later chunk.
    fn admit(&mut self) -> Result<(), SessionError> {
        let mut users: BTreeMap<String, u64> = BTreeMap::new();
        for (key, w) in &self.work {
            if w.outstanding > 0 || w.records_asked || !w.remote_known {
                continue;
            }
            if self.admitted.contains(&key.0) {
                continue;
            }
            let local = self.local.node(&NodeKey::Mailbox {
                user: key.0.clone(),
                guid: key.1,
            })?;
            let est = w.estimate(local.map_or(0, |v| v.count));
            *users.entry(key.0.clone()).or_default() += est;
        }
        for (user, est) in users {
            if self.admitted.is_empty()
                || self.chunk_estimate.saturating_add(est) <= self.chunk_budget
            {
                self.chunk_estimate = self.chunk_estimate.saturating_add(est);
                self.admitted.insert(user);
            }
        }
        Ok(())
    }

    /// Asks for the records of every mailbox of the chunk's users whose descent is over:
    /// whole mailboxes outright, the others with the differing UIDs found (see
    /// [`Session::flush`]).
    pub(super) fn ask_records(&mut self) -> Result<(), SessionError> {
        self.admit()?;
        let mut asks = Vec::new();
        let mut keys = Vec::new();
        for (key, w) in &mut self.work {
            let guid = if w.prefix_ok {
                GuidRef::Prefix(GuidRef::prefix_of(&key.1))
            } else {
                GuidRef::Full(key.1)
            };
            if w.outstanding > 0
                || w.records_asked
                || !w.remote_known
                || !self.admitted.contains(&key.0)
            {
                continue;
            }
            w.records_asked = true;
            if !w.full {
                keys.push(key.clone());
            } else if w.remote_record.is_some() {
                asks.push((
                    Ask::Full(key.clone()),
                    Request::Full {
                        user: key.0.clone(),
                        guid,
                    },
                ));
            }
        }
        for key in keys {
            self.flush(&key, true)?;
        }
        for (ask, request) in asks {
            self.ask(ask, request);
        }
        Ok(())
    }

    /// Asks what is known to be needed of a mailbox in one question: the buckets to compare
    /// run by run, the ranges and the tail found so far, and (`last`, once nothing is left
    /// to descend) the records at the differing UIDs.
    pub(super) fn flush(&mut self, key: &Key, last: bool) -> Result<(), SessionError> {
        let Some(w) = self.work.get_mut(key) else {
            return Ok(());
        };
        let mut buckets = std::mem::take(&mut w.pending);
        let mut ranges = w.ranges[w.ranges_asked..].to_vec();
        w.ranges_asked = w.ranges.len();
        let mut tail = w.tail && !w.tail_asked;
        w.tail_asked |= tail;
        let limit = w.tail.then_some(w.limit);
        let uids: Vec<u32> = if last {
            w.uids.iter().copied().collect()
        } else {
            Vec::new()
        };
        if buckets.is_empty() && ranges.is_empty() && !tail && uids.is_empty() {
            return Ok(());
        }
        let mut runs = self.bucket_runs(key, &buckets, limit)?;
        let held = self.held_digests(key, &uids)?;
        let mut chunks: Vec<&[u32]> = uids.chunks(RECORDS_PER_REQUEST).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let guid = self.guid_ref(key);
        // The buckets, ranges and tail travel with the first chunk of UIDs only.
        for chunk in chunks {
            let gaps = to_gaps(chunk.iter().copied());
            let uids = gaps
                .into_iter()
                .zip(chunk)
                .map(|(g, u)| (g, held.get(u).copied()))
                .collect();
            self.ask(
                Ask::Records(key.clone(), std::mem::take(&mut buckets)),
                Request::Records {
                    user: key.0.clone(),
                    guid,
                    uids,
                    ranges: std::mem::take(&mut ranges),
                    limit,
                    tail: std::mem::take(&mut tail),
                    buckets: std::mem::take(&mut runs),
                },
            );
        }
        Ok(())
    }

    /// Our runs of each bucket below the limit, hashed, for the peer to compare.
    fn bucket_runs(
        &self,
        key: &Key,
        buckets: &[u32],
        limit: Option<u32>,
    ) -> Result<Vec<BucketRuns>, SessionError> {
        let mut runs = Vec::with_capacity(buckets.len());
        for &bucket in buckets {
            let entries = self.local.bucket_entries(&key.0, key.1, bucket)?;
            let mut present = 0u8;
            let mut hashes = Vec::new();
            for (run, e) in runs_of(&entries, limit.unwrap_or(u32::MAX)) {
                present |= 1 << run;
                hashes.push(run_hash(e.iter().map(|(_, h)| h), self.window));
            }
            runs.push(BucketRuns {
                bucket,
                present,
                hashes,
            });
        }
        Ok(runs)
    }

    /// The first bytes of the digests we hold at `uids`: the peer sends flags alone where
    /// it holds the same message.
    fn held_digests(
        &self,
        key: &Key,
        uids: &[u32],
    ) -> Result<BTreeMap<u32, [u8; 4]>, SessionError> {
        if uids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let set: BTreeSet<u32> = uids.iter().copied().collect();
        let side = self.local.mailbox_side(&key.0, key.1, Some(&set))?;
        Ok(side
            .messages
            .iter()
            .map(|(u, m)| (*u, digest_prefix(&m.digest)))
            .collect())
    }

    /// The answer to a Records question: the peer's differing runs, then its records.
    pub(super) fn take_compared(
        &mut self,
        key: &Key,
        buckets: Vec<u32>,
        runs: Vec<Vec<Run>>,
        messages: Vec<(u32, WireRecord)>,
        tombstones: Vec<(u32, Tombstone)>,
    ) -> Result<(), SessionError> {
        self.done_with(key)?;
        if runs.len() != buckets.len() {
            return Err(protocol("runs for a different number of buckets"));
        }
        for (bucket, runs) in buckets.into_iter().zip(runs) {
            self.take_runs(key, bucket, runs)?;
        }
        self.take_records(key, messages, tombstones)
    }

    /// The peer's runs of one bucket that differ from ours: their UIDs are compared next.
    fn take_runs(&mut self, key: &Key, bucket: u32, runs: Vec<Run>) -> Result<(), SessionError> {
        let w = self
            .work
            .get(key)
            .ok_or_else(|| protocol("runs of a mailbox never asked about"))?;
        let limit = if w.tail { w.limit } else { u32::MAX };
        let local = runs_of(&self.local.bucket_entries(&key.0, key.1, bucket)?, limit);
        let mut differ = Vec::new();
        for r in runs {
            if u32::from(r.run) >= RUNS_PER_BUCKET
                || r.present.count_ones() as usize != r.hashes.len()
            {
                return Err(protocol("a malformed run"));
            }
            let first = (bucket << BUCKET_SHIFT) | (u32::from(r.run) << RUN_SHIFT);
            let remote: BTreeMap<u32, Fp> = (0..8u32)
                .filter(|b| r.present & (1 << b) != 0)
                .map(|b| first + b)
                .zip(r.hashes.iter().copied())
                .filter(|(u, _)| *u < limit)
                .collect();
            let ours: BTreeMap<u32, Fp> = local
                .get(&r.run)
                .into_iter()
                .flatten()
                .map(|(u, h)| (*u, self.fp(h)))
                .collect();
            for uid in ours.keys().chain(remote.keys()) {
                if ours.get(uid) != remote.get(uid) {
                    differ.push(*uid);
                }
            }
        }
        self.work
            .entry(key.clone())
            .or_default()
            .uids
            .extend(differ);
        Ok(())
    }

    /// The peer's records and tombstones (possibly in several answers: add to what came).
    pub(super) fn take_records(
        &mut self,
        key: &Key,
        messages: Vec<(u32, WireRecord)>,
        tombstones: Vec<(u32, Tombstone)>,
    ) -> Result<(), SessionError> {
        let (uids, records) = ungapped(messages)?;
        let (tuids, tombs) = ungapped(tombstones)?;
        let flags_only: BTreeSet<u32> = uids
            .iter()
            .zip(&records)
            .filter(|(_, r)| matches!(r, WireRecord::Flags(_)))
            .map(|(u, _)| *u)
            .collect();
        let mut ours = if flags_only.is_empty() {
            BTreeMap::new()
        } else {
            self.local
                .mailbox_side(&key.0, key.1, Some(&flags_only))?
                .messages
        };
        let w = self
            .work
            .get_mut(key)
            .ok_or_else(|| protocol("records of a mailbox never asked about"))?;
        let mut side = w.remote_side.take().unwrap_or_default();
        let mut bodies = Vec::new();
        for (uid, r) in uids.into_iter().zip(records) {
            let m = remote_message(uid, r, &mut ours, &mut bodies)?;
            if w.covers(uid) {
                side.messages.insert(uid, m);
            }
        }
        for (uid, t) in tuids.into_iter().zip(tombs) {
            if w.covers(uid) {
                let list = side.expunged.entry(uid).or_default();
                if !list.contains(&t) {
                    list.push(t);
                }
            }
        }
        w.remote_side = Some(side);
        self.stage_inline(&bodies)
    }

    /// Bodies that came with their records: staged now (checked by construction: the
    /// record's digest is the body's), never fetched again.
    fn stage_inline(&mut self, bodies: &[Vec<u8>]) -> Result<(), SessionError> {
        let checked: Vec<CheckedBody<'_>> = bodies.iter().map(|b| CheckedBody::new(b)).collect();
        for b in &checked {
            self.report.body_bytes_received += b.bytes().len() as u64;
            self.prefetched.insert(*b.digest());
        }
        if !self.dry_run && !checked.is_empty() {
            self.local.stage_bodies(&checked)?;
        }
        Ok(())
    }
}
