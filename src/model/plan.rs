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
/// keeps a reference), then expunges and removals, then the mailbox's deletion.
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
    for (uid, m) in &outcome.messages {
        match side.messages.get(uid) {
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
    for (uid, m) in &side.messages {
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
