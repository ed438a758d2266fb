//! The index a live Maildir keeps beside the records (docs/MAILDIR.md, "The live backend").
//!
//! A store made with `init --maildir` serves mail that a real IMAP server also serves from a
//! Maildir tree. The records and the tree stay what they are everywhere else; these tables say
//! how they stand against the disk:
//! - per message, the file that holds it and the flags its name showed when index and disk
//!   last agreed (the base of a three-way comparison: a flag that differs from it on disk was
//!   changed by the mail server, one that differs from it in the index came from a peer);
//! - the files the index no longer has and the disk still owes a removal;
//! - per mailbox, the folder as it was when they last agreed (name, subscription), and what
//!   its directories looked like then (a print the Maildir side makes and reads: a folder
//!   whose print has not moved, and that the index owes nothing, needs no reading);
//! - the mailboxes whose records changed since their folder was last brought in step: the
//!   durable outbox. It is written in the same transaction as the change, so a crash between
//!   the commit and the disk work leaves the work owed, never forgotten.
//!
//! The store gives these rows no meaning (file names and flag names are strings to it); the
//! Maildir side (src/maildir/backend.rs) reads and settles them.

use super::error::StoreError;
use super::file_bodies::home_key;
use super::keys;
use super::tables::{
    MAILBOXES, MESSAGES, META, MIRROR_FILES, MIRROR_FOLDERS, MIRROR_HOMES, MIRROR_OWED,
    MIRROR_OWED_UIDS, MIRROR_PRINTS, MIRROR_UNLINKS,
};
use super::tx::{decode, decode_message, encode, Tx};
use super::Store;
use crate::model::{Digest, FlagName, FlagOp, MailboxGuid, MailboxRecord, MessageRecord};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The META key that holds the Maildir template of a live-Maildir store.
pub(crate) const MAILDIR_KEY: &str = "maildir_template";

/// The file that holds one message, as index and disk last agreed on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRow {
    /// The file's base name (its name up to the first ':'): the uidlist's key.
    pub base: String,
    /// The flags its name showed when index and disk last agreed.
    pub disk_flags: Vec<String>,
}

/// A mailbox's folder, as index and disk last agreed on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderRow {
    /// The mailbox name the folder's directory has.
    pub name: String,
    pub subscribed: bool,
    pub uidvalidity: u32,
}

/// Which write a mailbox's owed mark came from: settling with an older token leaves the mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwedToken {
    stamp: [u8; 12],
    /// Whether the owed UIDs name every message changed since the folder last agreed with
    /// the index (false for a mark from before format 4).
    complete: bool,
}

impl OwedToken {
    /// Whether the mailbox's owed UIDs ([`MailboxMirror::owed_uids`]) name every message
    /// changed since its folder last agreed with the index: then the index → disk half need
    /// look at those only.
    pub fn complete(&self) -> bool {
        self.complete
    }
}

/// The write that last changed a message owed to the disk (see [`MailboxMirror::owed_uids`]).
pub type UidToken = [u8; 12];

/// Everything the index says of one mailbox that its folder must show.
#[derive(Clone, Debug)]
pub struct MailboxMirror {
    pub guid: MailboxGuid,
    /// `None` when the mailbox was deleted (its folder, if any, is owed a removal).
    pub record: Option<MailboxRecord>,
    /// Live messages in UID order.
    pub messages: Vec<(u32, MessageRecord)>,
    pub files: BTreeMap<u32, FileRow>,
    /// Base names of files the disk still owes a removal.
    pub unlinks: Vec<String>,
    /// For those of them whose name the index knew when it let them go, the flags it showed:
    /// where to look first.
    pub unlink_flags: BTreeMap<String, Vec<String>>,
    pub folder: Option<FolderRow>,
    pub owed: Option<OwedToken>,
    /// The UIDs whose messages changed since the folder last agreed with the index, each with
    /// the write that last changed it (settled by [`MirrorEdit::OwedUids`]).
    pub owed_uids: Vec<(u32, UidToken)>,
    /// Whether `messages` and `files` hold every message of the mailbox, or only those at the
    /// UIDs [`Store::mailbox_mirror_at`] was asked for and the owed ones.
    pub whole: bool,
}

/// What the index says of one mailbox's folder, without its messages: enough to tell whether
/// the folder needs a look at all.
#[derive(Clone, Debug)]
pub struct FolderState {
    pub guid: MailboxGuid,
    /// `None` when the mailbox was deleted.
    pub record: Option<MailboxRecord>,
    pub folder: Option<FolderRow>,
    pub owed: Option<OwedToken>,
    /// The print of the folder's directories when index and disk last agreed, if one was
    /// kept (see [`MirrorEdit::Print`]).
    pub print: Option<Vec<u8>>,
}

/// A mail server's flag change on one message, seen on disk (see
/// [`Store::disk_flags_changed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFlags {
    pub uid: u32,
    pub added: Vec<FlagName>,
    pub removed: Vec<FlagName>,
    /// The file's agreed state from now on.
    pub row: FileRow,
}

/// One thing the Maildir side settled, recorded by [`Store::mirror_settle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorEdit {
    /// No file holds the message at `uid` any more (its folder is gone).
    NoFile { uid: u32 },
    /// The file `row` was placed (delivered, re-delivered, adopted or renamed) for the message
    /// `digest` at `uid`. Recorded only if that message is still at `uid` when the edit is
    /// settled: a write that came meanwhile (a peer's move or clash) may have taken it away,
    /// and then the file holds mail the index has elsewhere, so it is owed a removal instead.
    /// There is no unchecked way to record a file: a pass works from what it read before
    /// its disk work, and the daemon's other threads write meanwhile.
    Held {
        uid: u32,
        digest: Digest,
        row: FileRow,
    },
    /// A file owed a removal is gone.
    Unlinked { base: String },
    /// The folder as it now stands (or gone; its print goes with it).
    Folder(Option<FolderRow>),
    /// What the folder's directories look like now that index and disk agree, or `None`
    /// when that is not known (the next pass reads the folder).
    Print(Option<Vec<u8>>),
    /// The disk shows these owed messages now: each is no longer owed, unless a write changed
    /// it again since it was read (its token differs).
    OwedUids(Vec<(u32, UidToken)>),
}

impl Tx<'_> {
    /// Notes that a mailbox's folder no longer matches its records.
    pub(crate) fn owe_mirror(&mut self, user: &str, guid: MailboxGuid) {
        if self.mirror {
            self.owed.insert((user.to_string(), guid));
        }
    }

    /// Notes that the message at `uid` changed (added, changed or removed): its mailbox's
    /// folder no longer matches, in that message.
    pub(crate) fn owe_message(&mut self, user: &str, guid: MailboxGuid, uid: u32) {
        if self.mirror {
            self.owed.insert((user.to_string(), guid));
            self.owed_uids.insert((user.to_string(), guid, uid));
        }
    }

    /// The message at `uid` is leaving (expunged, moved, replaced): its file, if it has one,
    /// is owed a removal.
    pub(crate) fn file_leaves(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
        digest: &crate::model::Digest,
    ) -> Result<(), StoreError> {
        if !self.mirror {
            return Ok(());
        }
        self.txn
            .open_table(MIRROR_HOMES)?
            .remove(home_key(digest, user, guid, uid).as_slice())?;
        let mut files = self.txn.open_table(MIRROR_FILES)?;
        let row = files
            .remove(keys::message(user, guid, uid).as_slice())?
            .map(|v| decode::<FileRow>(v.value(), "a Maildir file row"))
            .transpose()?;
        if let Some(row) = row {
            self.txn.open_table(MIRROR_UNLINKS)?.insert(
                keys::source(user, guid, &row.base).as_slice(),
                encode(&row.disk_flags)?.as_slice(),
            )?;
            let folder = match self
                .txn
                .open_table(MIRROR_FOLDERS)?
                .get(keys::mailbox(user, guid).as_slice())?
            {
                Some(v) => Some(decode::<FolderRow>(v.value(), "a Maildir folder row")?.name),
                None => self.get_mailbox(user, guid)?.map(|m| m.name),
            };
            // Its body may live on (a move): kept from this file before the file goes.
            if let Some(folder) = folder {
                self.leaving
                    .push((*digest, user.to_string(), folder, row.base));
            }
        }
        Ok(())
    }

    /// Records that the message at `uid` is held by the file `base` with `flags` on disk
    /// (the scanner found it there).
    pub(crate) fn file_found(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
        row: &FileRow,
    ) -> Result<(), StoreError> {
        if self.mirror {
            self.txn.open_table(MIRROR_FILES)?.insert(
                keys::message(user, guid, uid).as_slice(),
                encode(row)?.as_slice(),
            )?;
            if let Some(message) = self.get_message(user, guid, uid)? {
                found_home(self.txn, self.bodies, &message.digest, user, guid, uid)?;
            }
        }
        Ok(())
    }

    /// What this transaction changed in `guid` came from its folder as the disk shows it now
    /// (a pass's import, flag change or expunge found on disk): index and disk agree on it, and
    /// the mailbox is not marked owed for it. A mark an earlier write left stays.
    pub(crate) fn settled_by_disk(&mut self, user: &str, guid: MailboxGuid) {
        self.owed.remove(&(user.to_string(), guid));
        self.owed_uids
            .retain(|(u, g, _)| !(u.as_str() == user && *g == guid));
    }

    /// At the end of the transaction: marks every mailbox it changed as owed to the disk.
    pub(crate) fn write_owed(&mut self) -> Result<(), StoreError> {
        if self.owed.is_empty() {
            return Ok(());
        }
        // A fresh stamp, not the clock's last one: a transaction that only applies a peer's
        // changes stamps nothing, and its mark must still differ from the one a pass read
        // before it, or that pass, settling from what it read, would clear this write's
        // mark too and leave its disk work undone (seen at 100 000 messages: a move applied
        // by a session never reached the folder).
        let token = self.stamp().to_bytes();
        let mut owed = self.txn.open_table(MIRROR_OWED)?;
        for (user, guid) in std::mem::take(&mut self.owed) {
            let key = keys::mailbox(&user, guid);
            // A mark that may not name every change stays so until a pass looks at every
            // message and clears it.
            let complete = match owed.get(key.as_slice())? {
                Some(v) => owed_token(v.value())?.complete,
                None => true,
            };
            let mut mark = token.to_vec();
            mark.push(u8::from(complete));
            owed.insert(key.as_slice(), mark.as_slice())?;
        }
        let mut uids = self.txn.open_table(MIRROR_OWED_UIDS)?;
        for (user, guid, uid) in std::mem::take(&mut self.owed_uids) {
            uids.insert(keys::message(&user, guid, uid).as_slice(), token.as_slice())?;
        }
        Ok(())
    }
}

impl Store {
    /// Creates a store whose mail is the live Maildir tree `template` names (`%u` for the
    /// user). The template is kept as given; the Maildir side checks it before this.
    pub fn init_maildir(
        dir: &std::path::Path,
        node_id: &str,
        template: &str,
    ) -> Result<Store, StoreError> {
        let files = super::file_bodies::mail_files_for(template)?;
        let mut store = Store::init(dir, node_id)?;
        store.bodies = Box::new(super::file_bodies::FileBodies::new(
            files,
            dir.join(super::file_bodies::SPOOL_DIR),
        ));
        let txn = store.begin_write()?;
        txn.open_table(META)?
            .insert(MAILDIR_KEY, template.as_bytes())?;
        txn.commit()?;
        store.maildir = Some(template.to_string());
        Ok(store)
    }

    /// Removes the spool files of bodies let go since the last sweep (delivered, freed) that
    /// no committed row names, or (`everything`) every spool file no committed row names,
    /// also those a crash or an aborted transaction left: a live-Maildir store's pass sweeps
    /// after it delivered, and opening the store sweeps everything. Runs in a write
    /// transaction of its own, so no writer is half-way; returns how many files went (0 for a
    /// store that holds its mail).
    pub fn sweep_spool(&self, everything: bool) -> Result<u64, StoreError> {
        if self.maildir.is_none() {
            return Ok(0);
        }
        let txn = self.begin_write()?;
        let removed = self.bodies.sweep(&txn, everything)?;
        txn.abort()?;
        Ok(removed)
    }

    /// The file that holds the body of `digest` alone (the spool's copy), if there is one: a
    /// delivery may link it into a folder instead of writing the bytes again. The caller reads
    /// and checks the bytes through [`Store::body`] as before.
    pub fn spooled_file(
        &self,
        digest: &crate::model::Digest,
    ) -> Result<Option<std::path::PathBuf>, StoreError> {
        self.bodies.spooled_file(&self.read_txn()?, digest)
    }

    /// The Maildir template of a live-Maildir store (`None` for a store that holds its mail).
    pub fn maildir_template(&self) -> Option<&str> {
        self.maildir.as_deref()
    }

    /// The mailboxes owed to the disk, oldest mark first is not promised: in key order.
    pub fn owed_mailboxes(&self) -> Result<Vec<(String, MailboxGuid)>, StoreError> {
        let txn = self.read_txn()?;
        let owed = txn.open_table(MIRROR_OWED)?;
        let mut out = Vec::new();
        for item in owed.iter()? {
            let (k, _) = item?;
            let (user, guid, _) = keys::split_mailbox_prefix(k.value())
                .ok_or_else(|| StoreError::Corrupt("malformed owed-mailbox key".into()))?;
            out.push((user, guid));
        }
        Ok(out)
    }

    /// Every mailbox of `user` the index or the disk knows of: live ones, deleted ones whose
    /// folder has not been removed yet, and any still marked owed.
    pub fn user_mirror(&self, user: &str) -> Result<Vec<MailboxMirror>, StoreError> {
        let txn = self.read_txn()?;
        folder_states_in(&txn, user)?
            .into_iter()
            .map(|state| mailbox_mirror_in(&txn, user, state.guid))
            .collect()
    }

    /// [`FolderState`] of every mailbox [`Store::user_mirror`] would list, without reading
    /// their messages: what a pass needs to skip folders that show no change.
    pub fn user_folders(&self, user: &str) -> Result<Vec<FolderState>, StoreError> {
        folder_states_in(&self.read_txn()?, user)
    }

    /// What the index says of one mailbox that its folder must show.
    pub fn mailbox_mirror(
        &self,
        user: &str,
        guid: MailboxGuid,
    ) -> Result<MailboxMirror, StoreError> {
        let txn = self.read_txn()?;
        mailbox_mirror_in(&txn, user, guid)
    }

    /// [`Store::mailbox_mirror`] with the messages and files at `uids` only (`whole` is
    /// false): what a pass needs that looks at a few files of a folder the index owes nothing,
    /// whose uidlist gives the UIDs of the files it names. A mailbox of 100 000 messages costs
    /// as little as one of ten.
    pub fn mailbox_mirror_at(
        &self,
        user: &str,
        guid: MailboxGuid,
        uids: &std::collections::BTreeSet<u32>,
    ) -> Result<MailboxMirror, StoreError> {
        let txn = self.read_txn()?;
        mirror_rows_in(&txn, user, guid, Some(uids))
    }

    /// The mailbox's owed mark, if it has one (see [`Store::owed_mailboxes`]).
    pub fn owed_token(
        &self,
        user: &str,
        guid: MailboxGuid,
    ) -> Result<Option<OwedToken>, StoreError> {
        let txn = self.read_txn()?;
        let owed = txn.open_table(MIRROR_OWED)?;
        let token = owed.get(keys::mailbox(user, guid).as_slice())?;
        token.map(|v| owed_token(v.value())).transpose()
    }

    /// Records what the Maildir side settled for one mailbox, and clears its owed mark if no
    /// write came after `owed` was read. Changes no record and no tree node: nothing here is
    /// replicated.
    pub fn mirror_settle(
        &self,
        user: &str,
        guid: MailboxGuid,
        edits: &[MirrorEdit],
        owed: Option<OwedToken>,
    ) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        self.settle_in(&txn, user, guid, edits, owed)?;
        // Durable: it would make earlier staging commits durable too, spool rows included.
        self.before_durable_commit()?;
        txn.commit()?;
        Ok(())
    }

    /// [`Store::mirror_settle`] of several of `user`'s mailboxes in one transaction (one
    /// commit where a pass over a user's folders made one per folder), in order.
    pub fn mirror_settle_all(
        &self,
        user: &str,
        settles: &[MirrorSettle],
    ) -> Result<(), StoreError> {
        if settles.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        for s in settles {
            self.settle_in(&txn, user, s.guid, &s.edits, s.owed)?;
        }
        self.before_durable_commit()?;
        txn.commit()?;
        Ok(())
    }

    fn settle_in(
        &self,
        txn: &redb::WriteTransaction,
        user: &str,
        guid: MailboxGuid,
        edits: &[MirrorEdit],
        owed: Option<OwedToken>,
    ) -> Result<(), StoreError> {
        // Files placed for a message that moved away meanwhile, whose bytes may be the only
        // ones left on this side: (digest, base).
        let mut strays: Vec<(crate::model::Digest, String)> = Vec::new();
        let mut stray_folder: Option<String> = None;
        {
            let mut files = txn.open_table(MIRROR_FILES)?;
            let mut unlinks = txn.open_table(MIRROR_UNLINKS)?;
            let mut folders = txn.open_table(MIRROR_FOLDERS)?;
            let mut prints = txn.open_table(MIRROR_PRINTS)?;
            let messages = txn.open_table(MESSAGES)?;
            for edit in edits {
                match edit {
                    MirrorEdit::NoFile { uid } => {
                        files.remove(keys::message(user, guid, *uid).as_slice())?;
                        if let Some(digest) = digest_at(&messages, user, guid, *uid)? {
                            txn.open_table(MIRROR_HOMES)?
                                .remove(home_key(&digest, user, guid, *uid).as_slice())?;
                        }
                    }
                    MirrorEdit::Held { uid, digest, row } => {
                        let key = keys::message(user, guid, *uid);
                        let there = match messages.get(key.as_slice())? {
                            Some(v) => decode_message(v.value())?.1.digest == *digest,
                            None => false,
                        };
                        if there {
                            files.insert(key.as_slice(), encode(row)?.as_slice())?;
                            found_home(txn, self.bodies.as_ref(), digest, user, guid, *uid)?;
                        } else {
                            unlinks.insert(
                                keys::source(user, guid, &row.base).as_slice(),
                                [].as_slice(),
                            )?;
                            strays.push((*digest, row.base.clone()));
                        }
                    }
                    MirrorEdit::Unlinked { base } => {
                        unlinks.remove(keys::source(user, guid, base).as_slice())?;
                    }
                    MirrorEdit::Folder(Some(row)) => {
                        folders.insert(
                            keys::mailbox(user, guid).as_slice(),
                            encode(row)?.as_slice(),
                        )?;
                    }
                    MirrorEdit::Folder(None) | MirrorEdit::Print(None) => {
                        if matches!(edit, MirrorEdit::Folder(None)) {
                            folders.remove(keys::mailbox(user, guid).as_slice())?;
                            // No folder, nothing owed to it.
                            let (start, end) = keys::uid_range(user, guid, 0, u32::MAX);
                            txn.open_table(MIRROR_OWED_UIDS)?
                                .retain_in(start.as_slice()..=end.as_slice(), |_, _| false)?;
                        }
                        prints.remove(keys::mailbox(user, guid).as_slice())?;
                    }
                    MirrorEdit::OwedUids(settled) => {
                        let mut owed_uids = txn.open_table(MIRROR_OWED_UIDS)?;
                        for (uid, token) in settled {
                            let key = keys::message(user, guid, *uid);
                            let now = owed_uids.get(key.as_slice())?.map(|v| v.value().to_vec());
                            if now.as_deref() == Some(token.as_slice()) {
                                owed_uids.remove(key.as_slice())?;
                            }
                        }
                    }
                    MirrorEdit::Print(Some(print)) => {
                        prints.insert(keys::mailbox(user, guid).as_slice(), print.as_slice())?;
                    }
                }
            }
            if !strays.is_empty() {
                // The folder as this settle leaves it (the pass may have renamed it).
                stray_folder = match edits.iter().find_map(|e| match e {
                    MirrorEdit::Folder(Some(row)) => Some(row.name.clone()),
                    _ => None,
                }) {
                    Some(name) => Some(name),
                    None => folders
                        .get(keys::mailbox(user, guid).as_slice())?
                        .map(|v| decode::<FolderRow>(v.value(), "a Maildir folder row"))
                        .transpose()?
                        .map(|row| row.name),
                };
            }
            if let Some(token) = owed {
                let mut table = txn.open_table(MIRROR_OWED)?;
                let key = keys::mailbox(user, guid);
                let current = table
                    .get(key.as_slice())?
                    .map(|v| owed_token(v.value()))
                    .transpose()?;
                if current.is_some_and(|c| c.stamp == token.stamp) {
                    table.remove(key.as_slice())?;
                }
            }
        }
        if let Some(folder) = &stray_folder {
            // The message moved while its file was being placed, and the move could not keep
            // its body from the file it had then (a re-delivery removes that one): the bytes
            // are kept from the stray before it goes, if nothing else holds them.
            for (digest, base) in &strays {
                self.bodies
                    .keep_from_file(txn, digest, (user, folder, base))?;
            }
        }
        Ok(())
    }

    /// A mail server's flag changes in one folder, seen on disk, made local writes in one
    /// transaction: for each, `added` set and `removed` cleared on the message at its UID,
    /// each with a fresh stamp, and `row` recorded as the file's agreed state. Flags a peer
    /// changed meanwhile (the index's other flags) are left as they are.
    pub fn disk_flags_changed(
        &self,
        user: &str,
        guid: MailboxGuid,
        changes: &[DiskFlags],
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.write(|tx| disk_flags_in(tx, user, guid, changes))
    }

    /// Files the scanner found gone that the index still holds: the mail server expunged
    /// them. A local expunge of each (tombstones, journal), in one transaction.
    pub fn disk_expunged(
        &self,
        user: &str,
        guid: MailboxGuid,
        uids: &[u32],
    ) -> Result<usize, StoreError> {
        if uids.is_empty() {
            return Ok(0);
        }
        self.write(|tx| disk_expunged_in(tx, user, guid, uids))
    }

    /// What a pass found in one folder, taken in with one transaction (one commit, where
    /// three writes cost three): the files no one numbered before ([`Store::append_found`]),
    /// the flag changes ([`Store::disk_flags_changed`]) and the expunges
    /// ([`Store::disk_expunged`]), in that order, each settling only what it wrote itself.
    /// Fails, changing nothing, where any of them would.
    pub fn disk_found(
        &self,
        user: &str,
        guid: MailboxGuid,
        found: FoundOnDisk,
    ) -> Result<FoundOutcome, StoreError> {
        let FoundOnDisk {
            mailbox,
            new,
            flags,
            expunged,
        } = found;
        if new.is_empty() && flags.is_empty() && expunged.is_empty() {
            return Ok(FoundOutcome::default());
        }
        let name = crate::model::MailboxName::parse(&mailbox)?;
        self.write(|tx| {
            let appended = if new.is_empty() {
                Vec::new()
            } else {
                tx.disk_part(user, guid, |tx| {
                    super::ops::append_in(tx, user, &name, new, true)
                })?
            };
            if !flags.is_empty() {
                tx.disk_part(user, guid, |tx| disk_flags_in(tx, user, guid, &flags))?;
            }
            let expunged = if expunged.is_empty() {
                0
            } else {
                tx.disk_part(user, guid, |tx| disk_expunged_in(tx, user, guid, &expunged))?
            };
            Ok(FoundOutcome { appended, expunged })
        })
    }
}

/// What a pass settled in one mailbox ([`Store::mirror_settle_all`]): the arguments of a
/// [`Store::mirror_settle`].
#[derive(Clone, Debug)]
pub struct MirrorSettle {
    pub guid: MailboxGuid,
    pub edits: Vec<MirrorEdit>,
    pub owed: Option<OwedToken>,
}

/// What one pass found in one folder (see [`Store::disk_found`]).
#[derive(Clone, Debug, Default)]
pub struct FoundOnDisk {
    /// The mailbox's name, as for [`Store::append_found`].
    pub mailbox: String,
    /// Messages in files no index row held, each with its `source`.
    pub new: Vec<super::ops::NewMessage>,
    pub flags: Vec<DiskFlags>,
    /// UIDs whose files are gone.
    pub expunged: Vec<u32>,
}

/// What [`Store::disk_found`] did: each new message's outcome, in order, and how many
/// messages were expunged.
#[derive(Clone, Debug, Default)]
pub struct FoundOutcome {
    pub appended: Vec<super::ops::AppendOutcome>,
    pub expunged: usize,
}

impl Tx<'_> {
    /// Runs `f`, one part of a transaction made of several disk-sourced writes to `guid`:
    /// what `f` settles ([`Tx::settled_by_disk`]) is what `f` itself wrote, never a mark an
    /// earlier part of the transaction left.
    fn disk_part<T>(
        &mut self,
        user: &str,
        guid: MailboxGuid,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let key = (user.to_string(), guid);
        let owed_before = self.owed.contains(&key);
        let uids_before: Vec<(String, MailboxGuid, u32)> = self
            .owed_uids
            .iter()
            .filter(|(u, g, _)| u.as_str() == user && *g == guid)
            .cloned()
            .collect();
        let out = f(self)?;
        if owed_before {
            self.owed.insert(key);
        }
        self.owed_uids.extend(uids_before);
        Ok(out)
    }
}

/// [`Store::disk_flags_changed`] within a transaction.
fn disk_flags_in(
    tx: &mut Tx<'_>,
    user: &str,
    guid: MailboxGuid,
    changes: &[DiskFlags],
) -> Result<(), StoreError> {
    let mut owes = false;
    for change in changes {
        let uid = change.uid;
        let Some(mut message) = tx.get_message(user, guid, uid)? else {
            continue;
        };
        // A write since the scan (a peer's move or clash) took the file away from
        // this UID: the flags seen on it are not this message's; the next pass looks
        // again.
        let current = tx
            .txn
            .open_table(MIRROR_FILES)?
            .get(keys::message(user, guid, uid).as_slice())?
            .map(|v| decode::<FileRow>(v.value(), "a Maildir file row"))
            .transpose()?;
        if current.as_ref().map(|r| r.base.as_str()) != Some(change.row.base.as_str()) {
            continue;
        }
        let stamp = tx.stamp();
        let mut changed = message.flags.apply(FlagOp::Add, &change.added, stamp);
        changed |= message.flags.apply(FlagOp::Remove, &change.removed, stamp);
        if changed {
            tx.put_message(user, guid, uid, &message)?;
        }
        tx.file_found(user, guid, uid, &change.row)?;
        // A peer's change to other flags that the file does not show yet: still owed.
        owes |= !shows_flags(&message, &change.row);
    }
    if !owes {
        tx.settled_by_disk(user, guid);
    }
    Ok(())
}

/// [`Store::disk_expunged`] within a transaction.
fn disk_expunged_in(
    tx: &mut Tx<'_>,
    user: &str,
    guid: MailboxGuid,
    uids: &[u32],
) -> Result<usize, StoreError> {
    let Some(mut record) = tx.get_mailbox(user, guid)? else {
        return Ok(0);
    };
    let name = crate::model::MailboxName::parse(&record.name)?;
    let mut present = Vec::new();
    let mut bases = Vec::new();
    for &uid in uids {
        if tx.get_message(user, guid, uid)?.is_none() {
            continue;
        }
        let files = tx.txn.open_table(MIRROR_FILES)?;
        let row = files.get(keys::message(user, guid, uid).as_slice())?;
        // No file row any more: a write since the scan (a peer's move or clash) put
        // other mail at this UID, which no file held yet; it is not expunged.
        let Some(v) = row else { continue };
        bases.push(decode::<FileRow>(v.value(), "a Maildir file row")?.base);
        present.push(uid);
    }
    let n = tx.expunge_uids(user, &name, &mut record, &present)?;
    // The files are gone already: no removal is owed for them, and nothing else.
    let mut unlinks = tx.txn.open_table(MIRROR_UNLINKS)?;
    for base in bases {
        unlinks.remove(keys::source(user, guid, &base).as_slice())?;
    }
    drop(unlinks);
    tx.settled_by_disk(user, guid);
    Ok(n)
}

/// A message's flags as its Maildir file name shows them, sorted (`\\Recent` has no letter).
pub fn file_flags(record: &MessageRecord) -> Vec<String> {
    let mut flags: Vec<String> = record
        .flags
        .live()
        .map(|f| f.to_string())
        // \Recent is the server's own business; it has no letter in a Maildir name.
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .collect();
    flags.sort();
    flags
}

/// Whether a file whose name shows `row`'s flags shows every flag of `message`, and no other.
fn shows_flags(message: &MessageRecord, row: &FileRow) -> bool {
    let mut disk = row.disk_flags.clone();
    disk.sort();
    disk.dedup();
    file_flags(message) == disk
}

/// The digest of the message at `uid`, if there is one.
fn digest_at(
    messages: &impl ReadableTable<&'static [u8], &'static [u8]>,
    user: &str,
    guid: MailboxGuid,
    uid: u32,
) -> Result<Option<crate::model::Digest>, StoreError> {
    match messages.get(keys::message(user, guid, uid).as_slice())? {
        Some(v) => Ok(Some(decode_message(v.value())?.1.digest)),
        None => Ok(None),
    }
}

/// A file on disk now holds the body: it is the body's home, and a spooled copy is no
/// longer needed (unless a session staged it and may still take it from the spool).
fn found_home(
    txn: &redb::WriteTransaction,
    bodies: &dyn super::body::BodyStore,
    digest: &crate::model::Digest,
    user: &str,
    guid: MailboxGuid,
    uid: u32,
) -> Result<(), StoreError> {
    txn.open_table(MIRROR_HOMES)?
        .insert(home_key(digest, user, guid, uid).as_slice(), [].as_slice())?;
    let staged = txn
        .open_table(super::tables::STAGED)?
        .get(digest.0.as_slice())?
        .is_some();
    if !staged {
        bodies.housed(txn, digest)?;
    }
    Ok(())
}

/// A mailbox's rows of a table keyed by message key, decoded, in UID order.
fn by_uid<T>(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    user: &str,
    guid: MailboxGuid,
    decode_row: impl Fn(&[u8]) -> Result<T, StoreError>,
) -> Result<Vec<(u32, T)>, StoreError> {
    let (start, end) = keys::uid_range(user, guid, 0, u32::MAX);
    let mut out = Vec::new();
    for item in table.range(start.as_slice()..=end.as_slice())? {
        let (k, v) = item?;
        let (_, _, uid) = keys::split_message(k.value())
            .ok_or_else(|| StoreError::Corrupt("malformed message key".into()))?;
        out.push((uid, decode_row(v.value())?));
    }
    Ok(out)
}

/// Every mailbox of `user` the index or the disk knows of — live ones, deleted ones whose
/// folder has not been removed yet, and any still marked owed (a mailbox made and deleted
/// before any pass has neither a record nor a folder row, and only its owed mark says there is
/// something to settle) — with its rows, in GUID order.
fn folder_states_in(
    txn: &redb::ReadTransaction,
    user: &str,
) -> Result<Vec<FolderState>, StoreError> {
    let (start, end) = keys::user_range(user);
    let mut states: BTreeMap<MailboxGuid, FolderState> = BTreeMap::new();
    for (n, table) in [MAILBOXES, MIRROR_FOLDERS, MIRROR_OWED, MIRROR_PRINTS]
        .into_iter()
        .enumerate()
    {
        for item in txn
            .open_table(table)?
            .range(start.as_slice()..=end.as_slice())?
        {
            let (k, v) = item?;
            let (_, guid, _) = keys::split_mailbox_prefix(k.value())
                .ok_or_else(|| StoreError::Corrupt("malformed mailbox key".into()))?;
            let state = states.entry(guid).or_insert_with(|| FolderState {
                guid,
                record: None,
                folder: None,
                owed: None,
                print: None,
            });
            match n {
                0 => state.record = Some(decode::<MailboxRecord>(v.value(), "a mailbox")?),
                1 => state.folder = Some(decode::<FolderRow>(v.value(), "a Maildir folder row")?),
                2 => state.owed = Some(owed_token(v.value())?),
                _ => state.print = Some(v.value().to_vec()),
            }
        }
    }
    // A print alone (its mailbox and folder rows gone) says nothing to settle.
    Ok(states
        .into_values()
        .filter(|s| s.record.is_some() || s.folder.is_some() || s.owed.is_some())
        .collect())
}

/// A mark is a stamp and (format 4) whether the owed UIDs are complete.
fn owed_token(value: &[u8]) -> Result<OwedToken, StoreError> {
    let malformed = || StoreError::Corrupt("malformed owed-mailbox mark".into());
    let stamp = value
        .get(..12)
        .and_then(|s| <[u8; 12]>::try_from(s).ok())
        .ok_or_else(malformed)?;
    let complete = match value.get(12..) {
        Some([]) => false,
        Some([flag]) => *flag == 1,
        _ => return Err(malformed()),
    };
    Ok(OwedToken { stamp, complete })
}

fn mailbox_mirror_in(
    txn: &redb::ReadTransaction,
    user: &str,
    guid: MailboxGuid,
) -> Result<MailboxMirror, StoreError> {
    mirror_rows_in(txn, user, guid, None)
}

/// A mailbox's mirror, with the rows of every message (`uids` `None`) or of those UIDs only.
fn mirror_rows_in(
    txn: &redb::ReadTransaction,
    user: &str,
    guid: MailboxGuid,
    uids: Option<&std::collections::BTreeSet<u32>>,
) -> Result<MailboxMirror, StoreError> {
    let key = keys::mailbox(user, guid);
    let record = match txn.open_table(MAILBOXES)?.get(key.as_slice())? {
        Some(v) => Some(decode::<MailboxRecord>(v.value(), "a mailbox")?),
        None => None,
    };
    let mut owed_uids: Vec<(u32, UidToken)> = Vec::new();
    {
        let (start, end) = keys::uid_range(user, guid, 0, u32::MAX);
        for item in txn
            .open_table(MIRROR_OWED_UIDS)?
            .range(start.as_slice()..=end.as_slice())?
        {
            let (k, v) = item?;
            let (_, _, uid) = keys::split_message(k.value())
                .ok_or_else(|| StoreError::Corrupt("malformed message key".into()))?;
            let token = <[u8; 12]>::try_from(v.value())
                .map_err(|_| StoreError::Corrupt("malformed owed-message mark".into()))?;
            owed_uids.push((uid, token));
        }
    }
    let message_table = txn.open_table(MESSAGES)?;
    let file_table = txn.open_table(MIRROR_FILES)?;
    let decode_file = |v: &[u8]| decode::<FileRow>(v, "a Maildir file row");
    let (messages, files): (Vec<(u32, MessageRecord)>, BTreeMap<u32, FileRow>) = match uids {
        None => (
            by_uid(&message_table, user, guid, |v| Ok(decode_message(v)?.1))?,
            by_uid(&file_table, user, guid, decode_file)?
                .into_iter()
                .collect(),
        ),
        Some(uids) => {
            let mut messages = Vec::new();
            let mut files = BTreeMap::new();
            let mut uids = uids.clone();
            uids.extend(owed_uids.iter().map(|(uid, _)| *uid));
            for uid in uids {
                let at = keys::message(user, guid, uid);
                if let Some(v) = message_table.get(at.as_slice())? {
                    messages.push((uid, decode_message(v.value())?.1));
                }
                if let Some(v) = file_table.get(at.as_slice())? {
                    files.insert(uid, decode_file(v.value())?);
                }
            }
            (messages, files)
        }
    };
    let mut uend = key.clone();
    uend.push(0xff);
    let mut unlinks = Vec::new();
    let mut unlink_flags = BTreeMap::new();
    for item in txn
        .open_table(MIRROR_UNLINKS)?
        .range(key.as_slice()..=uend.as_slice())?
    {
        let (k, v) = item?;
        let base = k
            .value()
            .get(key.len()..)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| StoreError::Corrupt("malformed Maildir unlink key".into()))?;
        // Empty: the flags are not known (a file placed for a message that moved meanwhile,
        // or a row from before they were kept); the file is looked for by its base name.
        if !v.value().is_empty() {
            let flags = decode::<Vec<String>>(v.value(), "a Maildir unlink row")?;
            unlink_flags.insert(base.to_string(), flags);
        }
        unlinks.push(base.to_string());
    }
    let folder = match txn.open_table(MIRROR_FOLDERS)?.get(key.as_slice())? {
        Some(v) => Some(decode::<FolderRow>(v.value(), "a Maildir folder row")?),
        None => None,
    };
    let owed = match txn.open_table(MIRROR_OWED)?.get(key.as_slice())? {
        Some(v) => Some(owed_token(v.value())?),
        None => None,
    };
    Ok(MailboxMirror {
        guid,
        record,
        messages,
        files,
        unlinks,
        unlink_flags,
        folder,
        owed,
        owed_uids,
        whole: uids.is_none(),
    })
}

impl Store {
    /// Moves the message at `uid` to a new UID, at least `at_least` and never below the
    /// mailbox's UIDNEXT, as a local write (journaled, so every peer moves it too): the way a
    /// live Maildir keeps a UID the mail server gave to other mail, or a UID below the
    /// folder's next, from being reused. The old UID keeps a move tombstone. Returns the new
    /// UID, or `None` if no message is at `uid`.
    pub fn renumber_message(
        &self,
        user: &str,
        guid: MailboxGuid,
        uid: u32,
        at_least: u32,
    ) -> Result<Option<u32>, StoreError> {
        self.write(|tx| {
            let (Some(mut mailbox), Some(message)) = (
                tx.get_mailbox(user, guid)?,
                tx.get_message(user, guid, uid)?,
            ) else {
                return Ok(None);
            };
            let to = mailbox.uidnext.max(at_least);
            if to == u32::MAX {
                return Err(StoreError::UidsExhausted {
                    user: user.to_string(),
                    mailbox: mailbox.name.clone(),
                });
            }
            // The body keeps a reference throughout: the message only changes its UID.
            tx.bodies.add_ref(tx.txn, &message.digest)?;
            tx.remove_message(user, guid, uid)?;
            tx.put_tombstone(
                user,
                guid,
                uid,
                &crate::model::Tombstone::moved(message.digest, message.appended),
            )?;
            tx.put_message(user, guid, to, &message)?;
            tx.counters.messages += 1;
            tx.counters.message_bytes += message.size;
            mailbox.uidnext = to + 1;
            mailbox.last_change = tx.stamp();
            tx.put_mailbox(user, &mailbox)?;
            Ok(Some(to))
        })
    }
}
