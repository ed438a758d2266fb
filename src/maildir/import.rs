//! `import-maildir`: scan a Maildir++ tree and append its mail to the store in batches.
//!
//! Each batch is one store transaction and records which files it imported, so a kill at any
//! moment leaves whole messages only, and running the import again adds only what is missing.

use super::{scan, MaildirError, ScannedMessage};
use crate::model::{FlagName, MailboxGuid, Progress};
use crate::store::{NewMessage, Store, StoreError};
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A batch is committed when it holds this many messages or this many bytes. Each commit
/// rewrites every index page a batch touches, and the by-digest pages a batch touches are
/// spread over the whole index: at 500 a first scan of 100 000 messages wrote 1.0 GB to a
/// 86 MB store (11.8 s), at 4 000 it writes 0.4 GB (8.3 s), for ~20 MB more memory
/// (docs/PERFORMANCE.md, "Session 14"). A kill loses at most one batch's work.
pub const BATCH_MESSAGES: usize = 4_000;
const BATCH_BYTES: usize = 32 << 20;

#[derive(Debug, Error)]
pub enum ImportError {
    #[error(transparent)]
    Maildir(#[from] MaildirError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an import did.
#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    pub folders: usize,
    pub imported: usize,
    /// Files imported by an earlier run, left alone.
    pub already_present: usize,
    /// Messages whose Dovecot UID could not be kept (the mailbox already used it).
    pub renumbered: usize,
    pub bytes: u64,
    /// Files or flags left out, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "imported {} messages ({} bytes) in {} folders; {} already present; {} renumbered; {} skipped",
            self.imported,
            self.bytes,
            self.folders,
            self.already_present,
            self.renumbered,
            self.skipped.len()
        )?;
        for (path, why) in self.skipped.iter().take(20) {
            write!(f, "\n  skipped {}: {why}", path.display())?;
        }
        if self.skipped.len() > 20 {
            write!(f, "\n  … and {} more", self.skipped.len() - 20)?;
        }
        Ok(())
    }
}

/// Imports a Maildir++ tree into `user`'s mailboxes. `progress` hears after every batch how
/// many of the scanned files have been handled (imported, found present or skipped) and how
/// many bytes were read; its last report counts every file.
pub fn import(
    store: &Store,
    user: &str,
    root: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<ImportReport, ImportError> {
    crate::model::validate_user(user).map_err(StoreError::from)?;
    let folders = scan(root)?;
    let mut report = ImportReport::default();
    let total = folders.iter().map(|f| f.messages.len() as u64).sum();
    // Files handled and bytes read so far; reported once their batch is committed.
    let (mut handled, mut read) = (0u64, 0u64);
    progress(Progress::of(0, total, 0));
    for folder in folders {
        report.folders += 1;
        report.skipped.extend(folder.skipped.iter().cloned());
        let uidvalidity = folder.uidlist.as_ref().map(|u| u.uidvalidity);
        let guid = folder
            .uidlist
            .as_ref()
            .and_then(|u| u.guid.as_deref())
            .and_then(|g| g.parse::<MailboxGuid>().ok());
        let prepared =
            store.prepare_import(user, &folder.mailbox, uidvalidity, folder.subscribed, guid)?;
        let mut batch = Batch::default();
        for message in &folder.messages {
            handled += 1;
            // A file that vanished or cannot be read is reported, not fatal: the rest of the
            // mail still comes in, and a re-run picks the file up.
            let bytes = match read_scanned(message) {
                Ok(bytes) => bytes,
                Err(why) => {
                    report.skipped.push((message.path.clone(), why));
                    continue;
                }
            };
            let flags = parse_flag_names(&message.flags, &mut |why| {
                report.skipped.push((message.path.clone(), why));
            });
            read += bytes.len() as u64;
            let full = batch.push(NewMessage {
                bytes,
                flags,
                internal_date: message.internal_date,
                uid: message.uid.filter(|_| prepared.keep_uids),
                source: Some(message.basename.clone()),
                ..NewMessage::default()
            });
            if let Some(full) = full {
                commit(store, user, &folder.mailbox, full, &mut report)?;
                progress(Progress::of(handled, total, read));
            }
        }
        commit(store, user, &folder.mailbox, batch.rest(), &mut report)?;
        progress(Progress::of(handled, total, read));
        if let (true, Some(uidlist)) = (prepared.keep_uids, &folder.uidlist) {
            store.raise_uidnext(user, &folder.mailbox, uidlist.effective_next_uid())?;
        }
    }
    Ok(report)
}

fn commit(
    store: &Store,
    user: &str,
    mailbox: &str,
    batch: Vec<NewMessage>,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    if batch.is_empty() {
        return Ok(());
    }
    let sizes: Vec<u64> = batch.iter().map(|m| m.bytes.len() as u64).collect();
    for (outcome, size) in store.append(user, mailbox, batch)?.into_iter().zip(sizes) {
        if outcome.skipped {
            report.already_present += 1;
        } else {
            report.imported += 1;
            report.bytes += size;
            report.renumbered += usize::from(outcome.renumbered);
        }
    }
    Ok(())
}

/// Messages gathered for one append transaction: at most `BATCH_MESSAGES` of them, cut short
/// once they pass `BATCH_BYTES`, so memory stays bounded on a large Maildir.
#[derive(Default)]
pub(crate) struct Batch {
    messages: Vec<NewMessage>,
    bytes: usize,
}

impl Batch {
    /// Adds a message; returns the batch to append now when it is full.
    pub(crate) fn push(&mut self, message: NewMessage) -> Option<Vec<NewMessage>> {
        self.bytes += message.bytes.len();
        self.messages.push(message);
        (self.messages.len() >= BATCH_MESSAGES || self.bytes >= BATCH_BYTES).then(|| self.rest())
    }

    /// What is gathered (maybe nothing), leaving the batch empty.
    pub(crate) fn rest(&mut self) -> Vec<NewMessage> {
        self.bytes = 0;
        std::mem::take(&mut self.messages)
    }
}

/// A scanned file's bytes, or why they are not taken as mail: the file cannot be read, or it
/// is not the size its name states (Dovecot names a file with its size, ",S=<bytes>": a file of
/// another size was cut short or changed after delivery).
pub(crate) fn read_scanned(message: &ScannedMessage) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(&message.path).map_err(|e| format!("cannot read: {e}"))?;
    match size_field(&message.basename).filter(|s| *s != bytes.len() as u64) {
        Some(said) => Err(format!(
            "the file holds {} bytes but its name says S={said}: truncated or changed, not imported",
            bytes.len()
        )),
        None => Ok(bytes),
    }
}

/// Flag names from a file's name as merkmail's flags; each one that is not a valid flag is
/// left out and handed to `left_out` with the reason.
pub(crate) fn parse_flag_names(
    names: &[String],
    left_out: &mut dyn FnMut(String),
) -> Vec<FlagName> {
    let mut flags = Vec::new();
    for flag in names {
        match FlagName::parse(flag) {
            Ok(f) => flags.push(f),
            Err(e) => left_out(format!("flag left out: {e}")),
        }
    }
    flags
}

/// The size a Maildir file's base name states (",S=<bytes>"), if it states one.
pub(crate) fn size_field(basename: &str) -> Option<u64> {
    basename
        .split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix("S="))
        .and_then(|n| n.parse().ok())
}
