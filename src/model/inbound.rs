//! The clash decisions of the journal's inbound apply: from the local side of a mailbox and
//! one shipped entry, the changes that take this replica to the merge of the two, or why
//! the entry must be left to a Merkle session with its sender. Pure: the store reads the
//! local side and answers the one question this cannot (does another mailbox hold a name).

use super::{
    changes_for, merge_mailbox, Change, ChangeCounts, Digest, MailboxOutcome, MailboxSide,
    ShippedEntry,
};
use std::collections::BTreeMap;
use thiserror::Error;

/// Why an entry cannot be settled from itself alone: the sender is owed a Merkle session.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum EntryClash {
    /// The UIDVALIDITY rule needs both whole mailboxes.
    #[error("UIDVALIDITY differs")]
    UidValidity,
    /// Either the delete wins (the sender must change) or the mailbox comes back, which
    /// needs it whole.
    #[error("a mailbox deleted here is live on the sender")]
    DeletedHere,
    /// Its messages move to another mailbox, which needs both whole.
    #[error("a mailbox merged into another is live here")]
    MergedAway,
    /// A clash moved the message up on the sender; where to, the entry does not say.
    #[error("a message moved away on the sender")]
    MovedAway,
    /// The merge is not the sender's state: the sender must change too.
    #[error("the merge changes the sender's state too")]
    SenderChanges,
    /// Two GUIDs share a name: the merge rule needs both mailboxes whole.
    #[error("another mailbox holds the name")]
    NameHeld,
}

/// What one inbound entry does here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryDecision {
    /// Apply these changes, in order.
    Apply(Vec<Change>, ChangeCounts),
    /// Drop the entry; the sender needs a Merkle session.
    Clash(EntryClash),
}

/// Decides one entry with the clash rules reconciliation uses. `local` is this replica's side
/// of the entry's mailbox at the entry's UIDs. `name_held(name)` says whether another mailbox
/// of the user holds `name` here and no entry still queued from the same sender moves it
/// away (a swap of names is shipped as two current states); it is asked at most once.
pub fn decide_entry<E>(
    local: &MailboxSide,
    entry: &ShippedEntry,
    name_held: impl FnOnce(&str) -> Result<bool, E>,
) -> Result<EntryDecision, E> {
    let clash = |why| Ok(EntryDecision::Clash(why));
    let incoming = entry.side();
    if let (Some(l), Some(r)) = (&local.record, &incoming.record) {
        if l.uidvalidity != r.uidvalidity {
            return clash(EntryClash::UidValidity);
        }
    }
    if local.record.is_none() && local.tombstone.is_some() && incoming.record.is_some() {
        return clash(EntryClash::DeletedHere);
    }
    let outcome = merge_mailbox(local, &incoming);
    if outcome.forward.is_some() {
        return clash(EntryClash::MergedAway);
    }
    let moved_away = local.messages.iter().any(|(uid, m)| {
        !outcome.messages.contains_key(uid)
            && incoming.expunged.get(uid).is_some_and(|ts| {
                ts.iter()
                    .any(|t| t.digest == m.digest && t.origin.is_none())
            })
    });
    if moved_away {
        return clash(EntryClash::MovedAway);
    }
    if !agrees(&outcome, &incoming) {
        return clash(EntryClash::SenderChanges);
    }
    if let Some(r) = &outcome.record {
        if name_held(&r.name)? {
            return clash(EntryClash::NameHeld);
        }
    }
    let bodies: BTreeMap<Digest, &Vec<u8>> =
        entry.bodies.iter().map(|b| (Digest::of(b), b)).collect();
    let (changes, counts) = changes_for(&entry.user, local, &outcome, |m| {
        bodies.get(&m.digest).map(|b| (*b).clone())
    });
    Ok(EntryDecision::Apply(changes, counts))
}

/// Whether the two agree on everything the tree hashes (not `last_change`, not tombstones,
/// not a message's unhashed metadata).
fn agrees(outcome: &MailboxOutcome, incoming: &MailboxSide) -> bool {
    let same_record = match (&outcome.record, &incoming.record) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            (
                a.guid,
                &a.name,
                a.uidvalidity,
                a.uidnext,
                a.subscribed,
                a.name_stamp,
                a.subscribed_stamp,
            ) == (
                b.guid,
                &b.name,
                b.uidvalidity,
                b.uidnext,
                b.subscribed,
                b.name_stamp,
                b.subscribed_stamp,
            )
        }
        _ => false,
    };
    same_record
        && outcome.messages.len() == incoming.messages.len()
        && outcome.messages.iter().all(|(uid, m)| {
            incoming
                .messages
                .get(uid)
                .is_some_and(|x| x.digest == m.digest && x.flags == m.flags)
        })
}
