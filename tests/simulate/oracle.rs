//! What the simulated writers were told, and the checks the cluster must pass once it has
//! settled: equal roots, `verify` clean, no acknowledged mail lost or duplicated, no expunged
//! mail back.

use merkmail::model::{same_name_rank, Digest, MailboxGuid};
use merkmail::store::Store;
use std::collections::{BTreeMap, BTreeSet};

/// One append a writer got `Ok` for.
#[derive(Clone, Debug)]
pub struct Appended {
    pub label: String,
    pub user: String,
    pub mailbox: String,
    pub guid: MailboxGuid,
    /// The UID the append returned.
    pub uid: u32,
    /// The simulation step it happened at.
    pub step: u64,
    pub peer: String,
}

/// Where a writer expunged a message.
#[derive(Clone, Debug)]
pub struct Expunged {
    pub user: String,
    pub guid: MailboxGuid,
    pub uid: u32,
    /// The peer whose writer expunged it.
    pub peer: String,
}

/// Everything the writers did that the final state must reflect. Bodies are unique per
/// append, so a digest names one message wherever it ends up.
#[derive(Default)]
pub struct Oracle {
    pub appended: BTreeMap<Digest, Appended>,
    /// Messages a writer expunged, with the mailbox (user, GUID) they were expunged from:
    /// they must not be live anywhere at the end, unless a writer deleted that mailbox too
    /// (deleting a mailbox drops its messages' tombstones, the mailbox tombstone standing for
    /// them; a peer that changed the mailbox after the delete revives it with the messages it
    /// holds, and one it held but had not yet seen expunged comes back with them).
    pub expunged: BTreeMap<Digest, Expunged>,
    /// Messages that were live in a mailbox when a writer deleted it (there, on that peer).
    pub deleted_with_mailbox: BTreeSet<Digest>,
    /// Mailboxes (user, GUID) a writer deleted somewhere: what was appended to them may go.
    /// With the step of the last such delete.
    pub deleted_mailboxes: BTreeMap<(String, MailboxGuid), u64>,
    /// Same-name merges seen so far: (user, GUID) → the GUIDs it was merged into.
    pub merges: BTreeMap<(String, MailboxGuid), BTreeSet<MailboxGuid>>,
    /// Appends made on a peer that was then removed from the cluster, which no other peer
    /// held live at that moment: they went with it.
    pub gone_with_peer: BTreeSet<Digest>,
    /// Expunges made on a removed peer that no other peer held then (no writer's tombstone
    /// of that message in that mailbox): the expunge went with it. The message may still
    /// reach the others (an append waiting in one's inbound journal: seed 120420).
    pub expunges_gone_with_peer: BTreeSet<Digest>,
}

impl Oracle {
    /// Whether a writer removed this message (so it may be absent at the end): expunged it,
    /// deleted the mailbox it was in, or deleted a mailbox that one it was appended to was
    /// merged into (two GUIDs with one name; the delete of the merged mailbox wins over
    /// appends it had not seen, as for any mailbox).
    fn removed(&self, digest: &Digest, a: &Appended, peers: &[(&str, &Store)]) -> bool {
        self.expunged.contains_key(digest)
            || self.deleted_with_mailbox.contains(digest)
            || self.gone_with_peer.contains(digest)
            || self
                .merged_chain(&a.user, a.guid, peers)
                .iter()
                .any(|g| self.deleted_mailboxes.contains_key(&(a.user.clone(), *g)))
    }

    /// Peer `peer` is removed from the cluster while every other peer (`others`) is up: what
    /// only it knew is no longer expected (see the two fields).
    pub fn peer_removed(&mut self, peer: &str, others: &[&Store]) {
        let mut live = BTreeSet::new();
        for store in others {
            if let Ok(l) = live_messages(store) {
                live.extend(l.into_keys());
            }
        }
        for (digest, a) in &self.appended {
            if a.peer == peer && !live.contains(digest) {
                self.gone_with_peer.insert(*digest);
            }
        }
        for (digest, x) in &self.expunged {
            let held = others.iter().any(|store| {
                store.mailbox_side(&x.user, x.guid, None).is_ok_and(|side| {
                    side.expunged
                        .values()
                        .flatten()
                        .any(|t| t.digest == *digest && t.origin.is_some())
                })
            });
            if x.peer == peer && !held {
                self.expunges_gone_with_peer.insert(*digest);
            }
        }
    }

    /// Notes the merges the peers' mailbox tombstones show for every mailbox the writers used.
    pub fn note_merges(&mut self, peers: &[&Store]) {
        let known: BTreeSet<(String, MailboxGuid)> = self
            .appended
            .values()
            .map(|a| (a.user.clone(), a.guid))
            .chain(self.deleted_mailboxes.keys().cloned())
            .collect();
        for (user, guid) in known {
            for store in peers {
                if let Some(into) = merged_into(store, &user, guid) {
                    self.merges
                        .entry((user.clone(), guid))
                        .or_default()
                        .insert(into);
                }
            }
        }
    }

    /// A mailbox and those it was merged into, in turn: as noted during the run, and as any
    /// peer's mailbox tombstones say now.
    fn merged_chain(
        &self,
        user: &str,
        guid: MailboxGuid,
        peers: &[(&str, &Store)],
    ) -> Vec<MailboxGuid> {
        let mut chain = vec![guid];
        let mut seen = BTreeSet::from([guid]);
        let mut at = 0;
        while at < chain.len() && chain.len() < 64 {
            let g = chain[at];
            at += 1;
            let noted = self
                .merges
                .get(&(user.to_string(), g))
                .into_iter()
                .flatten()
                .copied();
            let now: Vec<MailboxGuid> = peers
                .iter()
                .filter_map(|(_, store)| merged_into(store, user, g))
                .collect();
            for into in noted.chain(now) {
                if seen.insert(into) {
                    chain.push(into);
                }
            }
        }
        chain
    }

    /// Checks the settled cluster; returns every violation found.
    pub fn check(&self, peers: &[(&str, &Store)]) -> Vec<String> {
        let mut violations = Vec::new();
        let mut roots = Vec::new();
        for (name, store) in peers {
            match store.root() {
                Ok(r) => roots.push((name.to_string(), hex(&r.hash.0))),
                Err(e) => violations.push(format!("{name}: cannot read the root: {e}")),
            }
            match store.verify() {
                Ok(report) if report.is_ok() => {}
                Ok(report) => violations.push(format!(
                    "verify: {name}: verify found {} problem(s): {:?}",
                    report.problems.len(),
                    report.problems.iter().take(5).collect::<Vec<_>>()
                )),
                Err(e) => violations.push(format!("{name}: verify failed: {e}")),
            }
        }
        if roots.windows(2).any(|w| w[0].1 != w[1].1) {
            violations.push(format!("unequal: roots differ after settling: {roots:?}"));
        }
        for (name, store) in peers {
            let live = match live_messages(store) {
                Ok(live) => live,
                Err(e) => {
                    violations.push(format!("{name}: cannot list messages: {e}"));
                    continue;
                }
            };
            for (digest, a) in &self.appended {
                if self.removed(digest, a, peers) {
                    continue;
                }
                let places: Vec<&Place> = live
                    .get(digest)
                    .map(|p| p.iter().filter(|p| p.user == a.user).collect())
                    .unwrap_or_default();
                if places.len() != 1 {
                    // A writer deleted another mailbox of the user after this append: the
                    // message may have been merged into it (same name, two GUIDs).
                    let delete_after = self
                        .deleted_mailboxes
                        .iter()
                        .any(|((u, _), step)| *u == a.user && *step >= a.step);
                    // Another append took the same UID of the same mailbox: a UID clash
                    // renumbered this message somewhere.
                    let clashed = self.appended.iter().any(|(d, b)| {
                        d != digest && b.user == a.user && b.guid == a.guid && b.uid == a.uid
                    });
                    let kind = match places.len() {
                        0 if clashed => "lost-after-uid-clash",
                        0 if delete_after => "lost-near-mailbox-delete",
                        0 => "lost",
                        _ if places.iter().any(|p| p.uid != a.uid) => {
                            "duplicated-after-renumbering"
                        }
                        _ => "duplicated",
                    };
                    violations.push(format!(
                        "{kind}: {name}: message {} (appended on {} to {}/{} at UID {}) is live {} times: {places:?}",
                        a.label,
                        a.peer,
                        a.user,
                        a.mailbox,
                        a.uid,
                        places.len()
                    ));
                }
            }
            for (digest, x) in &self.expunged {
                if self.expunges_gone_with_peer.contains(digest) {
                    continue;
                }
                // Finding 4 (by design): a mailbox a writer deleted drops its expunges, and
                // comes back with what a peer that changed it later holds. Also when the
                // mailbox was merged (in turn) into the one deleted.
                if self
                    .merged_chain(&x.user, x.guid, peers)
                    .iter()
                    .any(|g| self.deleted_mailboxes.contains_key(&(x.user.clone(), *g)))
                {
                    continue;
                }
                if let Some(places) = live.get(digest) {
                    let a = self.appended.get(digest);
                    let label = a.map_or("?", |a| a.label.as_str());
                    // Whether a UID clash moved it (appended, expunged and live UIDs differ).
                    let moved =
                        a.is_some_and(|a| a.uid != x.uid || places.iter().any(|p| p.uid != a.uid));
                    let kind = if moved {
                        "resurrected-after-renumbering"
                    } else {
                        "resurrected"
                    };
                    violations.push(format!(
                        "{kind}: {name}: expunged message {label} (appended at UID {}, expunged at UID {}) is live again: {places:?}",
                        a.map_or(0, |a| a.uid),
                        x.uid
                    ));
                }
            }
        }
        violations
    }
}

/// The mailbox a store's tombstone says `guid` was merged into.
fn merged_into(store: &Store, user: &str, guid: MailboxGuid) -> Option<MailboxGuid> {
    store
        .mailbox_side(user, guid, Some(&BTreeSet::new()))
        .ok()
        .and_then(|s| s.tombstone)
        .and_then(|t| t.merged_into)
}

/// Where a message is live (printed in violations).
#[derive(Debug)]
#[allow(dead_code)]
pub struct Place {
    pub user: String,
    pub mailbox: String,
    /// The mailbox's GUID (its first bytes, in hex): two mailboxes may share a name for a while.
    pub guid: String,
    pub uid: u32,
    /// The append stamp: two placements of one body with different stamps are two appends.
    pub appended: String,
}

/// Every live message of a store by digest.
pub fn live_messages(
    store: &Store,
) -> Result<BTreeMap<Digest, Vec<Place>>, merkmail::store::StoreError> {
    let mut live: BTreeMap<Digest, Vec<Place>> = BTreeMap::new();
    for user in store.users()? {
        let has_mailboxes = !store.list_mailboxes(&user)?.is_empty();
        if !has_mailboxes {
            continue;
        }
        for m in store.list_messages(&user, None)? {
            live.entry(m.record.digest).or_default().push(Place {
                user: user.clone(),
                mailbox: m.mailbox,
                guid: hex(&m.guid.0),
                uid: m.uid,
                appended: format!("{:?}", m.record.appended),
            });
        }
    }
    Ok(live)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// What an IMAP client of one peer has seen of one mailbox, under one UIDVALIDITY.
struct ClientView {
    name: String,
    uidvalidity: u32,
    /// The highest UIDNEXT the peer exposed: the client never looks below it for new mail.
    uidnext: u32,
    /// Every (UID, message) the client saw live.
    seen: BTreeSet<(u32, Digest)>,
    /// Live messages at the last look.
    count: u64,
}

/// The IMAP promises, checked at every look (the simulation looks at every peer after every
/// step, session and settling round, as clients that never stop watching):
/// - `appeared-below-uidnext`: a message newly live on a peer at a UID below the highest
///   UIDNEXT that peer exposed under the same UIDVALIDITY (its clients never see it);
/// - `uidvalidity-imposed-by-empty-side`: a mailbox that held mail on a peer changed its
///   UIDVALIDITY to one under which no peer has ever held mail in that mailbox (an empty
///   side imposed its own, and the full side's clients must resynchronise for nothing);
/// - `merged-into-a-lower-rank`: a mailbox that held mail was merged into another of its name
///   that the same-name rule (`model::same_name_rank`: the one made first) ranks below it.
#[derive(Default)]
pub struct ClientViews {
    views: BTreeMap<(String, String, MailboxGuid), ClientView>,
    /// (user, mailbox, UIDVALIDITY) under which some peer held mail at a look.
    held_mail: BTreeSet<(String, MailboxGuid, u32)>,
    /// Looks taken and UIDVALIDITY changes seen on a mailbox holding mail (for the report).
    pub looks: u64,
    pub uidvalidity_changes: u64,
    /// Mailboxes holding mail at a look that a same-name merge took away by the next.
    pub full_merges: u64,
}

/// One mailbox as a peer shows it now.
struct Shown {
    name: String,
    uidvalidity: u32,
    uidnext: u32,
    live: BTreeMap<u32, Digest>,
}

fn shown(store: &Store) -> Result<BTreeMap<(String, MailboxGuid), Shown>, String> {
    let mut out = BTreeMap::new();
    for user in store.users().map_err(|e| e.to_string())? {
        // A user record can be left with no mailbox (`list_messages` then calls it unknown).
        let boxes = match store.list_mailboxes(&user) {
            Ok(boxes) if !boxes.is_empty() => boxes,
            _ => continue,
        };
        for b in boxes {
            out.insert(
                (user.clone(), b.guid),
                Shown {
                    name: b.name,
                    uidvalidity: b.uidvalidity,
                    uidnext: b.uidnext,
                    live: BTreeMap::new(),
                },
            );
        }
        for m in store
            .list_messages(&user, None)
            .map_err(|e| e.to_string())?
        {
            if let Some(s) = out.get_mut(&(user.clone(), m.guid)) {
                s.live.insert(m.uid, m.record.digest);
            }
        }
    }
    Ok(out)
}

impl ClientViews {
    /// Looks at every peer (a client of each reads each mailbox); returns the violations.
    pub fn look(&mut self, peers: &[(&str, &Store)], oracle: &Oracle) -> Vec<String> {
        self.looks += 1;
        let mut violations = Vec::new();
        let mut held = Vec::new();
        for (peer, store) in peers {
            let now = match shown(store) {
                Ok(now) => now,
                Err(e) => {
                    violations.push(format!("{peer}: cannot look at the mailboxes: {e}"));
                    continue;
                }
            };
            // A mailbox that held mail and is gone, merged into another of its name: the
            // winner must be the one the same-name rule ranks higher (the one made first), on
            // every peer alike; its clients see the name's new identity.
            let gone: Vec<(String, MailboxGuid, String, u64)> = self
                .views
                .iter()
                .filter(|((p, u, g), v)| {
                    p == peer && v.count > 0 && !now.contains_key(&(u.clone(), *g))
                })
                .map(|((_, u, g), v)| (u.clone(), *g, v.name.clone(), v.count))
                .collect();
            for (user, guid, name, count) in gone {
                let Ok(side) = store.mailbox_side(&user, guid, Some(&BTreeSet::new())) else {
                    continue;
                };
                let Some(into) = side.tombstone.and_then(|t| t.merged_into) else {
                    continue;
                };
                self.full_merges += 1;
                if same_name_rank(&user, into) < same_name_rank(&user, guid) {
                    violations.push(format!(
                        "merged-into-a-lower-rank: {peer}: {user}/{name} ({guid}, {count} message(s)) merged into {into}, which the same-name rule ranks below it"
                    ));
                }
            }
            // A mailbox gone from the peer: its clients drop what they cached.
            self.views
                .retain(|(p, u, g), _| p != peer || now.contains_key(&(u.clone(), *g)));
            for ((user, guid), s) in now {
                let label = |d: &Digest| {
                    oracle
                        .appended
                        .get(d)
                        .map_or_else(|| "?".to_string(), |a| a.label.clone())
                };
                if !s.live.is_empty() {
                    held.push((user.clone(), guid, s.uidvalidity));
                }
                let key = (peer.to_string(), user.clone(), guid);
                let fresh = || ClientView {
                    name: s.name.clone(),
                    uidvalidity: s.uidvalidity,
                    uidnext: 0,
                    seen: BTreeSet::new(),
                    count: 0,
                };
                let view = self.views.entry(key).or_insert_with(fresh);
                if view.uidvalidity != s.uidvalidity {
                    if view.count > 0 {
                        self.uidvalidity_changes += 1;
                        if !self
                            .held_mail
                            .contains(&(user.clone(), guid, s.uidvalidity))
                        {
                            violations.push(format!(
                                "uidvalidity-imposed-by-empty-side: {peer}: {user}/{} held {} message(s) under UIDVALIDITY {}, now {}, under which no peer ever held mail there",
                                view.name, view.count, view.uidvalidity, s.uidvalidity
                            ));
                        }
                    }
                    *view = fresh();
                }
                for (uid, digest) in &s.live {
                    if *uid < view.uidnext && !view.seen.contains(&(*uid, *digest)) {
                        violations.push(format!(
                            "appeared-below-uidnext: {peer}: message {} appeared in {user}/{} at UID {uid}, below the UIDNEXT {} its clients saw (UIDVALIDITY {})",
                            label(digest),
                            s.name,
                            view.uidnext,
                            s.uidvalidity
                        ));
                    }
                    view.seen.insert((*uid, *digest));
                }
                view.uidnext = view.uidnext.max(s.uidnext);
                view.count = s.live.len() as u64;
                view.name = s.name;
            }
        }
        self.held_mail.extend(held);
        violations
    }
}
