//! From a merge outcome to the changes one side must apply to reach it: pure, shared by the
//! initiator's session and the journal's inbound apply.

use super::{Change, MailboxOutcome, MailboxSide, MessageRecord};

/// What a side's changes amount to, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    /// Messages this side gains (copies and renumbered messages).
    pub added: u64,
    /// Live messages this side loses to an expunge (or to a UIDVALIDITY reset).
    pub expunged: u64,
    /// Messages whose flags change.
    pub flag_updates: u64,
    /// Whether the mailbox record changes (created, renamed, resubscribed, UIDNEXT, deleted).
    pub mailbox_changed: bool,
}

/// The changes that take `side` to `outcome`, in an order the store can apply: the record
/// first, then messages added or updated (before any removal, so a body moving between UIDs
/// keeps a reference), then expunges and removals, then the mailbox's deletion. A side whose
/// UIDVALIDITY the outcome replaces is cleared first instead: its old UIDs mean nothing under
/// the new UIDVALIDITY, and the store's rule that an identity live at two UIDs stays at the
/// higher one must not keep an old placement over the new (a body released earlier in the
/// same transaction is still held, so nothing is fetched again).
/// `body` says whether this side needs the body of a new message shipped with it.
pub fn changes_for(
    user: &str,
    side: &MailboxSide,
    outcome: &MailboxOutcome,
    mut body: impl FnMut(&MessageRecord) -> Option<Vec<u8>>,
) -> (Vec<Change>, ChangeCounts) {
    let mut changes = Vec::new();
    let mut counts = ChangeCounts::default();
    let Some(record) = &outcome.record else {
        if side.record.is_some() || (side.tombstone.is_none() && outcome.tombstone.is_some()) {
            if let Some(tombstone) = &outcome.tombstone {
                counts.mailbox_changed = side.record.is_some();
                counts.expunged += side.messages.len() as u64;
                // Before a merged mailbox goes: the writers' expunges of what it still holds,
                // and what a writer's delete of the mailbox it merged into takes (`reset`).
                for (uid, m) in side.messages.iter().filter(|_| side.record.is_some()) {
                    let guid = tombstone.guid;
                    let user = user.to_string();
                    let uid = *uid;
                    match outcome
                        .expunged
                        .get(&uid)
                        .and_then(|ts| ts.iter().find(|t| t.digest == m.digest))
                    {
                        Some(t) => changes.push(Change::Expunge {
                            user,
                            guid,
                            uid,
                            tombstone: *t,
                        }),
                        None if outcome.reset => changes.push(Change::Remove { user, guid, uid }),
                        None => {}
                    }
                }
                changes.push(Change::DeleteMailbox {
                    user: user.to_string(),
                    tombstone: tombstone.clone(),
                });
            }
        }
        return (changes, counts);
    };
    let guid = record.guid;
    if side.record.as_ref() != Some(record) {
        counts.mailbox_changed = side.record.as_ref().is_none_or(|r| {
            (r.name.as_str(), r.subscribed, r.uidnext, r.uidvalidity)
                != (
                    record.name.as_str(),
                    record.subscribed,
                    record.uidnext,
                    record.uidvalidity,
                )
        });
        changes.push(Change::Mailbox {
            user: user.to_string(),
            record: record.clone(),
        });
    }
    let cleared = outcome.reset
        && side
            .record
            .as_ref()
            .is_some_and(|r| r.uidvalidity != record.uidvalidity);
    let mut removed = std::collections::BTreeSet::new();
    if cleared {
        for (uid, m) in &side.messages {
            if outcome.messages.get(uid).map(|o| o.digest) != Some(m.digest) {
                counts.expunged += 1;
                removed.insert(*uid);
                changes.push(Change::Remove {
                    user: user.to_string(),
                    guid,
                    uid: *uid,
                });
            }
        }
    }
    for (uid, m) in &outcome.messages {
        match side.messages.get(uid).filter(|_| !removed.contains(uid)) {
            Some(have) if have == m => {}
            Some(have) if have.digest == m.digest => {
                counts.flag_updates += 1;
                changes.push(Change::Message {
                    user: user.to_string(),
                    guid,
                    uid: *uid,
                    record: m.clone(),
                    body: None,
                });
            }
            _ => {
                counts.added += 1;
                changes.push(Change::Message {
                    user: user.to_string(),
                    guid,
                    uid: *uid,
                    record: m.clone(),
                    body: body(m),
                });
            }
        }
    }
    for (uid, m) in side.messages.iter().filter(|_| !cleared) {
        match outcome.messages.get(uid) {
            Some(o) if o.digest == m.digest => continue,
            Some(_) => {
                // Replaced at the same UID (a UIDVALIDITY reset): the Message change above
                // already removed the old one.
                counts.expunged += 1;
                continue;
            }
            None => counts.expunged += 1,
        }
        match outcome
            .expunged
            .get(uid)
            .and_then(|ts| ts.iter().find(|t| t.digest == m.digest))
        {
            Some(t) => changes.push(Change::Expunge {
                user: user.to_string(),
                guid,
                uid: *uid,
                tombstone: *t,
            }),
            None => changes.push(Change::Remove {
                user: user.to_string(),
                guid,
                uid: *uid,
            }),
        }
    }
    // Tombstones this side lacks, so that a third replica learns of the expunge from it too.
    for (uid, tombs) in &outcome.expunged {
        for t in tombs {
            let has = side.expunged.get(uid).is_some_and(|ts| {
                ts.iter()
                    .any(|x| x.digest == t.digest && x.origin >= t.origin)
            });
            let expunged_above = side.messages.get(uid).is_some_and(|m| m.digest == t.digest);
            if !has && !expunged_above {
                changes.push(Change::Expunge {
                    user: user.to_string(),
                    guid,
                    uid: *uid,
                    tombstone: *t,
                });
            }
        }
    }
    (changes, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Digest, FlagSet, MailboxGuid, MailboxRecord, Md5, Stamp};

    fn message(d: u8) -> MessageRecord {
        MessageRecord {
            md5: Md5([d; 16]),
            digest: Digest([d; 32]),
            size: 1,
            internal_date: 0,
            flags: FlagSet::default(),
            appended: Stamp {
                ms: 1,
                counter: 0,
                node: 1,
            },
        }
    }

    fn side(uidvalidity: u32, messages: &[(u32, u8)]) -> MailboxSide {
        let stamp = Stamp {
            ms: 1,
            counter: 0,
            node: 1,
        };
        MailboxSide {
            record: Some(MailboxRecord {
                guid: MailboxGuid([1; 16]),
                name: "Box".into(),
                uidvalidity,
                uidnext: 5,
                subscribed: false,
                name_stamp: stamp,
                subscribed_stamp: stamp,
                last_change: stamp,
            }),
            messages: messages.iter().map(|(u, d)| (*u, message(*d))).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_side_that_loses_its_uidvalidity_is_cleared_before_the_new_placements() {
        // The winner holds message 7 at UID 1; the loser held it at 4: it must end at 1.
        let winner = side(100, &[(1, 7), (2, 8)]);
        let loser = side(200, &[(4, 7)]);
        let outcome = crate::model::merge_mailbox(&winner, &loser);
        assert_eq!(outcome.record.as_ref().map(|r| r.uidvalidity), Some(100));
        let (changes, counts) = changes_for("u", &loser, &outcome, |_| None);
        let order: Vec<(&str, u32)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Remove { uid, .. } => Some(("remove", *uid)),
                Change::Message { uid, .. } => Some(("message", *uid)),
                _ => None,
            })
            .collect();
        assert_eq!(order, vec![("remove", 4), ("message", 1), ("message", 2)]);
        assert_eq!((counts.added, counts.expunged), (2, 1));
        // The winner only gains what it lacked: nothing is removed there.
        let (changes, _) = changes_for("u", &winner, &outcome, |_| None);
        assert!(!changes.iter().any(|c| matches!(c, Change::Remove { .. })));
    }
}
