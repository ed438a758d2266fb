//! When a tombstone may be forgotten: older than the retention **and** known to every
//! configured peer (docs/PROTOCOL.md, "Forgetting tombstones", states the rule and why it is
//! safe). The rule ([`Purge`]) is pure; [`run`] is the daemon's task that feeds it.
//!
//! The rule keeps, per configured peer, one horizon (the start of its latest check with that
//! peer that ended with equal roots) and, per tombstone already past its retention, the time
//! this node first saw it so. Nothing of it is stored: after a restart every tombstone past
//! its retention waits again for one equal check per peer, which only keeps it longer.

use super::node::{lock, now_ms, Node};
use crate::store::AgedTombstone;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What one peer holds back: tombstones past their retention that this node keeps because
/// that peer is not known to have them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldBack {
    pub tombstones: u64,
    /// The earliest time one of them was seen past its retention here, ms since the epoch.
    pub since_ms: Option<u64>,
}

/// One pass's decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The tombstones to forget now.
    pub forget: Vec<AgedTombstone>,
    /// Per configured peer, in the order the horizons were given.
    pub held_back: Vec<HeldBack>,
}

/// The rule's memory: every tombstone past its retention, with the time (ms since the epoch,
/// this node's clock) at which a pass first listed it so.
#[derive(Debug, Default)]
pub struct Purge {
    due: BTreeMap<AgedTombstone, u64>,
}

impl Purge {
    /// One pass. `aged` is every tombstone past its retention, read before `now_ms`;
    /// `horizons` holds, per configured peer, the start of its latest check that ended with
    /// equal roots (`None`: none since this process started).
    ///
    /// A tombstone is forgotten when every horizon is later than the time it was first seen
    /// here past its retention: each peer has since finished a session, begun while this node
    /// held the tombstone, that left both sides with equal roots. With no peer, at once.
    pub fn pass(
        &mut self,
        aged: Vec<AgedTombstone>,
        now_ms: u64,
        horizons: &[Option<u64>],
    ) -> Decision {
        // Tombstones no longer listed (gone, or written again with a new stamp) are dropped.
        let mut due = BTreeMap::new();
        for t in aged {
            let seen = self.due.get(&t).copied().unwrap_or(now_ms);
            due.insert(t, seen);
        }
        let mut decision = Decision {
            forget: Vec::new(),
            held_back: vec![HeldBack::default(); horizons.len()],
        };
        for (t, &seen) in &due {
            let mut known_everywhere = true;
            for (h, held) in horizons.iter().zip(decision.held_back.iter_mut()) {
                if !h.is_some_and(|h| h > seen) {
                    known_everywhere = false;
                    held.tombstones += 1;
                    held.since_ms = Some(held.since_ms.map_or(seen, |s| s.min(seen)));
                }
            }
            if known_everywhere {
                decision.forget.push(t.clone());
            }
        }
        for t in &decision.forget {
            due.remove(t);
        }
        self.due = due;
        decision
    }

    /// Tombstones past their retention and still kept.
    pub fn waiting(&self) -> usize {
        self.due.len()
    }
}

/// The daemon's purge: first soon after start, then every min(1 h, retention / 4), so a
/// tombstone goes at most that long after the rule allows it.
pub async fn run(node: Arc<Node>) {
    let mut shutdown = node.shutdown.subscribe();
    let every = node.config.purge_interval();
    let retention = node.config.tombstone_retention();
    let mut wait = every.min(Duration::from_secs(60));
    let mut purge = Purge::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        wait = every;
        let before = now_ms().saturating_sub(retention.as_millis());
        let store = Arc::clone(&node.store);
        let aged =
            match tokio::task::spawn_blocking(move || store.tombstones_older_than(before)).await {
                Ok(Ok(aged)) => aged,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot list old tombstones");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the tombstone purge failed");
                    continue;
                }
            };
        // Read the clock after the listing: every tombstone listed was here by then.
        let now = now_ms();
        let horizons: Vec<Option<u64>> = node
            .peers
            .iter()
            .map(|p| *lock(&p.tombstone_horizon))
            .collect();
        let decision = purge.pass(aged, now, &horizons);
        for (peer, held) in node.peers.iter().zip(&decision.held_back) {
            let mut v = lock(&peer.view);
            v.tombstones_held_back = held.tombstones;
            v.holding_since_ms = held.since_ms;
        }
        if decision.forget.is_empty() {
            continue;
        }
        let store = Arc::clone(&node.store);
        let forget = decision.forget;
        match tokio::task::spawn_blocking(move || store.forget_tombstones(&forget)).await {
            Ok(Ok(p)) => tracing::info!(
                tombstones = p.tombstones,
                mailbox_tombstones = p.mailbox_tombstones,
                retention = %retention,
                still_held_back = purge.waiting(),
                "forgot tombstones past their retention that every peer has"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot purge old tombstones"),
            Err(e) => tracing::warn!(error = %e, "the tombstone purge failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stamp;
    use crate::store::TombstoneKey;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    fn tomb(i: u8) -> AgedTombstone {
        AgedTombstone {
            key: TombstoneKey::Message(vec![i]),
            stamp: Stamp {
                ms: u64::from(i),
                counter: 0,
                node: 1,
            },
        }
    }

    #[test]
    fn a_tombstone_waits_for_an_equal_check_of_every_peer_begun_after_it_was_due() {
        let mut p = Purge::default();
        // Due at 100; peer 0 checked at 50 (before), peer 1 never.
        let d = p.pass(vec![tomb(1)], 100, &[Some(50), None]);
        assert!(d.forget.is_empty());
        let held = HeldBack {
            tombstones: 1,
            since_ms: Some(100),
        };
        assert_eq!(d.held_back, vec![held, held]);
        // Peer 0 checks at 150: only peer 1 holds it back now, and since the same time.
        let d = p.pass(vec![tomb(1)], 200, &[Some(150), None]);
        assert!(d.forget.is_empty());
        assert_eq!(d.held_back, vec![HeldBack::default(), held]);
        // A check that began exactly when it was seen is not enough.
        let d = p.pass(vec![tomb(1)], 300, &[Some(150), Some(100)]);
        assert!(d.forget.is_empty());
        let d = p.pass(vec![tomb(1)], 400, &[Some(150), Some(101)]);
        assert_eq!(d.forget, vec![tomb(1)]);
        assert_eq!(d.held_back, vec![HeldBack::default(); 2]);
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn without_peers_a_tombstone_goes_once_past_its_retention_and_a_removed_peer_holds_nothing() {
        let mut p = Purge::default();
        assert_eq!(p.pass(vec![tomb(1)], 10, &[]).forget, vec![tomb(1)]);
        let d = p.pass(vec![tomb(2)], 20, &[None]);
        assert!(d.forget.is_empty());
        // The one peer is removed from the configuration (the next start passes no horizon).
        assert_eq!(p.pass(vec![tomb(2)], 30, &[]).forget, vec![tomb(2)]);
    }

    #[test]
    fn a_tombstone_written_again_is_due_anew() {
        let mut p = Purge::default();
        p.pass(vec![tomb(1)], 100, &[None]);
        // The same key with another stamp is another tombstone, first seen now.
        let again = AgedTombstone {
            stamp: Stamp {
                ms: 7,
                counter: 1,
                node: 2,
            },
            ..tomb(1)
        };
        let d = p.pass(vec![again.clone()], 200, &[Some(150)]);
        assert!(d.forget.is_empty(), "seen at 200, the check began at 150");
        assert_eq!(
            p.pass(vec![again.clone()], 300, &[Some(250)]).forget,
            vec![again]
        );
    }

    /// A pass in the model: which tombstones are listed, when, and the horizons.
    #[derive(Clone, Debug)]
    struct Step {
        listed: BTreeSet<u8>,
        advance: u64,
        /// Per peer: a check ends with equal roots during this step, begun this long ago.
        checks: Vec<Option<u64>>,
    }

    fn step(peers: usize) -> impl Strategy<Value = Step> {
        (
            proptest::collection::btree_set(0u8..12, 0..8),
            1u64..50,
            proptest::collection::vec(proptest::option::of(0u64..80), peers),
        )
            .prop_map(|(listed, advance, checks)| Step {
                listed,
                advance,
                checks,
            })
    }

    proptest! {
        /// The rule against a model that remembers, per tombstone, when it was first listed
        /// without a gap, and per peer every equal check's start: a tombstone is forgotten
        /// exactly when every peer began an equal check after it was first listed, it never
        /// comes back into the decision once forgotten (the store no longer lists it), and
        /// held-back counts and times are the model's.
        #[test]
        fn the_rule_matches_its_model(
            (peers, steps) in (0usize..4)
                .prop_flat_map(|n| (Just(n), proptest::collection::vec(step(n), 1..30))),
        ) {
            let mut rule = Purge::default();
            let mut now = 1_000u64;
            let mut horizons: Vec<Option<u64>> = vec![None; peers];
            let mut first_seen: HashMap<u8, u64> = HashMap::new();
            let mut forgotten: BTreeSet<u8> = BTreeSet::new();
            for s in steps {
                now += s.advance;
                for (h, c) in horizons.iter_mut().zip(&s.checks) {
                    if let Some(ago) = c {
                        // Horizons only move forward: a check that began earlier than the
                        // latest one changes nothing.
                        let began = now.saturating_sub(*ago);
                        *h = Some(h.map_or(began, |h| h.max(began)));
                    }
                }
                // The store lists what it holds: forgotten tombstones are never listed again.
                let listed: BTreeSet<u8> = s.listed.difference(&forgotten).copied().collect();
                first_seen.retain(|k, _| listed.contains(k));
                for k in &listed {
                    first_seen.entry(*k).or_insert(now);
                }
                let d = rule.pass(listed.iter().map(|&k| tomb(k)).collect(), now, &horizons);
                let expect: BTreeSet<u8> = listed
                    .iter()
                    .copied()
                    .filter(|k| horizons.iter().all(|h| h.is_some_and(|h| h > first_seen[k])))
                    .collect();
                let got: BTreeSet<u8> = d
                    .forget
                    .iter()
                    .map(|t| match &t.key { TombstoneKey::Message(k) => k[0], TombstoneKey::Mailbox(_) => unreachable!() })
                    .collect();
                prop_assert_eq!(&got, &expect);
                for (i, h) in horizons.iter().enumerate() {
                    let held: Vec<u64> = listed
                        .iter()
                        .filter(|k| !expect.contains(k))
                        .map(|k| first_seen[k])
                        .filter(|&seen| !h.is_some_and(|h| h > seen))
                        .collect();
                    prop_assert_eq!(d.held_back[i].tombstones, held.len() as u64);
                    prop_assert_eq!(d.held_back[i].since_ms, held.iter().min().copied());
                }
                for k in &expect {
                    first_seen.remove(k);
                    forgotten.insert(*k);
                }
                prop_assert_eq!(rule.waiting(), listed.len() - expect.len());
            }
        }
    }
}
