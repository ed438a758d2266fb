//! Export side: [`MaildirWriter`] writes merkmail's mailboxes as a Maildir++ tree that Dovecot
//! reads with the same mailboxes, UIDs, UIDVALIDITY, UIDNEXT, flags, keywords and dates.
//!
//! **Only into a new or empty directory.** Merging into an existing tree could collide with
//! files, uidlists and index caches that someone else owns; refusing is the one choice that can
//! never corrupt an earlier export or live mail. To refresh an export, write a new one next to
//! it and swap the directories.
//!
//! Each message is written to the folder's tmp/, flushed to disk, given its mtime, and only then
//! renamed into cur/ (the Maildir delivery protocol), so a crash never leaves a torn message in
//! cur/. dovecot-uidlist and dovecot-keywords are written the same way at `finish_folder`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::maildir::folder::{folder_dir_name, format_subscriptions};
use crate::maildir::name::{
    check_keyword, format_info, format_keywords_file, is_system_flag_syntax,
};
use crate::maildir::uidlist::{format_uidlist, UidList};
use crate::maildir::{MaildirError, INBOX, MAX_KEYWORDS};

/// A flag that could not be stored on a message; the message itself was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedFlag {
    pub mailbox: String,
    pub uid: u32,
    pub flag: String,
    pub reason: String,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub folders: usize,
    pub messages: usize,
    /// Sum of message sizes.
    pub bytes: u64,
    /// Flags left off messages: a 27th keyword in a folder, a keyword that the keywords file
    /// cannot hold, or a `\Flag` that is not one of the five system flags.
    pub dropped_flags: Vec<DroppedFlag>,
}

/// The folder being written between `begin_folder` and `finish_folder`.
#[derive(Debug)]
struct OpenFolder {
    mailbox: String,
    dir: PathBuf,
    uidvalidity: u32,
    uidnext: u32,
    guid: Option<String>,
    /// uid → base name; a map so the uidlist comes out in UID order whatever the call order.
    entries: BTreeMap<u32, String>,
    /// Keyword letter index → name, assigned in order of first use.
    keywords: Vec<(u8, String)>,
}

/// Writes a Maildir++ tree folder by folder: `create`, then for each mailbox `begin_folder`,
/// `write_message`..., `finish_folder`, and at last `finish`.
#[derive(Debug)]
pub struct MaildirWriter {
    root: PathBuf,
    /// Part of every file name, as in Maildir's own naming, so that two exports never produce
    /// the same name even for the same message.
    pid: u32,
    current: Option<OpenFolder>,
    written: BTreeSet<String>,
    subscribed: Vec<String>,
    summary: ExportSummary,
}

fn export_err(mailbox: &str, problem: impl Into<String>) -> MaildirError {
    MaildirError::Export {
        mailbox: mailbox.to_string(),
        problem: problem.into(),
    }
}

/// Creates a directory (and its parents) readable by its owner only: mail is private, and
/// Dovecot makes its own Maildirs 0700 too.
fn create_private_dir(path: &Path) -> Result<(), MaildirError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(path)
        .map_err(MaildirError::io(path, "create directory"))
}

/// Opens a new file (failing if it exists) readable by its owner only, like Dovecot's 0600.
fn create_private_file(path: &Path) -> Result<File, MaildirError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(MaildirError::io(path, "create"))
}

/// Creates `dir` and its cur/, new/ and tmp/.
fn create_maildir_dirs(dir: &Path) -> Result<(), MaildirError> {
    for sub in ["cur", "new", "tmp"] {
        create_private_dir(&dir.join(sub))?;
    }
    Ok(())
}

/// Flushes a directory so that the renames into it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), MaildirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(MaildirError::io(dir, "sync directory"))
}

/// Writes `bytes` to `tmp_path` (which must not exist), flushes it, optionally sets its mtime,
/// and renames it to `final_path`.
fn write_then_rename(
    tmp_path: &Path,
    final_path: &Path,
    bytes: &[u8],
    mtime: Option<SystemTime>,
) -> Result<(), MaildirError> {
    let mut file = create_private_file(tmp_path)?;
    file.write_all(bytes)
        .map_err(MaildirError::io(tmp_path, "write"))?;
    if let Some(mtime) = mtime {
        file.set_modified(mtime)
            .map_err(MaildirError::io(tmp_path, "set mtime"))?;
    }
    file.sync_all()
        .map_err(MaildirError::io(tmp_path, "sync"))?;
    drop(file);
    fs::rename(tmp_path, final_path).map_err(MaildirError::io(final_path, "rename into place"))
}

/// The SystemTime of a unix-seconds date, or `None` if the platform cannot represent it.
fn system_time(unix_seconds: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_secs(unix_seconds.unsigned_abs());
    if unix_seconds >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

impl MaildirWriter {
    /// Prepares an export into `root`, which must be absent or an empty directory, and creates
    /// root/{cur,new,tmp}.
    pub fn create(root: &Path) -> Result<Self, MaildirError> {
        match fs::symlink_metadata(root) {
            Ok(meta) if !meta.is_dir() => {
                return Err(MaildirError::TargetNotEmpty {
                    path: root.to_path_buf(),
                    problem: "exists and is not a directory".into(),
                })
            }
            Ok(_) => {
                let mut entries =
                    fs::read_dir(root).map_err(MaildirError::io(root, "read directory"))?;
                if entries.next().is_some() {
                    return Err(MaildirError::TargetNotEmpty {
                        path: root.to_path_buf(),
                        problem: "directory is not empty; export writes only into a new or \
                                  empty directory so it can never overwrite or mix with existing \
                                  mail (export elsewhere and swap directories)"
                            .into(),
                    });
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => create_private_dir(root)?,
            Err(e) => {
                return Err(MaildirError::Io {
                    path: root.to_path_buf(),
                    op: "stat",
                    source: e,
                })
            }
        }
        create_maildir_dirs(root)?;
        Ok(MaildirWriter {
            root: root.to_path_buf(),
            pid: std::process::id(),
            current: None,
            written: BTreeSet::new(),
            subscribed: Vec::new(),
            summary: ExportSummary::default(),
        })
    }

    /// Starts writing `mailbox` ("INBOX" is the root). Each mailbox may be written once, and
    /// only one at a time.
    pub fn begin_folder(
        &mut self,
        mailbox: &str,
        uidvalidity: u32,
        uidnext: u32,
        subscribed: bool,
    ) -> Result<(), MaildirError> {
        if let Some(open) = &self.current {
            return Err(export_err(
                mailbox,
                format!(
                    "folder {:?} is still open; call finish_folder first",
                    open.mailbox
                ),
            ));
        }
        if self.written.contains(mailbox) {
            return Err(export_err(mailbox, "mailbox written twice in one export"));
        }
        // Dovecot treats a zero UIDVALIDITY or next UID as a corrupted uidlist.
        if uidvalidity == 0 {
            return Err(export_err(mailbox, "UIDVALIDITY must not be 0"));
        }
        if uidnext == 0 {
            return Err(export_err(mailbox, "UIDNEXT must not be 0"));
        }
        let dir = self.root.join(folder_dir_name(mailbox)?);
        create_maildir_dirs(&dir)?;
        self.written.insert(mailbox.to_string());
        if subscribed {
            self.subscribed.push(mailbox.to_string());
        }
        self.current = Some(OpenFolder {
            mailbox: mailbox.to_string(),
            dir,
            uidvalidity,
            uidnext,
            guid: None,
            entries: BTreeMap::new(),
            keywords: Vec::new(),
        });
        Ok(())
    }

    /// Records a mailbox GUID for the open folder, written in dovecot-uidlist's header (Dovecot
    /// makes one up otherwise). Optional.
    pub fn set_folder_guid(&mut self, guid: [u8; 16]) -> Result<(), MaildirError> {
        let Some(open) = self.current.as_mut() else {
            return Err(export_err("", "set_folder_guid called with no folder open"));
        };
        open.guid = Some(guid.iter().map(|b| format!("{b:02x}")).collect());
        Ok(())
    }

    /// Writes one message into the open folder's cur/ as
    /// `<date>.M<uid>P<pid>.merkmail,S=<size>:2,<letters>`, with mtime = `internal_date`.
    /// Flags that cannot be stored are left off and listed in the summary; the message is
    /// written regardless.
    pub fn write_message(
        &mut self,
        uid: u32,
        flags: &[String],
        internal_date: i64,
        bytes: &[u8],
    ) -> Result<(), MaildirError> {
        let pid = self.pid;
        let Some(open) = self.current.as_mut() else {
            return Err(export_err("", "write_message called with no folder open"));
        };
        if uid == 0 || uid >= open.uidnext {
            return Err(export_err(
                &open.mailbox,
                format!("UID {uid} is not in 1..UIDNEXT ({})", open.uidnext),
            ));
        }
        if open.entries.contains_key(&uid) {
            return Err(export_err(
                &open.mailbox,
                format!("UID {uid} written twice"),
            ));
        }
        let mtime = system_time(internal_date).ok_or_else(|| {
            export_err(
                &open.mailbox,
                format!("internal date {internal_date} is out of range"),
            )
        })?;

        let mut dropped: Vec<(String, String)> = Vec::new();
        let mut storable: Vec<String> = Vec::new();
        for flag in flags {
            if is_system_flag_syntax(flag) {
                storable.push(flag.clone());
                continue;
            }
            if let Err(problem) = check_keyword(flag) {
                dropped.push((flag.clone(), problem));
                continue;
            }
            if !open.keywords.iter().any(|(_, k)| k == flag) {
                if open.keywords.len() >= MAX_KEYWORDS {
                    dropped.push((
                        flag.clone(),
                        format!("folder already has {MAX_KEYWORDS} keywords (letters a..z)"),
                    ));
                    continue;
                }
                // Indexes are handed out 0, 1, 2... and never freed, so the next is the count.
                let idx = u8::try_from(open.keywords.len()).unwrap_or(u8::MAX);
                open.keywords.push((idx, flag.clone()));
            }
            storable.push(flag.clone());
        }
        let (info, unstorable) = format_info(&storable, &open.keywords);
        dropped.extend(unstorable);

        let base = format!(
            "{}.M{uid}P{pid}.merkmail,S={}",
            internal_date.max(0),
            bytes.len()
        );
        let tmp_path = open.dir.join("tmp").join(&base);
        let final_path = open.dir.join("cur").join(format!("{base}:{info}"));
        write_then_rename(&tmp_path, &final_path, bytes, Some(mtime))?;

        open.entries.insert(uid, base);
        self.summary.messages += 1;
        self.summary.bytes += bytes.len() as u64;
        for (flag, reason) in dropped {
            self.summary.dropped_flags.push(DroppedFlag {
                mailbox: open.mailbox.clone(),
                uid,
                flag,
                reason,
            });
        }
        Ok(())
    }

    /// Completes the open folder: dovecot-uidlist (version 3), dovecot-keywords when it has
    /// keywords, and `maildirfolder` for folders other than INBOX.
    pub fn finish_folder(&mut self) -> Result<(), MaildirError> {
        let Some(open) = self.current.take() else {
            return Err(export_err("", "finish_folder called with no folder open"));
        };
        let uidlist = UidList {
            uidvalidity: open.uidvalidity,
            next_uid: open.uidnext,
            guid: open.guid.clone(),
            entries: open
                .entries
                .into_iter()
                .map(|(uid, base)| (uid, base.into()))
                .collect(),
        };
        let tmp = open.dir.join("tmp");
        let pid = self.pid;
        write_then_rename(
            &tmp.join(format!("merkmail-uidlist.{pid}")),
            &open.dir.join("dovecot-uidlist"),
            format_uidlist(&uidlist).as_bytes(),
            None,
        )?;
        if !open.keywords.is_empty() {
            write_then_rename(
                &tmp.join(format!("merkmail-keywords.{pid}")),
                &open.dir.join("dovecot-keywords"),
                format_keywords_file(&open.keywords).as_bytes(),
                None,
            )?;
        }
        if open.mailbox != INBOX {
            // Maildir++ marks subfolders so that delivery agents treat them as folders.
            let marker = open.dir.join("maildirfolder");
            create_private_file(&marker)?;
        }
        sync_dir(&open.dir.join("cur"))?;
        sync_dir(&open.dir)?;
        self.summary.folders += 1;
        Ok(())
    }

    /// Finishes the open folder if there is one, writes `subscriptions`, and returns what was
    /// written.
    pub fn finish(mut self) -> Result<ExportSummary, MaildirError> {
        if self.current.is_some() {
            self.finish_folder()?;
        }
        let text = format_subscriptions(&self.subscribed)?;
        write_then_rename(
            &self
                .root
                .join("tmp")
                .join(format!("merkmail-subscriptions.{}", self.pid)),
            &self.root.join("subscriptions"),
            text.as_bytes(),
            None,
        )?;
        sync_dir(&self.root)?;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildir::scan::scan;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// One message as the test writes it: (uid, flags, date, bytes).
    type Msg = (u32, Vec<String>, i64, Vec<u8>);

    #[test]
    fn write_then_scan_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("export");
        let many_keywords: Vec<String> = (0..30).map(|i| format!("kw{i}")).collect();
        let folders: Vec<(&str, u32, u32, bool, Vec<Msg>)> = vec![
            (
                "INBOX",
                1_700_000_000,
                10,
                true,
                vec![
                    (
                        1,
                        s(&["\\Seen"]),
                        1_600_000_000,
                        b"Subject: one\r\n\r\nbody\r\n".to_vec(),
                    ),
                    (
                        3,
                        s(&["\\Seen", "\\Flagged", "$Label1"]),
                        1_600_000_100,
                        b"two".to_vec(),
                    ),
                    (7, s(&[]), 0, b"".to_vec()),
                    (
                        4,
                        s(&["\\Answered", "\\Deleted", "\\Draft", "Junk"]),
                        -86_400,
                        vec![0, 255, 10],
                    ),
                ],
            ),
            (
                "Sent/2024",
                7,
                3,
                false,
                vec![(
                    2,
                    s(&["\\Seen", "Junk", "$Label1"]),
                    1_700_000_000,
                    b"sent".to_vec(),
                )],
            ),
            ("台北/日本語", 99, 1, true, vec![]),
            (
                "Many",
                5,
                2,
                false,
                vec![(1, many_keywords.clone(), 1, b"k".to_vec())],
            ),
        ];

        let mut w = MaildirWriter::create(&root).unwrap();
        for (mailbox, uv, next, sub, msgs) in &folders {
            w.begin_folder(mailbox, *uv, *next, *sub).unwrap();
            for (uid, flags, date, bytes) in msgs {
                w.write_message(*uid, flags, *date, bytes).unwrap();
            }
            w.finish_folder().unwrap();
        }
        let summary = w.finish().unwrap();
        assert_eq!(summary.folders, 4);
        assert_eq!(summary.messages, 6);
        let dropped: Vec<&str> = summary
            .dropped_flags
            .iter()
            .map(|d| d.flag.as_str())
            .collect();
        assert_eq!(dropped, ["kw26", "kw27", "kw28", "kw29"]);

        let scanned = scan(&root).unwrap();
        let names: Vec<&str> = scanned.iter().map(|f| f.mailbox.as_str()).collect();
        assert_eq!(names, ["INBOX", "Many", "Sent/2024", "台北/日本語"]);
        for (mailbox, uv, next, sub, msgs) in &folders {
            let f = scanned.iter().find(|f| f.mailbox == *mailbox).unwrap();
            assert!(f.skipped.is_empty(), "{mailbox}: {:?}", f.skipped);
            assert_eq!(f.subscribed, *sub, "{mailbox}");
            let list = f.uidlist.as_ref().unwrap();
            assert_eq!((list.uidvalidity, list.next_uid), (*uv, *next), "{mailbox}");
            let mut want = msgs.clone();
            want.sort_by_key(|m| m.0);
            assert_eq!(f.messages.len(), want.len());
            for (m, (uid, flags, date, bytes)) in f.messages.iter().zip(&want) {
                assert_eq!(m.uid, Some(*uid));
                let mut got_flags = m.flags.clone();
                got_flags.sort();
                let mut want_flags: Vec<String> =
                    flags.iter().take(MAX_KEYWORDS).cloned().collect();
                want_flags.sort();
                assert_eq!(got_flags, want_flags, "{mailbox} uid {uid}");
                assert_eq!(m.internal_date, *date, "{mailbox} uid {uid}");
                assert_eq!(m.size, bytes.len() as u64);
                assert_eq!(&fs::read(&m.path).unwrap(), bytes);
            }
        }
        assert!(root.join(".Sent.2024/maildirfolder").is_file());
        assert!(!root.join("maildirfolder").exists());
        assert_eq!(
            fs::read_to_string(root.join("dovecot-keywords")).unwrap(),
            "0 $Label1\n1 Junk\n"
        );
        // tmp/ holds nothing once the export is done.
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&root), 0o700);
            assert_eq!(mode(&root.join(".Sent.2024/cur")), 0o700);
            assert_eq!(mode(&scanned[0].messages[0].path), 0o600);
            assert_eq!(mode(&root.join("dovecot-uidlist")), 0o600);
        }
    }

    #[test]
    fn refuses_non_empty_targets_and_misuse() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("m");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("x"), "x").unwrap();
        assert!(matches!(
            MaildirWriter::create(&root),
            Err(MaildirError::TargetNotEmpty { .. })
        ));
        assert!(matches!(
            MaildirWriter::create(&root.join("x")),
            Err(MaildirError::TargetNotEmpty { .. })
        ));

        // A finished export is not empty either, so exporting twice cannot mix the two.
        let out = tmp.path().join("out");
        let mut w = MaildirWriter::create(&out).unwrap();
        assert!(matches!(
            w.write_message(1, &[], 0, b""),
            Err(MaildirError::Export { .. })
        ));
        assert!(matches!(
            w.finish_folder(),
            Err(MaildirError::Export { .. })
        ));
        assert!(matches!(
            w.begin_folder("a/../b", 1, 2, false),
            Err(MaildirError::InvalidMailboxName { .. })
        ));
        assert!(matches!(
            w.begin_folder("A", 0, 2, false),
            Err(MaildirError::Export { .. })
        ));
        w.begin_folder("A", 1, 5, false).unwrap();
        assert!(matches!(
            w.begin_folder("B", 1, 5, false),
            Err(MaildirError::Export { .. })
        ));
        assert!(matches!(
            w.write_message(5, &[], 0, b""),
            Err(MaildirError::Export { .. })
        ));
        assert!(matches!(
            w.write_message(0, &[], 0, b""),
            Err(MaildirError::Export { .. })
        ));
        w.write_message(2, &s(&["bad word", "\\Recent"]), 0, b"x")
            .unwrap();
        assert!(matches!(
            w.write_message(2, &[], 0, b""),
            Err(MaildirError::Export { .. })
        ));
        w.finish_folder().unwrap();
        assert!(matches!(
            w.begin_folder("A", 1, 5, false),
            Err(MaildirError::Export { .. })
        ));
        let summary = w.finish().unwrap();
        assert_eq!(summary.dropped_flags.len(), 2);
        assert!(matches!(
            MaildirWriter::create(&out),
            Err(MaildirError::TargetNotEmpty { .. })
        ));
    }
}
