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
    let mut outcome = merge_mailbox(local, &incoming);
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
    hold_back_uidnext(&mut outcome, local);
    let bodies: BTreeMap<Digest, &Vec<u8>> =
        entry.bodies.iter().map(|b| (Digest::of(b), b)).collect();
    let (changes, counts) = changes_for(&entry.user, local, &outcome, |m| {
        bodies.get(&m.digest).map(|b| (*b).clone())
    });
    Ok(EntryDecision::Apply(changes, counts))
}

/// An entry carries its sender's record as it is when shipped, so its UIDNEXT may already
/// count mail that later entries (or another sender) bring. Taking it here would show this
/// replica's IMAP clients a UIDNEXT past mail it does not hold yet, and that mail would then
/// have to be renumbered when it comes (a message never appears below a UIDNEXT clients
/// may have seen). So the UIDNEXT rises only past the UIDs the entry settles here; the rest
/// comes with the entries that bring the mail, or with the next Merkle session.
fn hold_back_uidnext(outcome: &mut MailboxOutcome, local: &MailboxSide) {
    let Some(record) = outcome.record.as_mut() else {
        return;
    };
    let floor = local.record.as_ref().map_or(1, |l| l.uidnext);
    let top = [
        outcome.messages.keys().next_back(),
        outcome.expunged.keys().next_back(),
    ]
    .into_iter()
    .flatten()
    .max()
    .map_or(1, |uid| uid.saturating_add(1));
    record.uidnext = record.uidnext.min(floor.max(top));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FlagSet, MailboxGuid, MailboxRecord, Md5, MessageRecord};
    use std::convert::Infallible;

    use crate::model::stamp::test_stamp as st;

    fn record(uidvalidity: u32, uidnext: u32) -> MailboxRecord {
        MailboxRecord {
            guid: MailboxGuid([1; 16]),
            name: "Box".into(),
            uidvalidity,
            uidnext,
            subscribed: false,
            name_stamp: st(1),
            subscribed_stamp: st(1),
            last_change: st(1),
        }
    }

    fn entry(record: MailboxRecord, body: Option<&[u8]>) -> ShippedEntry {
        let mut e = ShippedEntry {
            seq: 1,
            at_ms: 1,
            user: "u".into(),
            guid: record.guid,
            record: Some(record),
            tombstone: None,
            messages: BTreeMap::new(),
            expunged: BTreeMap::new(),
            bodies: Vec::new(),
        };
        if let Some(b) = body {
            let m = MessageRecord {
                md5: Md5::of(b),
                digest: Digest::of(b),
                size: b.len() as u64,
                internal_date: 0,
                flags: FlagSet::default(),
                appended: st(2),
            };
            e.messages.insert(1, m);
            e.bodies.push(b.to_vec());
        }
        e
    }

    fn decide(local: &MailboxSide, entry: &ShippedEntry, name_held: bool) -> (EntryDecision, bool) {
        let mut asked = false;
        let d = decide_entry::<Infallible>(local, entry, |_| {
            asked = true;
            Ok(name_held)
        });
        match d {
            Ok(d) => (d, asked),
            Err(e) => match e {},
        }
    }

    #[test]
    fn a_new_mailbox_with_a_message_is_applied_with_its_body() {
        let e = entry(record(1, 2), Some(b"hello"));
        let (d, asked) = decide(&MailboxSide::default(), &e, false);
        assert!(asked, "the name is checked before applying");
        let EntryDecision::Apply(changes, counts) = d else {
            panic!("expected Apply, got {d:?}");
        };
        assert!(counts.mailbox_changed);
        assert_eq!(counts.added, 1);
        assert!(matches!(&changes[0], Change::Mailbox { .. }));
        assert!(
            matches!(&changes[1], Change::Message { uid: 1, body: Some(b), .. } if b == b"hello")
        );
    }

    #[test]
    fn a_uidvalidity_clash_is_left_to_a_session_without_asking_for_the_name() {
        let local = MailboxSide {
            record: Some(record(7, 2)),
            ..Default::default()
        };
        let (d, asked) = decide(&local, &entry(record(1, 2), None), false);
        assert_eq!(d, EntryDecision::Clash(EntryClash::UidValidity));
        assert!(!asked);
    }

    #[test]
    fn a_name_held_by_another_mailbox_is_left_to_a_session() {
        let (d, _) = decide(&MailboxSide::default(), &entry(record(1, 2), None), true);
        assert_eq!(d, EntryDecision::Clash(EntryClash::NameHeld));
    }

    fn message(body: &[u8], ms: u64) -> MessageRecord {
        MessageRecord {
            md5: Md5::of(body),
            digest: Digest::of(body),
            size: body.len() as u64,
            internal_date: 0,
            flags: FlagSet::default(),
            appended: st(ms),
        }
    }

    /// The sender appended at 5 and 6 (its UIDNEXT is 7) and ships them in two entries,
    /// each with its record as it is now.
    fn in_order_entries() -> (ShippedEntry, ShippedEntry) {
        let mut first = entry(record(1, 7), None);
        first.messages.insert(5, message(b"five", 5));
        first.bodies.push(b"five".to_vec());
        let mut second = entry(record(1, 7), None);
        second.messages.insert(6, message(b"six", 6));
        second.bodies.push(b"six".to_vec());
        (first, second)
    }

    fn apply(local: &mut MailboxSide, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Mailbox { record, .. } => local.record = Some(record.clone()),
                Change::Message { uid, record, .. } => {
                    local.messages.insert(*uid, record.clone());
                }
                other => panic!("unexpected change {other:?}"),
            }
        }
    }

    #[test]
    fn mail_shipped_in_order_keeps_its_uids_and_uidnext_never_runs_ahead() {
        let (first, second) = in_order_entries();
        let mut local = MailboxSide {
            record: Some(record(1, 5)),
            ..Default::default()
        };
        let (d, _) = decide(&local, &first, false);
        let EntryDecision::Apply(changes, _) = d else {
            panic!("expected Apply, got {d:?}");
        };
        apply(&mut local, &changes);
        assert_eq!(
            local.record.as_ref().map(|r| r.uidnext),
            Some(6),
            "UIDNEXT stops after the mail held here: 6 is not here yet"
        );
        local.messages.clear();
        let (d, _) = decide(&local, &second, false);
        let EntryDecision::Apply(changes, counts) = d else {
            panic!("expected Apply, got {d:?}");
        };
        assert_eq!(counts.added, 1);
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::Message { uid: 6, .. })),
            "{changes:?}"
        );
        apply(&mut local, &changes);
        assert_eq!(local.record.map(|r| r.uidnext), Some(7));
    }

    #[test]
    fn mail_below_the_local_uidnext_is_left_to_a_session_that_renumbers_it() {
        // This replica's UIDNEXT is past 5 already (its clients may have seen 6) and it holds
        // nothing at 5: the message must get a new UID on both sides.
        let (first, _) = in_order_entries();
        let local = MailboxSide {
            record: Some(record(1, 6)),
            ..Default::default()
        };
        let (d, _) = decide(&local, &first, false);
        assert_eq!(d, EntryDecision::Clash(EntryClash::SenderChanges));
    }

    #[test]
    fn an_empty_mailbox_with_another_uidvalidity_is_left_to_a_session() {
        // The session decides by both whole mailboxes (the side with more mail wins); an
        // entry shows neither, so it never applies a UIDVALIDITY, in either direction.
        let mut e = entry(record(7, 2), Some(b"hello"));
        for local in [
            MailboxSide {
                record: Some(record(9, 1)),
                ..Default::default()
            },
            MailboxSide {
                record: Some(record(3, 1)),
                ..Default::default()
            },
        ] {
            assert_eq!(
                decide(&local, &e, false).0,
                EntryDecision::Clash(EntryClash::UidValidity)
            );
        }
        e.messages.clear();
        let local = MailboxSide {
            record: Some(record(3, 4)),
            messages: BTreeMap::from([(1, message(b"one", 1))]),
            ..Default::default()
        };
        assert_eq!(
            decide(&local, &e, false).0,
            EntryDecision::Clash(EntryClash::UidValidity)
        );
    }

    #[test]
    fn clash_reasons_read_as_before() {
        assert_eq!(
            EntryClash::SenderChanges.to_string(),
            "the merge changes the sender's state too"
        );
    }
}
