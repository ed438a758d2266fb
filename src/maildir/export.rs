//! `export-maildir`: write a user's mail as a Maildir++ tree that Dovecot reads, with a
//! dovecot-uidlist per folder so that UIDs and UIDVALIDITY survive.

use super::{folder_dir_name, ExportSummary, MaildirError, MaildirWriter};
use crate::model::Progress;
use crate::store::{Store, StoreError};
use std::fmt;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Maildir(#[from] MaildirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "these mailboxes cannot be written as Maildir++ folders, so nothing was exported: {0}"
    )]
    Unrepresentable(String),
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport(pub ExportSummary);

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.0;
        write!(
            f,
            "exported {} messages ({} bytes) in {} folders",
            s.messages, s.bytes, s.folders
        )?;
        for d in &s.dropped_flags {
            write!(
                f,
                "\n  flag {} of {} UID {} left out: {}",
                d.flag, d.mailbox, d.uid, d.reason
            )?;
        }
        Ok(())
    }
}

/// Exports every mailbox of `user` into `root`, which must be absent or empty. `progress`
/// hears after every message written how many of the user's messages are out, and their
/// bytes.
pub fn export(
    store: &Store,
    user: &str,
    root: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportReport, ExportError> {
    let mailboxes = store.list_mailboxes(user)?;
    // Check every name first, so an unrepresentable one refuses the export before any write.
    let bad: Vec<String> = mailboxes
        .iter()
        .filter_map(|m| {
            folder_dir_name(&m.name)
                .err()
                .map(|e| format!("{} ({e})", m.name))
        })
        .collect();
    if !bad.is_empty() {
        return Err(ExportError::Unrepresentable(bad.join("; ")));
    }
    let mut writer = MaildirWriter::create(root)?;
    let total = mailboxes.iter().map(|m| m.messages).sum();
    let mut at = Progress::of(0, total, 0);
    progress(at);
    for mailbox in &mailboxes {
        writer.begin_folder(
            &mailbox.name,
            mailbox.uidvalidity,
            mailbox.uidnext.max(1),
            mailbox.subscribed,
        )?;
        writer.set_folder_guid(mailbox.guid.0)?;
        for message in store.list_messages(user, Some(&mailbox.name))? {
            let bytes = store.body(&message.record.digest)?;
            let flags: Vec<String> = message
                .record
                .flags
                .live()
                .map(|f| f.as_str().to_string())
                .collect();
            writer.write_message(message.uid, &flags, message.record.internal_date, &bytes)?;
            at.done += 1;
            at.bytes += bytes.len() as u64;
            // A message appended while the export runs may take the count past the total.
            at.total = at.total.map(|t| t.max(at.done));
            progress(at);
        }
        writer.finish_folder()?;
    }
    Ok(ExportReport(writer.finish()?))
}
