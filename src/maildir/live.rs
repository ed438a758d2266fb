//! Writing into a Maildir that Dovecot serves at the same time: numbering files no one has
//! numbered and delivering messages, under `dovecot-uidlist.lock`, the way Dovecot does.
//!
//! Nothing here knows merkmail's store. docs/MAILDIR.md ("Writing into a live Maildir") gives
//! each rule with its reason. In short: UIDs are handed out only under the lock, after
//! re-reading the uidlist, above everything it has ever listed; they are *appended* to
//! `dovecot-uidlist` (Dovecot reads the grown tail); a delivery goes tmp/ → fsync → cur/ with
//! its `:2,` flags before its UID line is written; everything made takes the owner, group and
//! mode of the directory it is made in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::maildir::lock::{hostname, DotLock, LockError, LockSettings};
use crate::maildir::name::{
    check_keyword, format_info, format_keywords_file, is_system_flag_syntax, parse_filename,
    system_flag_letter,
};
use crate::maildir::uidlist::{parse_kept_file, read_kept, KeptRead};
use crate::maildir::{folder_dir_name, parse_keywords_file, MaildirError, UidList, MAX_KEYWORDS};

/// Why a live write did not happen. Each variant leaves the folder as Dovecot can read it: at
/// worst a file in tmp/ (Dovecot cleans those) or a file in cur/ without a UID (numbered next).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The uidlist lock could not be taken or was lost. Nothing was numbered.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Reading or writing the Maildir failed.
    #[error(transparent)]
    Maildir(#[from] MaildirError),
    /// The folder already names 26 keywords and this message needs another. Nothing was
    /// written: the caller keeps the message and reports it (it is never dropped).
    #[error("{}: keyword {keyword:?} needs a letter, but all {MAX_KEYWORDS} are taken", folder.display())]
    KeywordsFull { folder: PathBuf, keyword: String },
    /// A flag cannot be written in a Maildir file name. Nothing was written.
    #[error("flag {flag:?} cannot be stored in a Maildir name: {problem}")]
    UnstorableFlag { flag: String, problem: String },
    /// The uidlist holds no line end at all (its header is torn), so an appended line would
    /// merge with a half-written one. Nothing was appended. (A torn last line after a whole
    /// header is cut off under the lock instead: see `LockedFolder::lock`.)
    #[error("{}: does not end with a line end; refusing to append", path.display())]
    UnterminatedUidlist { path: PathBuf },
    /// A delivery asked for a UID below the folder's next one: appending it would make the
    /// uidlist descend, which Dovecot takes as corruption. Nothing was written.
    #[error("{}: cannot place UID {uid}: the folder's next UID is already {next}", folder.display())]
    BelowNext {
        folder: PathBuf,
        uid: u32,
        next: u32,
    },
    /// UIDs would pass 2^32 - 2. Nothing was numbered.
    #[error("{}: no UIDs left (next would be {next})", folder.display())]
    UidsExhausted { folder: PathBuf, next: u32 },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> MaildirError {
    MaildirError::io(path.to_path_buf(), op)
}

/// The owner, group and permission bits new entries of a directory take from it: merkmail
/// usually runs as root, and Dovecot refuses mail owned by root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// The directory's permission bits (a file made in it gets them without the x bits).
    pub dir_mode: u32,
}

impl Owner {
    /// The owner of `dir`.
    pub fn of(dir: &Path) -> Result<Owner, MaildirError> {
        let meta = fs::metadata(dir).map_err(io(dir, "stat"))?;
        Ok(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
            dir_mode: meta.mode() & 0o7777,
        })
    }

    fn file_mode(&self) -> u32 {
        self.dir_mode & 0o666
    }

    fn chown_file(&self, file: &File, path: &Path) -> Result<(), MaildirError> {
        let meta = file.metadata().map_err(io(path, "stat"))?;
        if meta.uid() != self.uid || meta.gid() != self.gid {
            std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))
                .map_err(io(path, "chown"))?;
        }
        Ok(())
    }

    /// Makes directory `path` (its parent exists) with this owner and mode; an existing one is
    /// left as it is.
    fn make_dir(&self, path: &Path) -> Result<(), MaildirError> {
        let mut builder = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, self.dir_mode);
        match builder.create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(io(path, "create directory")(e)),
        }
        // The umask may have narrowed the mode; the directory's own mode is the rule.
        fs::set_permissions(
            path,
            std::os::unix::fs::PermissionsExt::from_mode(self.dir_mode),
        )
        .map_err(io(path, "chmod"))?;
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(io(path, "chown"))
    }

    /// Makes `path` (must not exist) a second name of the file `source`, with this owner and
    /// the mode of its directory, if it can: `None` (nothing made) when `source` has another
    /// name already (a link made by another delivery: its owner may differ), is gone, or lives
    /// on another file system. The caller then writes the bytes itself.
    fn link_file(&self, source: &Path, path: &Path) -> Result<Option<File>, MaildirError> {
        match fs::hard_link(source, path) {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(source = %source.display(), error = %e, "cannot link a spooled body; writing it");
                return Ok(None);
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path, "open"))?;
        let meta = file.metadata().map_err(io(path, "stat"))?;
        // Exactly two names, the spool's and ours: no other delivery shares the file, so its
        // owner and mode are ours to set. Otherwise (two deliveries of one body at once) this
        // name goes and the bytes are written.
        if meta.nlink() != 2 {
            fs::remove_file(path).map_err(io(path, "remove"))?;
            return Ok(None);
        }
        self.chown_file(&file, path)?;
        if meta.mode() & 0o7777 != self.file_mode() {
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                self.file_mode(),
            ))
            .map_err(io(path, "chmod"))?;
        }
        Ok(Some(file))
    }

    /// Creates file `path` (must not exist) with this owner and the mode of its directory.
    fn create_file(&self, path: &Path) -> Result<File, MaildirError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.file_mode())
            .open(path)
            .map_err(io(path, "create"))?;
        self.chown_file(&file, path)?;
        Ok(file)
    }
}

fn sync_dir(dir: &Path) -> Result<(), MaildirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "sync directory"))
}

/// Batches smaller than this are flushed file by file: `syncfs` writes back every dirty page
/// of the file system, which on a busy server costs more than a few `fsync`s.
const SYNCFS_FROM: usize = 16;

/// Flushes newly written files to stable storage: a `fsync` of each for a few files; for a
/// batch, one `syncfs` of their file system (one journal commit for the whole batch, where a
/// `fsync` per file costs one each), or, where that is refused, a `fsync` of each file.
fn flush_files(dir: &Path, files: &[&Path]) -> Result<(), MaildirError> {
    #[cfg(target_os = "linux")]
    if files.len() >= SYNCFS_FROM {
        use std::os::fd::AsRawFd;
        let handle = File::open(dir).map_err(io(dir, "open directory"))?;
        // SAFETY: syncfs only reads the descriptor, which `handle` keeps open for the call.
        if unsafe { libc::syncfs(handle.as_raw_fd()) } == 0 {
            return Ok(());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = dir;
    for path in files {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(io(path, "sync"))?;
    }
    Ok(())
}

/// Writes `bytes` into a new file in `tmp_dir`, flushes it and renames it over `final_path`,
/// with `owner`. The mtime is made later than the old file's, because Dovecot notices some of
/// its files (dovecot-keywords) by an mtime of one-second resolution.
fn replace_file(
    owner: &Owner,
    tmp_dir: &Path,
    final_path: &Path,
    bytes: &[u8],
) -> Result<(), MaildirError> {
    let tmp = tmp_dir.join(format!(
        ".{}.{}.{}",
        final_path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = owner.create_file(&tmp)?;
    file.write_all(bytes).map_err(io(&tmp, "write"))?;
    if let Ok(old) = fs::metadata(final_path).and_then(|m| m.modified()) {
        let now = SystemTime::now();
        let floor = old + Duration::from_secs(1);
        file.set_modified(now.max(floor))
            .map_err(io(&tmp, "set mtime"))?;
    }
    file.sync_all().map_err(io(&tmp, "sync"))?;
    drop(file);
    fs::rename(&tmp, final_path).map_err(io(final_path, "rename into place"))?;
    if let Some(parent) = final_path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// One Maildir++ folder (the root for INBOX, or a `.Name` directory) written while Dovecot
/// serves it.
#[derive(Debug, Clone)]
pub struct LiveFolder {
    dir: PathBuf,
    owner: Owner,
    settings: LockSettings,
}

/// One message for [`LockedFolder::deliver_all`].
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    pub bytes: &'a [u8],
    pub flags: &'a [String],
    pub internal_date: i64,
    pub uid: u32,
    /// A file that holds exactly `bytes` and nothing else names but its own directory (the
    /// store's spool): hard-linked into tmp/ instead of writing the bytes again, where the
    /// file system allows it (the same one) and no other delivery linked it first.
    pub link_from: Option<&'a Path>,
}

/// A message that got its UID: its base name (the uidlist key) and where its file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub uid: u32,
    pub base: String,
    pub path: PathBuf,
}

/// A file left unnumbered by [`LockedFolder::number_unlisted`], with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unnumberable {
    pub path: PathBuf,
    pub reason: UnnumberableReason,
}

/// Why a file in new/ or cur/ cannot get a uidlist line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnnumberableReason {
    /// The name is not UTF-8 (uidlist lines are text to us).
    NotUtf8,
    /// The name holds a control character (a line end would break the uidlist).
    ControlCharacter,
}

/// What [`LockedFolder::number_unlisted`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumberingReport {
    pub numbered: Vec<Numbered>,
    pub skipped: Vec<Unnumberable>,
}

impl LiveFolder {
    /// Opens the folder at `dir` (which must exist), making a missing cur/, new/ or tmp/ with
    /// the folder's owner.
    pub fn open(dir: &Path) -> Result<LiveFolder, LiveError> {
        let owner = Owner::of(dir)?;
        for sub in ["cur", "new", "tmp"] {
            owner.make_dir(&dir.join(sub))?;
        }
        Ok(LiveFolder {
            dir: dir.to_path_buf(),
            owner,
            settings: LockSettings::default(),
        })
    }

    /// Makes (or opens) the folder of `mailbox` under the Maildir++ `root`, as Dovecot makes
    /// one: `.Name/` with cur/, new/, tmp/ and an empty `maildirfolder`, owned like the root.
    pub fn create(root: &Path, mailbox: &str) -> Result<LiveFolder, LiveError> {
        if mailbox.eq_ignore_ascii_case(crate::maildir::INBOX) {
            return Self::open(root);
        }
        let owner = Owner::of(root)?;
        let dir = root.join(folder_dir_name(mailbox)?);
        owner.make_dir(&dir)?;
        for sub in ["cur", "new", "tmp"] {
            owner.make_dir(&dir.join(sub))?;
        }
        let marker = dir.join("maildirfolder");
        match owner.create_file(&marker) {
            Ok(_) => {}
            Err(MaildirError::Io { source, .. }) if source.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        Ok(LiveFolder {
            dir,
            owner,
            settings: LockSettings::default(),
        })
    }

    /// The same folder with other lock timings (tests use short ones).
    pub fn with_lock_settings(mut self, settings: LockSettings) -> LiveFolder {
        self.settings = settings;
        self
    }

    /// The folder's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes `dovecot-uidlist.lock` and re-reads the uidlist under it (making one with a fresh
    /// UIDVALIDITY and GUID if the folder has none yet).
    pub fn lock(&self) -> Result<LockedFolder<'_>, LiveError> {
        let uidlist_path = self.dir.join("dovecot-uidlist");
        let lock = DotLock::acquire(
            &uidlist_path,
            &self.dir.join("tmp"),
            Some((self.owner.uid, self.owner.gid)),
            &self.settings,
        )?;
        let mut locked = LockedFolder {
            folder: self,
            lock,
            uidlist_path,
            uidlist: Arc::new(UidList {
                uidvalidity: 0,
                next_uid: 0,
                guid: None,
                entries: Vec::new(),
            }),
        };
        locked.reread()?;
        Ok(locked)
    }
}

/// A folder whose uidlist lock we hold. Dropping it releases the lock.
#[derive(Debug)]
pub struct LockedFolder<'a> {
    folder: &'a LiveFolder,
    lock: DotLock,
    uidlist_path: PathBuf,
    /// Shared with the uidlists kept parsed (uidlist::parse_kept) until we append to it.
    uidlist: Arc<UidList>,
}

/// The virtual size Dovecot records (`W`): the size with every bare LF counted as CRLF.
pub fn virtual_size(bytes: &[u8]) -> u64 {
    let mut size = bytes.len() as u64;
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            size += 1;
        }
        prev = b;
    }
    size
}

/// `S=` and `W=` as Dovecot puts them in a base name (`...,S=123,W=130`).
fn sizes_in_name(base: &str) -> (Option<u64>, Option<u64>) {
    let mut s = None;
    let mut w = None;
    for part in base.split(',').skip(1) {
        if let Some(v) = part.strip_prefix("S=") {
            s = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("W=") {
            w = v.parse().ok();
        }
    }
    (s, w)
}

/// The timestamp a Maildir name starts with, which Dovecot numbers new files by.
fn name_time(name: &str) -> u64 {
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(u64::MAX)
}

impl LockedFolder<'_> {
    /// The uidlist as read under the lock, with what we appended since.
    pub fn uidlist(&self) -> &UidList {
        &self.uidlist
    }

    /// Moves the lock's mtime, for callers doing long work under it.
    pub fn touch(&self) -> Result<(), LiveError> {
        Ok(self.lock.touch()?)
    }

    fn reread(&mut self) -> Result<(), LiveError> {
        let path = &self.uidlist_path;
        let list = match read_kept(path).map_err(io(path, "read"))? {
            Some(KeptRead::List(list)) => list,
            Some(KeptRead::Whole(bytes, id)) => {
                let mut text = String::from_utf8(bytes).map_err(|e| {
                    io(path, "read")(std::io::Error::new(ErrorKind::InvalidData, e))
                })?;
                if !text.ends_with('\n') {
                    self.cut_torn_line(&mut text)?;
                }
                parse_kept_file(&self.uidlist_path, &text, id)?
            }
            None => Arc::new(self.create_uidlist()?),
        };
        self.uidlist = list;
        Ok(())
    }

    /// A uidlist that does not end with a line end, read under the lock: a writer (Dovecot
    /// or us) died in the middle of an append. A SIGKILL can cut a write of more than a page
    /// short, at a page boundary. Nobody took the torn line's UID: Dovecot skips a last line
    /// without its end, and we number nothing from a file we cannot parse. Left there, the
    /// next append (Dovecot's own: it appends after whatever the file ends with) would merge
    /// two lines into one that names the wrong file. So the torn line is cut off, under the
    /// lock, and its file is numbered again like any unlisted file. A file with no complete
    /// line at all (a torn header) is refused: there is nothing to keep.
    fn cut_torn_line(&self, text: &mut String) -> Result<(), LiveError> {
        let path = &self.uidlist_path;
        let Some(keep) = text.rfind('\n').map(|at| at + 1) else {
            return Err(LiveError::UnterminatedUidlist { path: path.clone() });
        };
        if !self.lock.is_ours() {
            return Err(LockError::Lost {
                path: self.lock.path().to_path_buf(),
            }
            .into());
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path, "open to cut a torn line"))?;
        file.set_len(keep as u64)
            .map_err(io(path, "cut a torn line"))?;
        file.sync_all().map_err(io(path, "sync"))?;
        tracing::warn!(
            uidlist = %path.display(),
            torn = %text[keep..].escape_debug(),
            "the uidlist ended in a torn line (a writer died mid-append); cut off under the lock"
        );
        text.truncate(keep);
        Ok(())
    }

    fn create_uidlist(&self) -> Result<UidList, LiveError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let uidvalidity = u32::try_from(now.as_secs()).unwrap_or(u32::MAX).max(1);
        // Dovecot's layout, with the time the folder got its identity: the same-name rule
        // ranks mailboxes by it (`MailboxGuid::from_time`).
        let guid = crate::model::MailboxGuid::from_time(
            u32::try_from(now.as_secs()).unwrap_or(u32::MAX),
            now.subsec_nanos(),
            rand::random(),
        );
        let list = UidList {
            uidvalidity,
            next_uid: 1,
            guid: Some(guid.to_hex()),
            entries: Vec::new(),
        };
        let dir = &self.folder.dir;
        replace_file(
            &self.folder.owner,
            &dir.join("tmp"),
            &self.uidlist_path,
            crate::maildir::format_uidlist(&list).as_bytes(),
        )?;
        Ok(list)
    }

    /// Appends `lines` (uid, S, W, base) to the uidlist and flushes it. UIDs are above every
    /// listed one, so the file stays ascending and its N is never lowered.
    fn append(
        &mut self,
        lines: &[(u32, Option<u64>, Option<u64>, String)],
    ) -> Result<(), LiveError> {
        if lines.is_empty() {
            return Ok(());
        }
        if !self.lock.is_ours() {
            return Err(LockError::Lost {
                path: self.lock.path().to_path_buf(),
            }
            .into());
        }
        let mut text = String::new();
        for (uid, s, w, base) in lines {
            text.push_str(&uid.to_string());
            if let Some(s) = s {
                text.push_str(&format!(" S{s}"));
            }
            if let Some(w) = w {
                text.push_str(&format!(" W{w}"));
            }
            text.push_str(" :");
            text.push_str(base);
            text.push('\n');
        }
        let path = &self.uidlist_path;
        let mut file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io(path, "open for append"))?;
        file.write_all(text.as_bytes())
            .map_err(io(path, "append"))?;
        file.sync_all().map_err(io(path, "sync"))?;
        let list = Arc::make_mut(&mut self.uidlist);
        for (uid, _, _, base) in lines {
            list.entries.push((*uid, Arc::from(base.as_str())));
        }
        Ok(())
    }

    fn next_uids(&self, count: usize) -> Result<u32, LiveError> {
        let next = self.uidlist.effective_next_uid();
        let last = u64::from(next) + count as u64;
        if last >= u64::from(u32::MAX) {
            return Err(LiveError::UidsExhausted {
                folder: self.folder.dir.clone(),
                next,
            });
        }
        Ok(next)
    }

    /// Gives a UID to every file in new/ and cur/ that the uidlist does not list (what an MDA
    /// drops, or what a crash left between our rename and our append), in Dovecot's order:
    /// by the time in the name, then by name.
    pub fn number_unlisted(&mut self) -> Result<NumberingReport, LiveError> {
        let mut report = NumberingReport::default();
        let mut found: Vec<(String, PathBuf, u64)> = Vec::new();
        let listed: HashSet<&str> = self.uidlist.entries.iter().map(|(_, b)| &**b).collect();
        for sub in ["new", "cur"] {
            let dir = self.folder.dir.join(sub);
            for entry in fs::read_dir(&dir).map_err(io(&dir, "read directory"))? {
                let entry = entry.map_err(io(&dir, "read directory"))?;
                self.consider(entry.path(), &listed, &mut found, &mut report);
            }
        }
        self.number(found, report)
    }

    /// [`LockedFolder::number_unlisted`] for the files at `paths` only (those a watcher
    /// named): no listing of the folder, which at 10 000 files costs more than the rest of
    /// a pass. A file no one named is numbered when it is named, or by the server.
    pub fn number_these(&mut self, paths: &[PathBuf]) -> Result<NumberingReport, LiveError> {
        let mut report = NumberingReport::default();
        let mut found: Vec<(String, PathBuf, u64)> = Vec::new();
        // Which of the files named the uidlist lists: one look at each line, no set of them all.
        let named: HashSet<&str> = paths
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.split(':').next())
            .collect();
        let listed: HashSet<&str> = self
            .uidlist
            .entries
            .iter()
            .map(|(_, b)| &**b)
            .filter(|b| named.contains(b))
            .collect();
        for path in paths {
            self.consider(path.clone(), &listed, &mut found, &mut report);
        }
        self.number(found, report)
    }

    /// Adds the file at `path` to `found` if it is mail the uidlist does not list yet.
    fn consider(
        &self,
        path: PathBuf,
        listed: &HashSet<&str>,
        found: &mut Vec<(String, PathBuf, u64)>,
        report: &mut NumberingReport,
    ) {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            report.skipped.push(Unnumberable {
                path,
                reason: UnnumberableReason::NotUtf8,
            });
            return;
        };
        // Dovecot ignores dot files in new/ and cur/.
        if name.starts_with('.') {
            return;
        }
        let base = name.split(':').next().unwrap_or("").to_string();
        if base.is_empty() || listed.contains(base.as_str()) {
            return;
        }
        if base.chars().any(char::is_control) {
            report.skipped.push(Unnumberable {
                path,
                reason: UnnumberableReason::ControlCharacter,
            });
            return;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            // Moved (new/ → cur/) or expunged while we looked: the next pass sees it.
            return;
        };
        if !meta.is_file() {
            return;
        }
        found.push((base, path, meta.len()));
    }

    /// Numbers `found` (base, path, size) after the last UID, in Dovecot's order.
    fn number(
        &mut self,
        mut found: Vec<(String, PathBuf, u64)>,
        mut report: NumberingReport,
    ) -> Result<NumberingReport, LiveError> {
        found.sort_by(|a, b| (name_time(&a.0), &a.0).cmp(&(name_time(&b.0), &b.0)));
        // The same base in new/ and cur/ (seen mid-move) gets one UID.
        found.dedup_by(|a, b| a.0 == b.0);
        let first = self.next_uids(found.len())?;
        let mut lines = Vec::with_capacity(found.len());
        for (i, (base, path, _)) in found.into_iter().enumerate() {
            let uid = first + i as u32;
            // Sizes only as the name gives them, as Dovecot's own sync numbers a file it
            // finds: a size from a stat here would be the size of a file still being written
            // by a writer that skipped tmp/, and Dovecot, trusting the line, then fails every
            // read of the whole message ("Cached message size smaller than expected").
            let (s, w) = sizes_in_name(&base);
            lines.push((uid, s, w, base.clone()));
            report.numbered.push(Numbered { uid, base, path });
        }
        self.append(&lines)?;
        Ok(report)
    }

    /// The folder's keywords with each of `wanted` registered (a letter each), writing
    /// `dovecot-keywords` under its own lock if one is new.
    fn register_keywords(&self, wanted: &[&String]) -> Result<Vec<(u8, String)>, LiveError> {
        let dir = &self.folder.dir;
        let path = dir.join("dovecot-keywords");
        let read = |path: &Path| -> Result<Vec<(u8, String)>, LiveError> {
            match fs::read_to_string(path) {
                Ok(t) => Ok(parse_keywords_file(&t)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(io(path, "read")(e).into()),
            }
        };
        let keywords = read(&path)?;
        if wanted.iter().all(|k| keywords.iter().any(|(_, n)| n == *k)) {
            return Ok(keywords);
        }
        let _lock = DotLock::acquire(
            &path,
            &dir.join("tmp"),
            Some((self.folder.owner.uid, self.folder.owner.gid)),
            &self.folder.settings,
        )?;
        let mut keywords = read(&path)?;
        for k in wanted {
            if keywords.iter().any(|(_, n)| n == *k) {
                continue;
            }
            // Indexes are never freed, so the first free one is the lowest unused.
            let Some(idx) = (0..MAX_KEYWORDS as u8).find(|i| keywords.iter().all(|(j, _)| j != i))
            else {
                return Err(LiveError::KeywordsFull {
                    folder: dir.clone(),
                    keyword: (*k).clone(),
                });
            };
            keywords.push((idx, (*k).clone()));
        }
        keywords.sort();
        replace_file(
            &self.folder.owner,
            &dir.join("tmp"),
            &path,
            format_keywords_file(&keywords).as_bytes(),
        )?;
        Ok(keywords)
    }

    /// Delivers one message: checks its flags, registers its keywords, writes it to tmp/,
    /// flushes it, renames it into cur/ with its `:2,` flags and appends its UID. The mtime is
    /// `internal_date` (Dovecot's INTERNALDATE for Maildir).
    pub fn deliver(
        &mut self,
        bytes: &[u8],
        flags: &[String],
        internal_date: i64,
    ) -> Result<Numbered, LiveError> {
        self.deliver_at(bytes, flags, internal_date, None)
    }

    /// Like [`LockedFolder::deliver`], with the UID given (`Some`) rather than the next one:
    /// a replicated message keeps the UID it has everywhere. A UID below the folder's next is
    /// [`LiveError::BelowNext`], and nothing is written.
    pub fn deliver_at(
        &mut self,
        bytes: &[u8],
        flags: &[String],
        internal_date: i64,
        wanted: Option<u32>,
    ) -> Result<Numbered, LiveError> {
        let uid = match wanted {
            Some(uid) => uid,
            None => self.next_uids(1)?,
        };
        let mut placed = self.deliver_all(&[Delivery {
            bytes,
            flags,
            internal_date,
            uid,
            link_from: None,
        }])?;
        match placed.pop() {
            Some(result) => result,
            // deliver_all answers every message it is given.
            None => Err(LiveError::Lock(LockError::Lost {
                path: self.lock.path().to_path_buf(),
            })),
        }
    }

    /// Delivers many messages at their UIDs (ascending) at the cost of a few: each is checked
    /// (its UID not below the folder's next nor the one before it in the batch, its flags
    /// storable, its keywords registered) and written to tmp/; then the file system is flushed
    /// once, the files are renamed into cur/ with their `:2,` flags, cur/ is flushed, and
    /// their UIDs are appended to the uidlist in one write. Returns one result per message: a
    /// refused one ([`LiveError::BelowNext`], [`LiveError::UnstorableFlag`],
    /// [`LiveError::KeywordsFull`]) wrote nothing. An error of the folder itself (I/O, the
    /// lock) is the outer error; files already renamed then wait for the next numbering.
    pub fn deliver_all(
        &mut self,
        batch: &[Delivery<'_>],
    ) -> Result<Vec<Result<Numbered, LiveError>>, LiveError> {
        let results = self.write_files(batch, true)?;
        if results.iter().any(Result::is_ok) {
            crate::maildir::fault::reached(crate::maildir::fault::PassPoint::Renamed);
        }
        let lines: Vec<(u32, Option<u64>, Option<u64>, String)> = results
            .iter()
            .zip(batch)
            .filter_map(|(r, item)| {
                let placed = r.as_ref().ok()?;
                let size = item.bytes.len() as u64;
                Some((
                    item.uid,
                    Some(size),
                    Some(virtual_size(item.bytes)),
                    placed.base.clone(),
                ))
            })
            .collect();
        self.append(&lines)?;
        Ok(results)
    }

    /// Writes each message's file into cur/ (tmp/ first, one flush for all, then the renames
    /// and a flush of cur/), and returns where each went, without a uidlist line. With
    /// `below_next` a UID below the folder's next (or the one before it in the batch) is
    /// refused.
    fn write_files(
        &mut self,
        batch: &[Delivery<'_>],
        below_next: bool,
    ) -> Result<Vec<Result<Numbered, LiveError>>, LiveError> {
        let mut next = if below_next {
            self.next_uids(batch.len())?
        } else {
            0
        };
        let mut results: Vec<Result<Numbered, LiveError>> = Vec::with_capacity(batch.len());
        let mut written: Vec<(usize, PathBuf, String)> = Vec::new();
        let host = hostname().replace('/', "\\057").replace(':', "\\072");
        for (n, item) in batch.iter().enumerate() {
            if below_next && item.uid < next {
                results.push(Err(LiveError::BelowNext {
                    folder: self.folder.dir.clone(),
                    uid: item.uid,
                    next,
                }));
                continue;
            }
            let info = match self.info_for(item.flags) {
                Ok(info) => info,
                Err(e @ (LiveError::UnstorableFlag { .. } | LiveError::KeywordsFull { .. })) => {
                    results.push(Err(e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            next = item.uid.saturating_add(1);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let size = item.bytes.len() as u64;
            let vsize = virtual_size(item.bytes);
            let base = format!(
                "{}.M{}P{}Q{}.{host},S={size},W={vsize}",
                now.as_secs(),
                now.subsec_micros(),
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let tmp = self.folder.dir.join("tmp").join(&base);
            let file = match item.link_from {
                Some(source) => self.folder.owner.link_file(source, &tmp)?,
                None => None,
            };
            let file = match file {
                Some(file) => file,
                None => {
                    let mut file = self.folder.owner.create_file(&tmp)?;
                    file.write_all(item.bytes).map_err(io(&tmp, "write"))?;
                    file
                }
            };
            let mtime = u64::try_from(item.internal_date)
                .ok()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s));
            if let Some(mtime) = mtime {
                file.set_modified(mtime).map_err(io(&tmp, "set mtime"))?;
            }
            let path = self.folder.dir.join("cur").join(format!("{base}:{info}"));
            results.push(Ok(Numbered {
                uid: item.uid,
                base,
                path,
            }));
            written.push((n, tmp, info));
        }
        if written.is_empty() {
            return Ok(results);
        }
        let tmp_dir = self.folder.dir.join("tmp");
        let paths: Vec<&Path> = written.iter().map(|(_, tmp, _)| tmp.as_path()).collect();
        flush_files(&tmp_dir, &paths)?;
        for (n, tmp, _) in &written {
            if let Some(Ok(placed)) = results.get(*n) {
                fs::rename(tmp, &placed.path).map_err(io(&placed.path, "rename into cur"))?;
            }
        }
        sync_dir(&self.folder.dir.join("cur"))?;
        Ok(results)
    }

    /// Writes each message's file into cur/ as [`LockedFolder::deliver_all`] does, but lists
    /// none of them: for [`LockedFolder::rebuild`], which lists them with the rest.
    pub fn place_files(
        &mut self,
        batch: &[Delivery<'_>],
    ) -> Result<Vec<Result<Numbered, LiveError>>, LiveError> {
        self.write_files(batch, false)
    }

    /// Gives a folder that holds mail another UIDVALIDITY and GUID: the uidlist is written
    /// anew (renamed into place) listing exactly `entries` (UID, base name), with at least
    /// `next` as its next UID. This is what a replica does when a peer's UIDVALIDITY won
    /// (docs/PROTOCOL.md, "The IMAP promises"): the server sees the new UIDVALIDITY and its
    /// clients resynchronise. Files listed nowhere are numbered by the next pass, as new mail.
    pub fn rebuild(
        &mut self,
        uidvalidity: u32,
        guid: &str,
        mut entries: Vec<(u32, String)>,
        next: u32,
    ) -> Result<(), LiveError> {
        if !self.lock.is_ours() {
            return Err(LockError::Lost {
                path: self.lock.path().to_path_buf(),
            }
            .into());
        }
        entries.sort();
        entries.dedup_by_key(|(uid, _)| *uid);
        let next = entries
            .last()
            .map_or(next, |(uid, _)| next.max(uid.saturating_add(1)));
        self.install_uidlist(UidList {
            uidvalidity,
            next_uid: next.max(1),
            guid: Some(guid.to_string()),
            entries: entries
                .into_iter()
                .map(|(uid, base)| (uid, Arc::from(base)))
                .collect(),
        })
    }

    /// Writes `list` as the folder's uidlist (a new file renamed into place) and reads it as
    /// ours from now on.
    fn install_uidlist(&mut self, list: UidList) -> Result<(), LiveError> {
        replace_file(
            &self.folder.owner,
            &self.folder.dir.join("tmp"),
            &self.uidlist_path,
            crate::maildir::format_uidlist(&list).as_bytes(),
        )?;
        self.uidlist = Arc::new(list);
        Ok(())
    }

    /// The `:2,` part of a file name with exactly `flags`: system flags by letter, keywords by
    /// their letter in `dovecot-keywords` (registered there if new).
    fn info_for(&self, flags: &[String]) -> Result<String, LiveError> {
        let mut keywords_wanted = Vec::new();
        for flag in flags {
            if is_system_flag_syntax(flag) {
                if system_flag_letter(flag).is_none() {
                    return Err(LiveError::UnstorableFlag {
                        flag: flag.clone(),
                        problem: "not a storable system flag".to_string(),
                    });
                }
            } else {
                check_keyword(flag).map_err(|problem| LiveError::UnstorableFlag {
                    flag: flag.clone(),
                    problem,
                })?;
                keywords_wanted.push(flag);
            }
        }
        // System flags alone need no letters from dovecot-keywords (not read for each message).
        let keywords = if keywords_wanted.is_empty() {
            Vec::new()
        } else {
            self.register_keywords(&keywords_wanted)?
        };
        let (info, dropped) = format_info(flags, &keywords);
        if let Some((flag, problem)) = dropped.into_iter().next() {
            return Err(LiveError::UnstorableFlag { flag, problem });
        }
        Ok(info)
    }

    /// The file with base name `base`, in cur/ or new/ (`None` if there is none).
    pub fn find(&self, base: &str) -> Result<Option<PathBuf>, LiveError> {
        find_base(&self.folder.dir, base)
    }

    /// Renames the file with base name `base` into cur/ with exactly `flags` in its `:2,`
    /// part (Dovecot's flag change), if its name still shows `from` (the flags index and disk
    /// last agreed on). Returns false, changing nothing, if there is no such file, or if its
    /// name shows other flags: the server changed them since, and the next pass reads the
    /// file and merges both changes instead of overwriting the server's.
    pub fn set_flags(
        &mut self,
        base: &str,
        from: &[String],
        flags: &[String],
    ) -> Result<bool, LiveError> {
        let wanted: Vec<&String> = flags.iter().filter(|f| !is_system_flag_syntax(f)).collect();
        let keywords = self.register_keywords(&wanted)?;
        let (info, dropped) = format_info(flags, &keywords);
        if let Some((flag, problem)) = dropped.into_iter().next() {
            return Err(LiveError::UnstorableFlag { flag, problem });
        }
        let Some(path) = self.find_showing(base, from, &keywords)? else {
            return Ok(false);
        };
        let target = self.folder.dir.join("cur").join(format!("{base}:{info}"));
        if target != path {
            fs::rename(&path, &target).map_err(io(&target, "rename"))?;
        }
        Ok(true)
    }

    /// The file with base name `base` if its name shows exactly the flags `from`: tried
    /// first under the names they are written as (a stat each), then in a listing of the
    /// folder (the letters in another order).
    fn find_showing(
        &self,
        base: &str,
        from: &[String],
        keywords: &[(u8, String)],
    ) -> Result<Option<PathBuf>, LiveError> {
        let dir = &self.folder.dir;
        let (was, _) = format_info(from, keywords);
        let mut names = vec![
            dir.join("cur").join(format!("{base}:{was}")),
            dir.join("new").join(format!("{base}:{was}")),
        ];
        if from.is_empty() {
            names.push(dir.join("new").join(base));
            names.push(dir.join("cur").join(base));
        }
        for name in names {
            if name.is_file() {
                return Ok(Some(name));
            }
        }
        let Some(path) = file_names(dir)?.remove(base) else {
            return Ok(None);
        };
        let shown = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| parse_filename(n, keywords).flags);
        let mut shown = shown.unwrap_or_default();
        let mut from = from.to_vec();
        shown.sort();
        from.sort();
        Ok((shown == from).then_some(path))
    }

    /// Removes the files with these base names (expunges); returns, for each, whether there
    /// was one. A file is looked for under its plain names first (a stat each); the others,
    /// whose names carry flags, are found in one listing of the folder for them all, not one
    /// per file: a folder of 11 000 files takes a few milliseconds to list, and a round of
    /// replicated expunges named 75 files in one folder.
    pub fn unlink_all(&mut self, bases: &[String]) -> Result<Vec<bool>, LiveError> {
        self.unlink_all_named(bases, &BTreeMap::new())
    }

    /// [`LockedFolder::unlink_all`], with the flags each file's name showed when index and
    /// disk last agreed, where known: a file with only system flags is then looked for under
    /// the name they give first, and the folder is listed only for the others (at 10 000
    /// files a listing cost a replica more than the rest of its pass).
    pub fn unlink_all_named(
        &mut self,
        bases: &[String],
        flags: &BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<bool>, LiveError> {
        let mut listing: Option<HashMap<String, PathBuf>> = None;
        let mut out = Vec::with_capacity(bases.len());
        for base in bases {
            let named = flags
                .get(base)
                .filter(|f| f.iter().all(|f| is_system_flag_syntax(f)))
                .and_then(|f| {
                    let (info, dropped) = format_info(f, &[]);
                    dropped
                        .is_empty()
                        .then(|| self.folder.dir.join("cur").join(format!("{base}:{info}")))
                })
                .filter(|p| p.is_file());
            let path = match named.or_else(|| plain_file(&self.folder.dir, base)) {
                Some(path) => Some(path),
                None => {
                    let names = match &mut listing {
                        Some(names) => names,
                        None => listing.insert(file_names(&self.folder.dir)?),
                    };
                    names.remove(base.as_str())
                }
            };
            let removed = match path {
                Some(path) => match fs::remove_file(&path) {
                    Ok(()) => true,
                    Err(e) if e.kind() == ErrorKind::NotFound => false,
                    Err(e) => return Err(io(&path, "remove")(e).into()),
                },
                None => false,
            };
            out.push(removed);
        }
        Ok(out)
    }

    /// Removes the file with base name `base` (an expunge). Returns whether there was one.
    pub fn unlink(&mut self, base: &str) -> Result<bool, LiveError> {
        Ok(self.unlink_all(&[base.to_string()])?.contains(&true))
    }

    /// Gives a folder that holds no message and has given out no UID another UIDVALIDITY and
    /// GUID (a new uidlist, renamed into place), so that an empty folder a login made takes the
    /// identity of the mailbox replicated into it. Returns false, changing nothing, if the
    /// folder has mail or has given out a UID.
    pub fn adopt_identity(&mut self, uidvalidity: u32, guid: &str) -> Result<bool, LiveError> {
        if !self.uidlist.entries.is_empty() || self.uidlist.effective_next_uid() > 1 {
            return Ok(false);
        }
        if self.uidlist.uidvalidity == uidvalidity && self.uidlist.guid.as_deref() == Some(guid) {
            return Ok(true);
        }
        for sub in ["new", "cur"] {
            let dir = self.folder.dir.join(sub);
            let mut entries = fs::read_dir(&dir).map_err(io(&dir, "read directory"))?;
            if entries.any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))) {
                return Ok(false);
            }
        }
        self.install_uidlist(UidList {
            uidvalidity,
            next_uid: 1,
            guid: Some(guid.to_string()),
            entries: Vec::new(),
        })?;
        Ok(true)
    }
}

/// The file with base name `base` in `dir`'s cur/ or new/.
pub(crate) fn find_base(dir: &Path, base: &str) -> Result<Option<PathBuf>, LiveError> {
    if let Some(path) = plain_file(dir, base) {
        return Ok(Some(path));
    }
    // Otherwise, with whatever info it has: a listing of both.
    Ok(file_names(dir)?.remove(base))
}

/// The file of base name `base` under its plain name (no `:2,` info), in cur/ or new/: a
/// stat each, the common case of a file no one has flagged yet.
fn plain_file(dir: &Path, base: &str) -> Option<PathBuf> {
    ["cur", "new"]
        .iter()
        .map(|sub| dir.join(sub).join(base))
        .find(|p| p.is_file())
}

/// Whether a base name is one [`LockedFolder::deliver_all`] made: `<secs>.M<usecs>P<pid>Q<n>.`
/// and the host. Dovecot's own names have no `Q` part.
pub fn is_our_base(base: &str) -> bool {
    let Some(id) = base.split('.').nth(1) else {
        return false;
    };
    let Some(rest) = id.strip_prefix('M') else {
        return false;
    };
    let mut parts = rest.split(['P', 'Q']);
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Every file in a folder's cur/ and new/ by base name (names only: no stat). A base name in
/// both keeps its cur/ file, the one Dovecot already knows.
pub fn file_names(dir: &Path) -> Result<HashMap<String, PathBuf>, LiveError> {
    Ok(crate::maildir::scan::names_by_base(dir)?)
}

/// Makes the Maildir root `root` (and any missing directory above it), each directory made
/// with the owner and mode of the nearest one that exists: a user that arrives from a peer
/// gets a Maildir the mail server can read.
pub fn make_root(root: &Path) -> Result<(), LiveError> {
    let mut missing = Vec::new();
    let mut at = root;
    while !at.exists() {
        missing.push(at.to_path_buf());
        at = at.parent().ok_or_else(|| MaildirError::NotMaildir {
            path: root.to_path_buf(),
            problem: "no existing directory above it".into(),
        })?;
    }
    let owner = Owner::of(at)?;
    if owner.uid == 0 && !missing.is_empty() {
        // Dovecot refuses to run as root: it will not be able to write its index or take the
        // uidlist lock in a Maildir root owns, and its clients see a stale view.
        tracing::warn!(
            maildir = %root.display(),
            above = %at.display(),
            "making a Maildir owned by root, like the directory above it; Dovecot's mail user cannot write there: chown the directory above to the mail user"
        );
    }
    for dir in missing.iter().rev() {
        owner.make_dir(dir)?;
    }
    LiveFolder::open(root)?;
    Ok(())
}

/// Removes a folder as Dovecot deletes one: renamed out of sight to `..DOVECOT-TRASHED` under
/// the root first (so no reader sees it half removed), then removed.
pub fn remove_folder(root: &Path, mailbox: &str) -> Result<bool, LiveError> {
    let dir = root.join(folder_dir_name(mailbox)?);
    let trash = root.join("..DOVECOT-TRASHED");
    match fs::rename(&dir, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(&dir, "rename to ..DOVECOT-TRASHED")(e).into()),
    }
    fs::remove_dir_all(&trash).map_err(io(&trash, "remove"))?;
    Ok(true)
}

/// Renames a folder's directory (one level: Dovecot renames each child itself).
pub fn rename_folder(root: &Path, from: &str, to: &str) -> Result<bool, LiveError> {
    let old = root.join(folder_dir_name(from)?);
    let new = root.join(folder_dir_name(to)?);
    if new.exists() {
        return Err(MaildirError::NotMaildir {
            path: new,
            problem: "a folder of that name exists already".into(),
        }
        .into());
    }
    match fs::rename(&old, &new) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(&old, "rename folder")(e).into()),
    }
}

/// Writes the root's `subscriptions` file (through tmp/ and a rename) with `names`.
pub fn write_subscriptions(root: &Path, names: &[String]) -> Result<(), LiveError> {
    let owner = Owner::of(root)?;
    let text = crate::maildir::folder::format_subscriptions(names)?;
    replace_file(
        &owner,
        &root.join("tmp"),
        &root.join("subscriptions"),
        text.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildir::parse_uidlist;
    use crate::maildir::scan;

    fn root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("merkmail-live-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("root");
        dir
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// Expunges of files with and without flags in their names, in cur/ and new/, one of them
    /// already gone: each is removed, the gone one reported so, other files left alone.
    #[test]
    fn unlink_all_removes_each_named_base_wherever_its_flags_put_it() {
        let root = root("unlink-all");
        let folder = LiveFolder::open(&root).expect("open");
        for name in [
            "new/1.plain.host",
            "cur/2.flagged.host,S=3:2,FS",
            "cur/3.bare.host:2,",
            "cur/4.kept.host:2,S",
        ] {
            fs::write(root.join(name), "x\n").expect("write");
        }
        let mut locked = folder.lock().expect("lock");
        let removed = locked
            .unlink_all(&s(&[
                "1.plain.host",
                "2.flagged.host,S=3",
                "3.bare.host",
                "5.gone.host",
            ]))
            .expect("unlink");
        assert_eq!(removed, [true, true, true, false]);
        let left = file_names(&root).expect("list");
        assert_eq!(left.keys().collect::<Vec<_>>(), ["4.kept.host"]);
    }

    /// The flags a file showed are a hint: where the file still has that name it is removed
    /// without a listing; where its flags changed since (or it carries keywords, or no hint
    /// is known) it is still found and removed; a gone file is reported so.
    #[test]
    fn unlink_all_named_finds_each_file_whether_its_flag_hint_holds_or_not() {
        let root = root("unlink-named");
        let folder = LiveFolder::open(&root).expect("open");
        for name in [
            "cur/1.hinted.host:2,S",
            "cur/2.renamed.host:2,FS",
            "cur/3.keyword.host:2,Sa",
            "new/4.unhinted.host",
            "cur/5.kept.host:2,S",
        ] {
            fs::write(root.join(name), "x\n").expect("write");
        }
        let hints: BTreeMap<String, Vec<String>> = [
            ("1.hinted.host", vec!["\\Seen"]),
            ("2.renamed.host", vec!["\\Seen"]),
            ("3.keyword.host", vec!["\\Seen", "Junk"]),
            ("6.gone.host", vec![]),
        ]
        .into_iter()
        .map(|(b, f)| (b.to_string(), f.into_iter().map(str::to_string).collect()))
        .collect();
        let mut locked = folder.lock().expect("lock");
        let removed = locked
            .unlink_all_named(
                &s(&[
                    "1.hinted.host",
                    "2.renamed.host",
                    "3.keyword.host",
                    "4.unhinted.host",
                    "6.gone.host",
                ]),
                &hints,
            )
            .expect("unlink");
        assert_eq!(removed, [true, true, true, true, false]);
        let left = file_names(&root).expect("list");
        assert_eq!(left.keys().collect::<Vec<_>>(), ["5.kept.host"]);
    }

    #[test]
    fn delivery_and_numbering_append_ascending_lines() {
        let root = root("deliver");
        let folder = LiveFolder::open(&root).expect("open");
        // What an MDA drops: a file in new/ and one in cur/ with no UID.
        fs::write(root.join("new/1700000002.x.host"), "b\n").expect("w");
        fs::write(root.join("cur/1700000001.y.host,S=3:2,S"), "a\r\n").expect("w");
        let mut locked = folder.lock().expect("lock");
        let report = locked.number_unlisted().expect("number");
        let uids: Vec<_> = report
            .numbered
            .iter()
            .map(|n| (n.uid, n.base.as_str()))
            .collect();
        assert_eq!(
            uids,
            vec![(1, "1700000001.y.host,S=3"), (2, "1700000002.x.host")]
        );
        let delivered = locked
            .deliver(
                b"Subject: x\n\nhi\n",
                &s(&["\\Seen", "$Label1"]),
                1_600_000_000,
            )
            .expect("deliver");
        assert_eq!(delivered.uid, 3);
        assert!(delivered.path.to_string_lossy().ends_with(":2,Sa"));
        drop(locked);
        assert!(!root.join("dovecot-uidlist.lock").exists());

        let text = fs::read_to_string(root.join("dovecot-uidlist")).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("3 V") && lines[0].contains(" N1 G"));
        assert_eq!(lines[1], "1 S3 :1700000001.y.host,S=3");
        assert_eq!(lines[2], "2 :1700000002.x.host");
        assert_eq!(lines[3], format!("3 S15 W18 :{}", delivered.base));
        assert_eq!(
            fs::read_to_string(root.join("dovecot-keywords")).expect("kw"),
            "0 $Label1\n"
        );
        // Our own scanner reads back what we wrote: UIDs, flags, keywords.
        let folders = scan(&root).expect("scan");
        let msgs = &folders[0].messages;
        let ours = msgs.iter().find(|m| m.uid == Some(3)).expect("uid 3");
        assert_eq!(ours.flags, s(&["\\Seen", "$Label1"]));
        assert_eq!(ours.internal_date, 1_600_000_000);

        // A second pass numbers nothing again, and a new file continues above.
        let mut locked = folder.lock().expect("lock");
        assert!(locked.number_unlisted().expect("again").numbered.is_empty());
        fs::write(root.join("new/1600000000.old"), "c").expect("w");
        let report = locked.number_unlisted().expect("third");
        assert_eq!(
            report.numbered[0].uid, 4,
            "an old name still gets a UID above all listed"
        );
    }

    #[test]
    fn a_batch_is_delivered_at_its_uids_in_order_or_refused_one_by_one() {
        let root = root("batch");
        let folder = LiveFolder::open(&root).expect("open");
        let mut locked = folder.lock().expect("lock");
        let seen = s(&["\\Seen"]);
        let bad = s(&["\\Recent"]);
        let item = |bytes: &'static [u8], flags: &'static [String], uid| Delivery {
            bytes,
            flags,
            internal_date: 1_600_000_000,
            uid,
            link_from: None,
        };
        let (seen, bad): (&'static [String], &'static [String]) = (Vec::leak(seen), Vec::leak(bad));
        let results = locked
            .deliver_all(&[
                item(b"one\n", seen, 3),
                item(b"two\n", bad, 5),
                item(b"three\n", &[], 7),
                item(b"four\n", &[], 6),
            ])
            .expect("deliver");
        let uids: Vec<Result<u32, String>> = results
            .iter()
            .map(|r| r.as_ref().map(|n| n.uid).map_err(|e| e.to_string()))
            .collect();
        assert_eq!(uids[0], Ok(3));
        assert!(
            uids[1].is_err(),
            "an unstorable flag refuses that message only"
        );
        assert_eq!(uids[2], Ok(7));
        assert!(
            matches!(
                results[3],
                Err(LiveError::BelowNext {
                    uid: 6,
                    next: 8,
                    ..
                })
            ),
            "{:?}",
            results[3]
        );
        drop(locked);
        let text = fs::read_to_string(root.join("dovecot-uidlist")).expect("read");
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("3 S4 W5 :") && lines[1].starts_with("7 S6 W7 :"));
        let placed: Vec<&Numbered> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        for n in &placed {
            assert!(n.path.starts_with(root.join("cur")) && n.path.is_file());
            assert!(is_our_base(&n.base), "{}", n.base);
        }
        assert!(placed[0].path.to_string_lossy().ends_with(":2,S"));
        assert_eq!(fs::read_dir(root.join("tmp")).expect("tmp").count(), 0);
        assert!(!is_our_base("1700000000.M1P2.host,S=3"));
        assert!(!is_our_base("1700000000.mda.host"));
        assert!(!is_our_base("1700000000.M1PxQ2.host"));
    }

    #[test]
    fn numbering_never_lowers_the_header_next_uid() {
        let root = root("never-lower");
        let folder = LiveFolder::open(&root).expect("open");
        fs::write(
            root.join("dovecot-uidlist"),
            "3 V5 N40 G0123456789abcdef0123456789abcdef\n7 :gone\n",
        )
        .expect("w");
        fs::write(root.join("new/1.a"), "x").expect("w");
        let mut locked = folder.lock().expect("lock");
        assert_eq!(locked.number_unlisted().expect("n").numbered[0].uid, 40);
        let next = locked.deliver(b"x", &[], 0).expect("deliver");
        assert_eq!(next.uid, 41);
        let text = fs::read_to_string(root.join("dovecot-uidlist")).expect("read");
        assert!(text.starts_with("3 V5 N40 G0123456789abcdef0123456789abcdef\n7 :gone\n40 :1.a\n"));
        assert!(parse_uidlist(&text).is_ok());
    }

    #[test]
    fn a_torn_last_line_is_cut_off_under_the_lock_and_its_file_numbered_again() {
        // A SIGKILL cut an append short at a page boundary: the last line has no end. Dovecot
        // would append after it and merge two lines (checked with Dovecot 2.3: `2 S1` torn,
        // then its own `2 :b` made `2 S12 :b`).
        let root = root("torn");
        let folder = LiveFolder::open(&root).expect("open");
        fs::write(root.join("cur/1700000001.a.host:2,"), "a").expect("w");
        fs::write(root.join("cur/1700000002.b.host:2,"), "b").expect("w");
        let header = "3 V5 N1 G0123456789abcdef0123456789abcdef\n";
        fs::write(
            root.join("dovecot-uidlist"),
            format!("{header}1 :1700000001.a.host\n2 S1 :1700000002.b"),
        )
        .expect("w");
        let mut locked = folder.lock().expect("the lock, with the torn line cut off");
        let numbered = locked.number_unlisted().expect("number");
        assert_eq!(
            numbered
                .numbered
                .iter()
                .map(|n| (n.uid, n.base.as_str()))
                .collect::<Vec<_>>(),
            [(2, "1700000002.b.host")]
        );
        drop(locked);
        let text = fs::read_to_string(root.join("dovecot-uidlist")).expect("read");
        assert_eq!(
            text,
            format!("{header}1 :1700000001.a.host\n2 :1700000002.b.host\n")
        );
        // A torn header leaves nothing to keep: refused, and the file is left as it is.
        fs::write(root.join("dovecot-uidlist"), "3 V5 N1").expect("w");
        assert!(matches!(
            folder.lock(),
            Err(LiveError::UnterminatedUidlist { .. })
        ));
        assert_eq!(
            fs::read_to_string(root.join("dovecot-uidlist")).expect("read"),
            "3 V5 N1"
        );
    }

    #[test]
    fn odd_names_are_numbered_or_skipped_with_a_reason() {
        let root = root("odd");
        let folder = LiveFolder::open(&root).expect("open");
        for name in [
            "1.sp ace",
            "2.ünï,cødé",
            "3.semi;colon:2,S",
            ".hidden",
            "4.tab\there",
        ] {
            fs::write(root.join("new").join(name), "x").expect("w");
        }
        let mut locked = folder.lock().expect("lock");
        let report = locked.number_unlisted().expect("n");
        let bases: Vec<_> = report.numbered.iter().map(|n| n.base.as_str()).collect();
        assert_eq!(bases, vec!["1.sp ace", "2.ünï,cødé", "3.semi;colon"]);
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(
            report.skipped[0].reason,
            UnnumberableReason::ControlCharacter
        );
        let list = parse_uidlist(&fs::read_to_string(root.join("dovecot-uidlist")).expect("r"))
            .expect("parse");
        assert_eq!(list.entries.len(), 3);
    }

    #[test]
    fn a_27th_keyword_is_an_error_and_writes_nothing() {
        let root = root("kw");
        let folder = LiveFolder::open(&root).expect("open");
        let kws: String = (0..26).map(|i| format!("{i} k{i}\n")).collect();
        fs::write(root.join("dovecot-keywords"), kws).expect("w");
        let mut locked = folder.lock().expect("lock");
        assert!(locked.deliver(b"x", &s(&["k25"]), 0).is_ok());
        match locked.deliver(b"x", &s(&["new-one"]), 0) {
            Err(LiveError::KeywordsFull { keyword, .. }) => assert_eq!(keyword, "new-one"),
            other => panic!("expected KeywordsFull, got {other:?}"),
        }
        assert!(matches!(
            locked.deliver(b"x", &s(&["\\Recent"]), 0),
            Err(LiveError::UnstorableFlag { .. })
        ));
        assert_eq!(fs::read_dir(root.join("cur")).expect("ls").count(), 1);
        assert_eq!(locked.uidlist().entries.len(), 1);
    }

    #[test]
    fn concurrent_writers_never_give_a_uid_twice() {
        let root = root("concurrent");
        LiveFolder::create(&root, "INBOX").expect("inbox");
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let folder = LiveFolder::create(&root, "Sub/Folder").expect("create");
                    for i in 0..10 {
                        if i % 3 == 0 {
                            fs::write(folder.dir().join(format!("new/{t}{i}.mda")), "m")
                                .expect("w");
                        }
                        let mut locked = folder.lock().expect("lock");
                        locked.number_unlisted().expect("number");
                        locked
                            .deliver(format!("{t} {i}").as_bytes(), &[], 0)
                            .expect("deliver");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        let dir = root.join(".Sub.Folder");
        assert!(dir.join("maildirfolder").exists());
        let list = parse_uidlist(&fs::read_to_string(dir.join("dovecot-uidlist")).expect("r"))
            .expect("parse");
        assert_eq!(list.entries.len(), 4 * 10 + 4 * 4);
        let uids: Vec<u32> = list.entries.iter().map(|(u, _)| *u).collect();
        assert_eq!(uids, (1..=56).collect::<Vec<_>>());
    }

    #[test]
    fn made_files_take_the_directory_owner_and_mode() {
        let root = root("owner");
        fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .expect("chmod");
        let folder = LiveFolder::create(&root, "Work").expect("create");
        let mut locked = folder.lock().expect("lock");
        let msg = locked.deliver(b"x", &s(&["kw"]), 0).expect("deliver");
        let want = Owner::of(&root).expect("owner");
        for path in [
            folder.dir().to_path_buf(),
            folder.dir().join("cur"),
            folder.dir().join("dovecot-uidlist"),
            folder.dir().join("dovecot-keywords"),
            msg.path.clone(),
        ] {
            let meta = fs::metadata(&path).expect("stat");
            assert_eq!(
                (meta.uid(), meta.gid()),
                (want.uid, want.gid),
                "{}",
                path.display()
            );
            let mode = meta.mode() & 0o777;
            let expected = if meta.is_dir() { 0o750 } else { 0o640 };
            assert_eq!(mode, expected, "{}", path.display());
        }
    }

    /// A spooled body is linked into tmp/ and renamed into cur/ (one inode, the folder's
    /// owner and mode); a body whose spool file another delivery already linked is written
    /// as a copy (that other link may belong to another user); a missing spool file is
    /// written too.
    #[test]
    fn a_spooled_body_is_linked_unless_another_name_shares_it() {
        let root = root("link");
        fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .expect("chmod");
        let spool = root.join("spool");
        fs::create_dir_all(&spool).expect("spool");
        let body = b"Subject: s\r\n\r\nspooled\r\n";
        let (first, second) = (spool.join("first"), spool.join("second"));
        for f in [&first, &second] {
            fs::write(f, body).expect("w");
            fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
        }
        // `second` has a name elsewhere already (another delivery's).
        fs::hard_link(&second, root.join("elsewhere")).expect("link");
        let folder = LiveFolder::create(&root, "Work").expect("create");
        let mut locked = folder.lock().expect("lock");
        let flags = s(&["\\Seen"]);
        let item = |link_from: Option<&'static Path>| Delivery {
            bytes: body,
            flags: &flags,
            internal_date: 1_600_000_000,
            uid: 0,
            link_from,
        };
        let first_p: &'static Path = Box::leak(first.clone().into_boxed_path());
        let second_p: &'static Path = Box::leak(second.clone().into_boxed_path());
        let gone: &'static Path = Box::leak(spool.join("gone").into_boxed_path());
        let mut batch = Vec::new();
        for (uid, from) in [(1, Some(first_p)), (2, Some(second_p)), (3, Some(gone))] {
            let mut d = item(from);
            d.uid = uid;
            batch.push(d);
        }
        let placed: Vec<Numbered> = locked
            .deliver_all(&batch)
            .expect("deliver")
            .into_iter()
            .map(|r| r.expect("placed"))
            .collect();
        let want = Owner::of(&root).expect("owner");
        let ino = |p: &Path| fs::metadata(p).expect("stat").ino();
        assert_eq!(ino(&placed[0].path), ino(&first), "linked, not written");
        assert_ne!(
            ino(&placed[1].path),
            ino(&second),
            "a shared file is copied"
        );
        assert_eq!(
            fs::metadata(&second).expect("stat").nlink(),
            2,
            "its links stay"
        );
        for p in &placed {
            let meta = fs::metadata(&p.path).expect("stat");
            assert_eq!(fs::read(&p.path).expect("read"), body);
            assert_eq!((meta.uid(), meta.gid()), (want.uid, want.gid));
            assert_eq!(meta.mode() & 0o777, 0o640, "{}", p.path.display());
            assert_eq!(meta.mtime(), 1_600_000_000);
        }
        assert!(fs::read_dir(folder.dir().join("tmp"))
            .expect("tmp")
            .next()
            .is_none());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn virtual_size_counts_bare_line_feeds() {
        assert_eq!(virtual_size(b""), 0);
        assert_eq!(virtual_size(b"a\nb\r\n"), 6);
        assert_eq!(sizes_in_name("1.x,S=5,W=7"), (Some(5), Some(7)));
        assert_eq!(sizes_in_name("1.x"), (None, None));
    }
}
