//! The live backend: a store whose mail is a Maildir tree a real IMAP server serves
//! (docs/MAILDIR.md, "The live backend"; DESIGN §8).
//!
//! One [`pass`] brings a user's Maildir and the index in step, both ways, folder by folder:
//! - **disk → index** (the scanner): what the mail server did since the last pass (files that
//!   appeared, flags renamed, files gone, folders made, deleted or renamed, subscriptions)
//!   becomes ordinary local writes — stamped, journaled, tree updated — so it replicates like
//!   any other write. Each file is compared with the state index and disk last agreed on
//!   (`store::FileRow`), so a flag the server changed and one a peer changed are told apart.
//! - **index → disk** (the mirror): what the index holds and the folder does not show yet
//!   (replicated mail, flags, expunges, folders) is written as Dovecot expects it, under
//!   `dovecot-uidlist.lock` (src/maildir/live.rs), and then settled in the index.
//!
//! Crash safety: the index records which mailboxes are owed to the disk in the transaction
//! that changes them; a pass settles a mailbox only after its disk work is done. A crash in
//! between leaves the mailbox owed, and the next pass redoes what is missing: a file
//! delivered but not settled is recognised by its UID and digest, never imported twice. No
//! file the index does not know is ever removed: a file it does not know is mail to import.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::maildir::fault::{self, PassPoint};
use crate::maildir::live::{self, LiveError, LiveFolder};
use crate::maildir::scan::{list, scan, scan_folder, scan_names, ScannedFolder, ScannedMessage};
use crate::maildir::watch::{UidlistMark, Watched};
use crate::maildir::{MaildirError, UidList, INBOX};
use crate::model::{Digest, FlagName, MailboxGuid};
use crate::store::{
    AppendOutcome, DiskFlags, FileRow, FolderRow, FolderState, FoundOnDisk, MailboxMirror,
    MirrorEdit, MirrorSettle, NewMessage, Store, StoreError,
};

/// Why a pass stopped. What it did before stays done and settled; the rest is still owed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error(transparent)]
    Maildir(#[from] MaildirError),
    /// The template is not one merkmail can use.
    #[error("maildir template {template:?}: {problem}")]
    Template { template: String, problem: String },
}

/// Where each user's Maildir is: a path with `%u` for the user, the form of Dovecot's
/// `mail_location` (`/srv/vmail/%u/Maildir`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    /// The directory that holds one entry per user.
    parent: PathBuf,
    /// What follows the user's directory (`Maildir` in `/srv/vmail/%u/Maildir`), maybe empty.
    below: PathBuf,
}

impl Template {
    /// Checks a template: an absolute path in which `%u` is exactly one whole component.
    pub fn parse(text: &str) -> Result<Template, BackendError> {
        let bad = |problem: &str| BackendError::Template {
            template: text.to_string(),
            problem: problem.to_string(),
        };
        let path = Path::new(text);
        if !path.is_absolute() {
            return Err(bad("must be an absolute path"));
        }
        if text.matches("%u").count() != 1 {
            return Err(bad("must hold %u (the user) exactly once"));
        }
        let mut parent = PathBuf::new();
        let mut below = PathBuf::new();
        let mut seen = false;
        for part in path.components() {
            let s = part.as_os_str().to_string_lossy();
            if s == "%u" {
                seen = true;
            } else if s.contains("%u") {
                return Err(bad("%u must be a whole path component (…/%u/…)"));
            } else if s.contains('%') {
                return Err(bad("only %u is understood"));
            } else if seen {
                below.push(part);
            } else {
                parent.push(part);
            }
        }
        Ok(Template {
            text: text.to_string(),
            parent,
            below,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The directory that holds one entry per user.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// The Maildir root of `user`.
    pub fn root(&self, user: &str) -> PathBuf {
        self.parent.join(user).join(&self.below)
    }

    /// The users whose Maildir exists on disk, in name order. A directory whose name is not a
    /// valid user name is left out.
    pub fn users(&self) -> Result<Vec<String>, BackendError> {
        let entries = match std::fs::read_dir(&self.parent) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(MaildirError::io(&self.parent, "read directory")(e).into()),
        };
        let mut users = Vec::new();
        for entry in entries {
            let entry = entry.map_err(MaildirError::io(&self.parent, "read directory"))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if crate::model::validate_user(&name).is_ok() && self.root(&name).is_dir() {
                users.push(name);
            }
        }
        users.sort();
        Ok(users)
    }
}

/// What one pass did, summed over the users it looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PassReport {
    pub users: u64,
    pub folders: u64,
    /// Folders read in full (the others showed no change since index and disk last agreed,
    /// and the index owed them nothing).
    pub folders_read: u64,
    /// Folders looked at only in the files a file watcher named (`serve`; see
    /// src/maildir/watch.rs).
    pub folders_named: u64,
    /// disk → index
    pub imported: u64,
    pub imported_bytes: u64,
    pub flags_from_disk: u64,
    pub expunged_on_disk: u64,
    /// Of those, files whose unlink the watcher reported (no listing of their folder needed).
    pub expunges_seen_unlinked: u64,
    /// Folders listed to tell an expunge from a rename not reported yet.
    pub folders_listed_for_expunges: u64,
    pub folders_found: u64,
    pub folders_gone: u64,
    pub subscriptions_from_disk: u64,
    /// index → disk
    pub delivered: u64,
    pub delivered_bytes: u64,
    pub flags_to_disk: u64,
    pub unlinked: u64,
    pub folders_made: u64,
    pub folders_removed: u64,
    /// Folders of deleted mailboxes kept because they hold mail the index does not know
    /// (delivered after the delete): forgotten, so the next pass imports them anew.
    pub folders_kept: u64,
    /// Folders holding mail under another UIDVALIDITY than their mailbox (a peer's won),
    /// rebuilt under the mailbox's.
    pub folders_rebuilt: u64,
    pub folders_renamed: u64,
    /// Folders left for the next pass because the server was making them (`being_made`).
    pub folders_being_made: u64,
    /// Messages given a new UID so as not to reuse one the server gave out.
    pub renumbered: u64,
    /// What the pass could not do, with the reason (it stays owed, or is left for an
    /// operator): a path or mailbox, then the problem.
    pub problems: Vec<String>,
}

impl PassReport {
    /// Whether the pass made local writes that the journal ships to peers (what it took
    /// from the Maildirs, and the messages it moved to new UIDs).
    pub fn journaled(&self) -> bool {
        self.imported
            + self.flags_from_disk
            + self.expunged_on_disk
            + self.folders_found
            + self.folders_gone
            + self.subscriptions_from_disk
            + self.renumbered
            > 0
    }

    /// Adds what another pass (over other users) did to this report.
    fn absorb(&mut self, other: PassReport) {
        // Every field named, so that a new one cannot be forgotten here.
        let PassReport {
            users,
            folders,
            folders_read,
            folders_named,
            imported,
            imported_bytes,
            flags_from_disk,
            expunged_on_disk,
            expunges_seen_unlinked,
            folders_listed_for_expunges,
            folders_found,
            folders_gone,
            subscriptions_from_disk,
            delivered,
            delivered_bytes,
            flags_to_disk,
            unlinked,
            folders_made,
            folders_removed,
            folders_kept,
            folders_rebuilt,
            folders_renamed,
            folders_being_made,
            renumbered,
            problems,
        } = other;
        self.users += users;
        self.folders += folders;
        self.folders_read += folders_read;
        self.folders_named += folders_named;
        self.imported += imported;
        self.imported_bytes += imported_bytes;
        self.flags_from_disk += flags_from_disk;
        self.expunged_on_disk += expunged_on_disk;
        self.expunges_seen_unlinked += expunges_seen_unlinked;
        self.folders_listed_for_expunges += folders_listed_for_expunges;
        self.folders_found += folders_found;
        self.folders_gone += folders_gone;
        self.subscriptions_from_disk += subscriptions_from_disk;
        self.delivered += delivered;
        self.delivered_bytes += delivered_bytes;
        self.flags_to_disk += flags_to_disk;
        self.unlinked += unlinked;
        self.folders_made += folders_made;
        self.folders_removed += folders_removed;
        self.folders_kept += folders_kept;
        self.folders_rebuilt += folders_rebuilt;
        self.folders_renamed += folders_renamed;
        self.folders_being_made += folders_being_made;
        self.renumbered += renumbered;
        self.problems.extend(problems);
    }

    /// Whether the pass changed anything on either side.
    pub fn changed(&self) -> bool {
        self.journaled()
            || self.delivered
                + self.flags_to_disk
                + self.unlinked
                + self.folders_made
                + self.folders_removed
                + self.folders_kept
                + self.folders_rebuilt
                + self.folders_renamed
                + self.folders_being_made
                > 0
    }
}

/// What a folder looks like from its directories alone: inode, mtime and size of its cur/
/// and new/, its uidlist and its keywords file. Any change a
/// mail server makes to the folder (a file in, out, or renamed; a UID given; a keyword
/// registered) moves one of them, so a folder whose print equals the one kept when index and
/// disk last agreed needs no reading: an idle pass costs a few stats per folder.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FolderPrint {
    stats: Vec<u8>,
    /// Whether a change could hide in it: a directory changed so recently (within
    /// [`RACY`] of the moment it was taken) that a second change in the same clock tick
    /// would leave the same mtime. Such a print is not kept.
    racy: bool,
}

/// How recent a change must be for a print not to be trusted (coarse file-system clocks,
/// a server on another clock).
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

impl FolderPrint {
    fn of(dir: &Path) -> FolderPrint {
        use std::os::unix::fs::MetadataExt;
        let now = std::time::SystemTime::now();
        let mut stats = Vec::with_capacity(4 * 32);
        let mut racy = false;
        // Not the folder's own directory: Dovecot's index files come and go there on every
        // SELECT, and a folder made anew has new cur/ and new/ inodes anyway.
        for path in [
            dir.join("cur"),
            dir.join("new"),
            dir.join("dovecot-uidlist"),
            dir.join("dovecot-keywords"),
        ] {
            match std::fs::metadata(&path) {
                Ok(m) => {
                    stats.extend_from_slice(&m.ino().to_le_bytes());
                    stats.extend_from_slice(&m.mtime().to_le_bytes());
                    stats.extend_from_slice(&m.mtime_nsec().to_le_bytes());
                    stats.extend_from_slice(&m.size().to_le_bytes());
                    racy |= m.modified().map_or(true, |t| t + RACY > now);
                }
                Err(_) => stats.extend_from_slice(&[0xff; 32]),
            }
        }
        FolderPrint { stats, racy }
    }

    /// The uidlist's inode and size in this print, if the folder had one.
    fn uidlist(&self) -> Option<UidlistMark> {
        // The third of the four stats: inode, mtime, mtime_nsec, size, 8 bytes each.
        let stat = self.stats.get(64..96)?;
        if stat.iter().all(|b| *b == 0xff) {
            return None;
        }
        let word = |at: usize| {
            stat.get(at..at + 8)?
                .try_into()
                .ok()
                .map(u64::from_le_bytes)
        };
        Some(UidlistMark {
            inode: word(0)?,
            size: word(24)?,
        })
    }

    /// The print to keep once index and disk agree, if the folder showed no change between
    /// `self` (taken before it was read) and `after` (taken when the pass was done with it).
    fn to_keep(&self, after: &FolderPrint) -> Option<Vec<u8>> {
        (!self.racy && self == after).then(|| self.stats.clone())
    }
}

/// The files of the Maildirs a template names, as the store reads bodies from them.
struct Files {
    template: Template,
    /// Where each file of the folders read from lately is (base name → its name under the
    /// folder, `cur/…` or `new/…`): a body read costs an open, not a listing of its folder.
    names: std::sync::Mutex<std::collections::VecDeque<(PathBuf, FolderNames)>>,
}

/// A folder's files by base name, each with its path under the folder. Not the full path:
/// with it, 100 000 names took 21 MB of a sending `serve`'s heap at its peak, 11 MB without
/// (docs/PERFORMANCE.md, "Session 10").
type FolderNames = HashMap<Box<str>, Box<str>>;

/// File names [`Files`] keeps at most (about 110 bytes each), over as many folders as fit: a
/// session reads bodies in the order its plan names them, across every folder of a user, so
/// keeping only the last few folders would list a folder again for almost every body.
const NAME_CACHE_FILES: usize = 400_000;

impl Files {
    /// Whether the names of `dir` are kept.
    fn holds(&self, dir: &Path) -> std::io::Result<bool> {
        let names = self
            .names
            .lock()
            .map_err(|_| std::io::Error::other("the file-name cache is poisoned"))?;
        Ok(names.iter().any(|(d, _)| d == dir))
    }

    /// The path of the file `base` in `dir` as last listed, listing the folder again if
    /// `fresh` or if it is not among the folders kept.
    fn lookup(&self, dir: &Path, base: &str, fresh: bool) -> std::io::Result<Option<PathBuf>> {
        let mut names = self
            .names
            .lock()
            .map_err(|_| std::io::Error::other("the file-name cache is poisoned"))?;
        let at = names.iter().position(|(d, _)| d == dir);
        let at = match at {
            Some(i) if !fresh => i,
            _ => {
                if let Some(i) = at {
                    names.remove(i);
                }
                let listing: FolderNames = live::file_names(dir)
                    .map_err(|e| std::io::Error::other(e.to_string()))?
                    .into_iter()
                    .filter_map(|(base, path)| {
                        let under = path.strip_prefix(dir).ok()?.to_str()?;
                        Some((base.into_boxed_str(), under.into()))
                    })
                    .collect();
                let mut held: usize = names.iter().map(|(_, n)| n.len()).sum();
                while held + listing.len() > NAME_CACHE_FILES {
                    let Some((_, oldest)) = names.pop_front() else {
                        break;
                    };
                    held -= oldest.len();
                }
                names.push_back((dir.to_path_buf(), listing));
                names.len() - 1
            }
        };
        Ok(names[at].1.get(base).map(|under| dir.join(&**under)))
    }
}

impl crate::store::MailFiles for Files {
    fn read(
        &self,
        user: &str,
        mailbox: &str,
        base: &str,
        flags: &[String],
    ) -> std::io::Result<Option<Vec<u8>>> {
        let root = self.template.root(user);
        let dir = if mailbox == INBOX {
            root
        } else {
            match crate::maildir::folder_dir_name(mailbox) {
                Ok(name) => root.join(name),
                Err(_) => return Ok(None),
            }
        };
        // The name its flags give first: a file whose flags changed is sent to peers again
        // (the journal carries the whole message), and listing a folder of 10 000 files for
        // each such body cost a sender a quarter of its time in a change round.
        if let Some(name) = named_by_flags(&dir, base, flags) {
            match std::fs::read(dir.join(name)) {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Then the name last listed; if the file was renamed (a flag change) or is not
        // listed yet, the folder is listed again, once.
        for fresh in [false, true] {
            if fresh || !self.holds(&dir)? {
                // Before a listing: where a delivery that no flag has touched yet is (an
                // MDA's in new/, a client's APPEND without flags in cur/). Listing a folder of
                // 10 000 files for each new message cost a sender more than its pass.
                for name in [format!("new/{base}"), format!("cur/{base}:2,")] {
                    match std::fs::read(dir.join(name)) {
                        Ok(bytes) => return Ok(Some(bytes)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            let Some(path) = self.lookup(&dir, base, fresh)? else {
                continue;
            };
            match std::fs::read(&path) {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// The name under `dir` of the file `base` whose name shows `flags` (`cur/<base>:2,<letters>`),
/// if it has any: keywords take their letters from the folder's `dovecot-keywords`. `None`
/// for no flags (the caller looks in new/ and at `:2,` anyway) or flags no name can show.
fn named_by_flags(dir: &Path, base: &str, flags: &[String]) -> Option<String> {
    if flags.is_empty() {
        return None;
    }
    let keywords = if flags
        .iter()
        .all(|f| crate::maildir::name::is_system_flag_syntax(f))
    {
        Vec::new()
    } else {
        let text = std::fs::read_to_string(dir.join("dovecot-keywords")).ok()?;
        crate::maildir::parse_keywords_file(&text)
    };
    let (info, dropped) = crate::maildir::name::format_info(flags, &keywords);
    dropped.is_empty().then(|| format!("cur/{base}:{info}"))
}

/// Lets the store open live-Maildir stores: their bodies are read from the Maildir files.
/// Call once before opening a store (the command line does at start).
pub fn install() {
    crate::store::install_mail_files(|template| {
        let template = Template::parse(template).map_err(|e| e.to_string())?;
        Ok(std::sync::Arc::new(Files {
            template,
            names: Default::default(),
        }))
    });
}

/// The folder directories of the Maildir at `root`: the root (INBOX), then each `.Name`
/// below it in name order (`..DOVECOT-TRASHED` and the like left out).
pub fn folder_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with('.') && !n.starts_with("..") && n != "."
            })
            .map(|e| e.path())
            .collect();
        names.sort();
        dirs.extend(names);
    }
    dirs
}

/// The store's template, checked.
pub fn template_of(store: &Store) -> Result<Option<Template>, BackendError> {
    store.maildir_template().map(Template::parse).transpose()
}

/// Every user whose Maildir the template's directory holds or whom the store knows.
pub fn known_users(store: &Store, template: &Template) -> Result<BTreeSet<String>, BackendError> {
    Ok(template
        .users()?
        .into_iter()
        .chain(store.users()?)
        .collect())
}

/// Brings every user's Maildir (or only `only`) and the index in step, both ways.
pub fn pass(
    store: &Store,
    template: &Template,
    only: Option<&str>,
) -> Result<PassReport, BackendError> {
    pass_with_progress(store, template, only, &mut crate::model::no_progress)
}

/// [`pass`], telling `progress` before the first user and after each one: users done of the
/// users found, and the bytes of mail moved so far (imported from the disk and delivered to
/// it). A store's first scan takes in every message there, a user per core at a time (at most
/// four; the store's one writer takes their transactions in turn, as it does for `serve`'s
/// passes). After a user's pass fails no other user's starts; the error is returned once
/// the passes running have ended. With one user, or a fault hook on this thread (tests), the
/// users go one after the other here.
pub fn pass_with_progress(
    store: &Store,
    template: &Template,
    only: Option<&str>,
    progress: &mut dyn FnMut(crate::model::Progress),
) -> Result<PassReport, BackendError> {
    let users: Vec<String> = match only {
        Some(user) => {
            crate::model::validate_user(user).map_err(StoreError::from)?;
            vec![user.to_string()]
        }
        None => known_users(store, template)?.into_iter().collect(),
    };
    let mut report = PassReport::default();
    let total = users.len() as u64;
    // Users done of the users found, and the bytes of mail moved so far.
    let mut tell = |r: &PassReport| {
        progress(crate::model::Progress::of(
            r.users,
            total,
            r.imported_bytes + r.delivered_bytes,
        ))
    };
    tell(&report);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get().min(4))
        .min(users.len());
    if workers <= 1 || crate::maildir::fault::hooked() {
        for user in &users {
            pass_user(store, template, user, &mut report, None)?;
            report.users += 1;
            tell(&report);
        }
        return Ok(report);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut failed = None;
    std::thread::scope(|scope| {
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..workers {
            let (done, users, next, stop) = (done.clone(), &users, &next, &stop);
            scope.spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                while !stop.load(Relaxed) {
                    let Some(user) = users.get(next.fetch_add(1, Relaxed)) else {
                        return;
                    };
                    let mut one = PassReport::default();
                    let outcome = pass_user(store, template, user, &mut one, None).map(|()| one);
                    if outcome.is_err() {
                        stop.store(true, Relaxed);
                    }
                    if done.send(outcome).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done);
        for outcome in finished {
            match outcome {
                Ok(one) => {
                    report.absorb(one);
                    report.users += 1;
                    tell(&report);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// A pass over one user driven by a file watcher (src/maildir/watch.rs): a folder the
/// watcher has followed since index and disk last agreed on it is looked at only in the
/// files it named, or not at all if it named none and the index owes it nothing. The other
/// folders are read as [`pass`] reads them.
pub fn pass_watched(
    store: &Store,
    template: &Template,
    user: &str,
    mut watched: Watched<'_>,
) -> Result<PassReport, BackendError> {
    crate::model::validate_user(user).map_err(StoreError::from)?;
    let mut report = PassReport::default();
    pass_user(store, template, user, &mut report, Some(&mut watched))?;
    report.users += 1;
    Ok(report)
}

/// [`pass`] over every user for `serve`, with the watcher running: it goes by the prints as
/// [`pass`] does, and then follows every folder it left agreeing with the index (read in
/// full, or with an unchanged print), so that the passes the watcher drives look at those
/// only in the files it names.
pub fn pass_following(
    store: &Store,
    template: &Template,
    tracking: &mut crate::maildir::watch::Tracking,
) -> Result<PassReport, BackendError> {
    let mut report = PassReport::default();
    for user in known_users(store, template)? {
        let mut watched = Watched {
            tracking: &mut *tracking,
            touched: Default::default(),
            trust: false,
        };
        pass_user(store, template, &user, &mut report, Some(&mut watched))?;
        report.users += 1;
    }
    Ok(report)
}

/// Brings the mailboxes the index owes to the disk in step (the users they belong to).
pub fn settle_owed(store: &Store, template: &Template) -> Result<PassReport, BackendError> {
    let users: BTreeSet<String> = store
        .owed_mailboxes()?
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    let mut report = PassReport::default();
    for user in users {
        pass_user(store, template, &user, &mut report, None)?;
        report.users += 1;
    }
    Ok(report)
}

/// A message's flags as its Maildir file name shows them (the index's own rule).
pub use crate::store::file_flags as flags_of;

fn sorted(flags: &[String]) -> Vec<String> {
    let mut v = flags.to_vec();
    v.sort();
    v.dedup();
    v
}

fn problem(report: &mut PassReport, what: impl std::fmt::Display, why: impl std::fmt::Display) {
    let line = format!("{what}: {why}");
    tracing::warn!(problem = %line, "maildir pass");
    report.problems.push(line);
}

fn pass_user(
    store: &Store,
    template: &Template,
    user: &str,
    report: &mut PassReport,
    mut watched: Option<&mut Watched<'_>>,
) -> Result<(), BackendError> {
    let root = template.root(user);
    if !root.is_dir() {
        if store.list_mailboxes(user).map_or(true, |m| m.is_empty()) {
            // Neither the disk nor the index knows this user.
            return Ok(());
        }
        // A user that arrived from a peer: their Maildir is made for them.
        live::make_root(&root)?;
    }
    let started = std::time::Instant::now();
    let listing = list(&root)?;
    let mut states = store.user_folders(user)?;
    let mut taken: HashSet<MailboxGuid> = HashSet::new();
    if let Some(w) = watched.as_deref_mut() {
        if w.touched.tree {
            // A folder made, renamed or removed: no folder of the tree is taken on trust.
            w.tracking.forget_under(&root);
        }
    }

    // Only the folders that changed since index and disk last agreed, or that the index owes
    // something, are read; a folder the watcher followed, only in the files it named.
    // With each, whether its uidlist was only appended to since index and disk last agreed
    // on a followed folder the index owes nothing: then only the index rows at the UIDs of
    // the files named are needed.
    let mut read: Vec<(ScannedFolder, FolderPrint, Scope, bool)> = Vec::new();
    for (mailbox, dir) in &listing.folders {
        report.folders += 1;
        if being_made(mailbox, dir, &states) {
            // Not read, not paired: a mailbox of that name the index holds stays owed.
            report.folders_being_made += 1;
            continue;
        }
        let subscribed = listing.subscriptions.contains(mailbox);
        let mut print = FolderPrint::of(dir);
        if let Some(w) = watched.as_deref_mut() {
            let trusted = w.trust && w.tracking.is_tracked(dir) && !w.touched.whole.contains(dir);
            let names = w.touched.files.remove(dir);
            let mark = w.tracking.uidlist(dir);
            // Tracked again only once this pass has settled it.
            w.tracking.forget(dir);
            let state = agreed(&states, &taken, mailbox, subscribed);
            if let (true, Some(state)) = (trusted, state) {
                if names.is_none() && state.owed.is_none() {
                    taken.insert(state.guid);
                    w.tracking.track(dir, mark);
                    continue;
                }
                let names = names.unwrap_or_default();
                let uidnext = state.record.as_ref().map_or(1, |r| r.uidnext);
                let (folder, bases) = read_named((mailbox, dir), subscribed, &names, uidnext)?;
                report.folders_named += 1;
                // Owed something, the index must say which messages (a mark written since
                // format 4, not one from before).
                let appended = state.owed.is_none_or(|t| t.complete())
                    && mark
                        .zip(FolderPrint::of(dir).uidlist())
                        .is_some_and(|(was, now)| was.appended_to(&now));
                let gone = w.touched.gone_bases(dir);
                read.push((folder, print, Scope::Bases(bases, gone), appended));
                continue;
            }
        }
        if let Some(state) = unchanged(&states, &taken, mailbox, subscribed, &print) {
            taken.insert(state.guid);
            if let Some(w) = watched.as_deref_mut() {
                w.tracking.track(dir, print.uidlist());
            }
            continue;
        }
        let t = std::time::Instant::now();
        let mut folder = scan_folder(mailbox.clone(), dir.clone(), subscribed)?;
        if number_unlisted(&folder)? {
            print = FolderPrint::of(dir);
            folder = scan_folder(mailbox.clone(), dir.clone(), subscribed)?;
        }
        report.folders_read += 1;
        tracing::debug!(user, mailbox = %folder.mailbox, files = folder.messages.len(), us = t.elapsed().as_micros() as u64, "folder read");
        read.push((folder, print, Scope::All, false));
    }

    let mut paired: Vec<(ScannedFolder, FolderPrint, MailboxMirror, Scope)> = Vec::new();
    for (mut folder, mut print, mut scope, appended) in read {
        let mirror = match pair_for(&states, &folder, &taken) {
            Some(i) => {
                let guid = states[i].guid;
                let part = match &scope {
                    Scope::Bases(bases, _) if appended => {
                        partial_mirror(store, user, guid, &folder, bases)?
                    }
                    _ => None,
                };
                // Else the whole mailbox, and the uidlist must still list every file no one
                // named where the index has it.
                let mirror = match part {
                    Some(mirror) => mirror,
                    None => store.mailbox_mirror(user, guid)?,
                };
                if let (Scope::Bases(bases, _), true) = (&scope, mirror.whole) {
                    if !uids_agree(&folder, &mirror, bases) {
                        // The uidlist says other UIDs than the index for files no one named
                        // (the server rebuilt it): the folder is read in full after all.
                        tracing::info!(user, mailbox = %folder.mailbox, "the uidlist moved files the watcher did not name; reading the folder in full");
                        print = FolderPrint::of(&folder.dir);
                        folder = scan_folder(
                            folder.mailbox.clone(),
                            folder.dir.clone(),
                            folder.subscribed,
                        )?;
                        report.folders_read += 1;
                        scope = Scope::All;
                    }
                }
                renamed_on_disk(store, user, mirror, &folder, report)?
            }
            None if folder.mailbox == INBOX
                && folder.messages.is_empty()
                && folder.uidlist.as_ref().is_none_or(|l| l.entries.is_empty()) =>
            {
                // An INBOX with no mail says nothing: every IMAP user has one, and this pass
                // makes one with the Maildir of a user arriving from a peer, whose INBOX
                // may reach the index a transaction after their other mailboxes. It pairs
                // with the index's INBOX when one comes. (Made here, it would have the
                // user's INBOX GUID, as every INBOX has, but this side's UIDVALIDITY: a
                // record to journal and a difference a session settles by reading both
                // INBOXes in full, for nothing.)
                continue;
            }
            None => {
                // A folder the index has never seen: the server made it. Its uidlist's GUID
                // becomes the mailbox's, except for INBOX, which has the GUID derived from
                // the user (`Store::prepare_import`).
                let claimed = folder.mailbox != INBOX
                    && states.iter().any(|s| {
                        s.record.as_ref().is_some_and(|r| r.name == folder.mailbox)
                            && s.folder.as_ref().is_some_and(|f| f.name != folder.mailbox)
                    });
                if claimed {
                    // Its name is a mailbox's whose folder is elsewhere, renamed onto this
                    // name in the index (a folder kept for mail the index did not know when
                    // its mailbox was deleted, say): taken by that name, its mail would go
                    // into that mailbox, and the rename would find the name taken. Moved
                    // aside first, and taken as a mailbox of its own.
                    if let Some(aside) = move_aside(&root, &folder.mailbox, report)? {
                        let dir = root.join(crate::maildir::folder_dir_name(&aside)?);
                        folder = scan_folder(aside, dir, folder.subscribed)?;
                        print = FolderPrint::of(&folder.dir);
                    }
                }
                let guid = folder
                    .uidlist
                    .as_ref()
                    .and_then(|u| u.guid.as_deref())
                    .and_then(|g| g.parse::<MailboxGuid>().ok());
                let uidvalidity = folder.uidlist.as_ref().map(|u| u.uidvalidity);
                let prepared = store.prepare_import(
                    user,
                    &folder.mailbox,
                    uidvalidity,
                    folder.subscribed,
                    guid,
                )?;
                report.folders_found += 1;
                let mirror = store.mailbox_mirror(user, prepared.guid)?;
                states.push(FolderState {
                    guid: mirror.guid,
                    record: mirror.record.clone(),
                    folder: mirror.folder.clone(),
                    owed: mirror.owed,
                    print: None,
                });
                mirror
            }
        };
        taken.insert(mirror.guid);
        paired.push((folder, print, mirror, scope));
    }

    for state in states.iter().filter(|s| !taken.contains(&s.guid)) {
        match (&state.record, &state.folder) {
            (Some(record), Some(folder)) if record.name == folder.name => {
                // Its folder is gone from disk: the server deleted the mailbox.
                let mirror = store.mailbox_mirror(user, state.guid)?;
                if record.name == INBOX {
                    let made = LiveFolder::open(&root)?;
                    let print = FolderPrint::of(made.dir());
                    paired.push((empty_folder(INBOX, made.dir()), print, mirror, Scope::All));
                    continue;
                }
                store.delete_mailbox(user, &record.name)?;
                report.folders_gone += 1;
                settle_gone(store, user, &mirror)?;
            }
            (Some(record), _) => {
                // A mailbox the disk does not show yet (replicated, or made by the CLI).
                if paired.iter().any(|(f, _, _, _)| f.mailbox == record.name)
                    || listing.folders.iter().any(|(name, _)| *name == record.name)
                {
                    // Its name is still another mailbox's folder, which this pass renames
                    // away (a rename, then a new mailbox under the old name): it stays owed,
                    // and the next pass makes its folder.
                    continue;
                }
                let mirror = store.mailbox_mirror(user, state.guid)?;
                let folder = LiveFolder::create(&root, &record.name)?;
                report.folders_made += 1;
                let print = FolderPrint::of(folder.dir());
                paired.push((
                    empty_folder(&record.name, folder.dir()),
                    print,
                    mirror,
                    Scope::All,
                ));
            }
            (None, _) => settle_gone(store, user, &store.mailbox_mirror(user, state.guid)?)?,
        }
    }

    // disk → index for every folder first, then the subscriptions file, then index → disk:
    // a folder row (with its subscription) is settled only after the file shows it.
    let read_us = started.elapsed().as_micros() as u64;
    let mut owed = Vec::new();
    // The folders of deleted mailboxes first: one kept for mail the index does not know is
    // then known to no mailbox when another is renamed onto its name.
    paired.sort_by_key(|(_, _, mirror, _)| mirror.record.is_some());
    for (folder, print, mirror, scope) in paired {
        let listed = listing.folders.iter().any(|(_, d)| *d == folder.dir);
        if let Some((dir, mirror, agrees)) =
            from_disk_folder(store, &root, user, folder, mirror, &scope, report)?
        {
            if agrees {
                if let Some(w) = watched.as_deref_mut() {
                    w.tracking.track(&dir, print.uidlist());
                }
                continue;
            }
            owed.push((dir, print, mirror, listed));
        }
    }
    let from_us = started.elapsed().as_micros() as u64 - read_us;
    sync_subscriptions(store, &root, user)?;
    let delivered_before = report.delivered;
    // The folders' settles, committed together (one commit per pass, not per folder; a crash
    // before it leaves them owed, and the next pass finds their work done on disk), and the
    // folders to follow once they are.
    let mut settles = Settles::default();
    for (dir, print, mirror, listed) in owed {
        let Some(record) = mirror.record.clone() else {
            continue;
        };
        let done = to_disk(
            store,
            user,
            &dir,
            &record,
            &mirror,
            &print,
            report,
            &mut settles.list,
        );
        let settled = match done {
            Ok(settled) => settled,
            Err(e) => {
                // The folders done before this one stay done: settled, as they would have been
                // one by one (else a folder that fails on every pass keeps them owed too).
                if let Err(also) = settles.commit(store, user, watched.as_deref_mut()) {
                    tracing::warn!(user, error = %also, "cannot settle the folders done before a failed one; they stay owed");
                }
                return Err(e);
            }
        };
        // Followed from here on only if it was there when the pass began: the watch on a
        // folder made just now may have started after some of its changes.
        if settled && listed {
            settles.follow.push((dir, print.uidlist()));
        }
        if settles.edits() >= SETTLE_EDITS {
            settles.commit(store, user, watched.as_deref_mut())?;
        }
    }
    settles.commit(store, user, watched)?;
    if report.delivered > delivered_before {
        // The spool copies of what was delivered are no longer named: they go now.
        let swept = store.sweep_spool(false)?;
        tracing::debug!(user, files = swept, "spool swept");
    }
    let total_us = started.elapsed().as_micros() as u64;
    tracing::debug!(
        user,
        read_us,
        from_disk_us = from_us,
        to_disk_us = total_us - read_us - from_us,
        total_us,
        "user pass"
    );
    Ok(())
}

/// Which files of a folder a pass looked at.
enum Scope {
    /// Every file (a full read).
    All,
    /// Only these base names (the files a watcher named); the others are where index and
    /// disk last agreed. With the base names the watcher saw the last file of unlinked, and
    /// the names each had before (`watch::BaseNews::gone_before`).
    Bases(BTreeSet<String>, HashMap<String, Vec<String>>),
}

impl Scope {
    /// Whether the pass looked at the files of base name `base`.
    fn covers(&self, base: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Bases(bases, _) => bases.contains(base),
        }
    }

    /// Whether the watcher saw the last file of `row` unlinked: the last file of its base,
    /// and among the names that base had before, the one index and disk agreed on (its flags
    /// are the row's). A second name of the same file (a hard link Dovecot unlinks as a
    /// duplicate) shows other flags, or flags that need dovecot-keywords to read, and proves
    /// nothing: the folder is listed.
    fn saw_unlinked(&self, row: &FileRow) -> bool {
        let Scope::Bases(_, gone) = self else {
            return false;
        };
        let agreed = sorted(&row.disk_flags);
        gone.get(&row.base).is_some_and(|names| {
            names.iter().any(|name| {
                let file = name.split_once('/').map_or(name.as_str(), |(_, f)| f);
                let parsed = crate::maildir::name::parse_filename(file, &[]);
                parsed.unknown_keyword_letters.is_empty() && sorted(&parsed.flags) == agreed
            })
        })
    }
}

/// The index's mailbox for a folder under the same name and subscription as when index and
/// disk last agreed (whatever its print).
fn agreed<'a>(
    states: &'a [FolderState],
    taken: &HashSet<MailboxGuid>,
    mailbox: &str,
    subscribed: bool,
) -> Option<&'a FolderState> {
    states.iter().find(|s| {
        !taken.contains(&s.guid)
            && s.record.as_ref().is_some_and(|r| r.name == mailbox)
            && s.folder.as_ref().is_some_and(|f| {
                f.name == mailbox && (f.subscribed == subscribed || mailbox == INBOX)
            })
    })
}

/// A folder looked at only in the files a watcher named (and its uidlist and keywords),
/// numbering any that no one has numbered yet, as a full read does.
/// The named files of a followed folder, numbered if the server has not yet, with every
/// file the uidlist lists at or above `uidnext` (the index's UIDNEXT): a file numbered but
/// not yet named (this pass numbers every unlisted file, the server numbers what its clients
/// see) is taken with them, so that the index takes UIDs in order.
fn read_named(
    (mailbox, dir): (&str, &Path),
    subscribed: bool,
    names: &BTreeSet<String>,
    uidnext: u32,
) -> Result<(ScannedFolder, BTreeSet<String>), BackendError> {
    let scan = || {
        scan_names(
            mailbox.to_string(),
            dir.to_path_buf(),
            subscribed,
            names,
            uidnext,
        )
    };
    let (folder, bases) = scan()?;
    if !number_named(&folder)? {
        return Ok((folder, bases));
    }
    Ok(scan()?)
}

/// [`number_unlisted`] for the files a watcher named, without listing the folder.
fn number_named(folder: &ScannedFolder) -> Result<bool, BackendError> {
    let paths: Vec<PathBuf> = folder
        .messages
        .iter()
        .filter(|m| m.uid.is_none())
        .map(|m| m.path.clone())
        .collect();
    if paths.is_empty() {
        return Ok(false);
    }
    let live = LiveFolder::open(&folder.dir)?;
    let mut locked = live.lock()?;
    let numbered = !locked.number_these(&paths)?.numbered.is_empty();
    drop(locked);
    if numbered {
        fault::reached(PassPoint::Numbered);
    }
    Ok(numbered)
}

/// The index rows a followed folder's pass needs, at the UIDs the uidlist gives the files
/// named (the uidlist only grew since index and disk last agreed, and the index owes the
/// folder nothing, so every other file is where both last agreed). `None` when the rows say
/// otherwise and the whole mailbox must be read: a file named that the index holds at another
/// UID than the uidlist's, or one merkmail delivered (after a crash it may be a delivery the
/// index waits for at another UID).
fn partial_mirror(
    store: &Store,
    user: &str,
    guid: MailboxGuid,
    folder: &ScannedFolder,
    bases: &BTreeSet<String>,
) -> Result<Option<MailboxMirror>, BackendError> {
    let Some(list) = &folder.uidlist else {
        return Ok(None);
    };
    let mut uid_of: HashMap<&str, u32> = HashMap::new();
    for (uid, base) in &list.entries {
        if bases.contains(&**base) {
            // A base listed twice: the later line is the one Dovecot reads.
            uid_of.insert(base, *uid);
        }
    }
    if folder.messages.iter().any(|m| m.uid.is_none()) {
        return Ok(None);
    }
    let uids: BTreeSet<u32> = uid_of.values().copied().collect();
    let mirror = store.mailbox_mirror_at(user, guid, &uids)?;
    if mirror.record.as_ref().map(|r| r.uidvalidity) != Some(list.uidvalidity)
        || mirror.owed.is_some_and(|t| !t.complete())
    {
        return Ok(None);
    }
    let held_elsewhere = uid_of.iter().any(|(base, uid)| {
        mirror
            .files
            .get(uid)
            .is_some_and(|row| row.base.as_str() != *base)
    });
    let ours_unplaced = folder.messages.iter().any(|m| {
        live::is_our_base(&m.basename)
            && m.uid
                .and_then(|uid| mirror.files.get(&uid))
                .is_none_or(|row| row.base != m.basename)
    });
    if held_elsewhere || ours_unplaced {
        return Ok(None);
    }
    Ok(Some(mirror))
}

/// A mailbox's mirror read again after the pass wrote: the same rows (and the owed ones as they
/// are now) if it was read in part and the index still says which messages it owes, else
/// whole.
fn reload(
    store: &Store,
    user: &str,
    mirror: &MailboxMirror,
) -> Result<MailboxMirror, BackendError> {
    if !mirror.whole {
        let asked: BTreeSet<u32> = mirror
            .messages
            .iter()
            .map(|(uid, _)| *uid)
            .chain(mirror.files.keys().copied())
            .collect();
        let again = store.mailbox_mirror_at(user, mirror.guid, &asked)?;
        if again.owed.is_none_or(|t| t.complete()) {
            return Ok(again);
        }
    }
    Ok(store.mailbox_mirror(user, mirror.guid)?)
}

/// Whether the uidlist still lists every file the index knows, that the watcher did not
/// name, at the index's UID, under the mailbox's UIDVALIDITY: what a folder looked at only
/// in some files must show for the others to be taken as unchanged.
fn uids_agree(folder: &ScannedFolder, mirror: &MailboxMirror, named: &BTreeSet<String>) -> bool {
    let Some(list) = &folder.uidlist else {
        return mirror.files.is_empty();
    };
    if mirror
        .record
        .as_ref()
        .is_some_and(|r| r.uidvalidity != list.uidvalidity)
    {
        return false;
    }
    let listed: HashMap<&str, u32> = list
        .entries
        .iter()
        .map(|(uid, base)| (&**base, *uid))
        .collect();
    mirror
        .files
        .iter()
        .filter(|(_, row)| !named.contains(&row.base))
        .all(|(uid, row)| listed.get(row.base.as_str()) == Some(uid))
}

/// Whether the server is making this folder right now: one the index has never seen, that
/// lacks `cur/`, `new/`, `tmp/` or `maildirfolder` (Dovecot makes them in that order), and
/// whose directory changed in the last 2 s. Opening it would make what is missing
/// (`LiveFolder::open`), and the server's own `mkdir` would then fail: its IMAP client's
/// CREATE answers "Mailbox already exists" (seen in tests/dovecot_crash.rs under load). The
/// server's next `mkdir` wakes the next pass. An old folder that lacks one of them (made by
/// hand, or by an older server) is taken as before, and completed.
fn being_made(mailbox: &str, dir: &Path, states: &[FolderState]) -> bool {
    if mailbox == INBOX
        || states
            .iter()
            .any(|s| s.folder.as_ref().is_some_and(|f| f.name == mailbox))
    {
        return false;
    }
    let whole = ["cur", "new", "tmp"]
        .iter()
        .all(|sub| dir.join(sub).is_dir())
        && dir.join("maildirfolder").exists();
    if whole {
        return false;
    }
    let now = std::time::SystemTime::now();
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .map_or(true, |t| t + RACY > now)
}

/// The index's mailbox for a folder that needs no reading: the one whose folder it was when
/// they last agreed, owed nothing, under the same name and subscription, with the same print.
fn unchanged<'a>(
    states: &'a [FolderState],
    taken: &HashSet<MailboxGuid>,
    mailbox: &str,
    subscribed: bool,
    print: &FolderPrint,
) -> Option<&'a FolderState> {
    agreed(states, taken, mailbox, subscribed)
        .filter(|s| s.owed.is_none() && s.print.as_deref() == Some(print.stats.as_slice()))
}

/// A folder paired by its GUID under another name: the server renamed it. The mailbox
/// follows (a local rename, which also moves the mailboxes below it, as the server does).
fn renamed_on_disk(
    store: &Store,
    user: &str,
    mirror: MailboxMirror,
    folder: &ScannedFolder,
    report: &mut PassReport,
) -> Result<MailboxMirror, BackendError> {
    let Some(record) = &mirror.record else {
        return Ok(mirror);
    };
    let was = mirror.folder.as_ref().map(|f| f.name.as_str());
    if record.name == folder.mailbox || was == Some(folder.mailbox.as_str()) || was.is_none() {
        return Ok(mirror);
    }
    match store.rename_mailbox(user, &record.name, &folder.mailbox) {
        Ok(()) => report.folders_found += 1,
        Err(e @ (StoreError::MailboxExists { .. } | StoreError::Invalid(_))) => {
            problem(
                report,
                folder.dir.display(),
                format!("renamed on disk, but: {e}"),
            );
            return Ok(mirror);
        }
        Err(e) => return Err(e.into()),
    }
    let mut now = store.mailbox_mirror(user, mirror.guid)?;
    // The folder already has its new name: nothing to rename on disk.
    if let Some(row) = &mut now.folder {
        row.name = folder.mailbox.clone();
    }
    Ok(now)
}

/// A deleted mailbox whose folder is gone: forget the folder and its owed removals.
fn settle_gone(store: &Store, user: &str, mirror: &MailboxMirror) -> Result<(), StoreError> {
    let mut edits: Vec<MirrorEdit> = mirror
        .unlinks
        .iter()
        .map(|base| MirrorEdit::Unlinked { base: base.clone() })
        .collect();
    edits.extend(
        mirror
            .files
            .keys()
            .map(|uid| MirrorEdit::NoFile { uid: *uid }),
    );
    edits.push(MirrorEdit::Folder(None));
    store.mirror_settle(user, mirror.guid, &edits, mirror.owed)
}

fn empty_folder(mailbox: &str, dir: &Path) -> ScannedFolder {
    ScannedFolder {
        mailbox: mailbox.to_string(),
        dir: dir.to_path_buf(),
        uidlist: None,
        subscribed: false,
        messages: Vec::new(),
        skipped: Vec::new(),
    }
}

/// Which index mailbox a disk folder is: the one whose folder it was last time, else one the
/// server renamed (same GUID in the uidlist), else a mailbox of that name the disk has not
/// shown yet.
fn pair_for(
    mirrors: &[FolderState],
    folder: &ScannedFolder,
    taken: &HashSet<MailboxGuid>,
) -> Option<usize> {
    let free = |m: &&FolderState| !taken.contains(&m.guid);
    let by_folder = mirrors
        .iter()
        .position(|m| free(&m) && m.folder.as_ref().is_some_and(|f| f.name == folder.mailbox));
    if by_folder.is_some() {
        return by_folder;
    }
    let on_disk = folder
        .uidlist
        .as_ref()
        .and_then(|u| u.guid.as_deref())
        .and_then(|g| g.parse::<MailboxGuid>().ok());
    let by_guid = mirrors
        .iter()
        .position(|m| free(&m) && m.record.is_some() && Some(m.guid) == on_disk);
    if by_guid.is_some() {
        return by_guid;
    }
    mirrors.iter().position(|m| {
        free(&m)
            && m.folder.is_none()
            && m.record.as_ref().is_some_and(|r| r.name == folder.mailbox)
    })
}

/// Numbers files no one has numbered yet, under the uidlist lock, as Dovecot would. Returns
/// whether any got a UID.
fn number_unlisted(folder: &ScannedFolder) -> Result<bool, BackendError> {
    if folder.messages.iter().all(|m| m.uid.is_some()) {
        return Ok(false);
    }
    let live = LiveFolder::open(&folder.dir)?;
    let mut locked = live.lock()?;
    let numbered = !locked.number_unlisted()?.numbered.is_empty();
    drop(locked);
    if numbered {
        fault::reached(PassPoint::Numbered);
    }
    Ok(numbered)
}

/// A folder's disk → index half (and a rename or removal the index asks for). Returns the
/// folder's directory and the index's view after it, for the index → disk half, and whether
/// that half has nothing to do (a followed folder that still agrees with the index).
fn from_disk_folder(
    store: &Store,
    root: &Path,
    user: &str,
    folder: ScannedFolder,
    mirror: MailboxMirror,
    scope: &Scope,
    report: &mut PassReport,
) -> Result<Option<(PathBuf, MailboxMirror, bool)>, BackendError> {
    let guid = mirror.guid;
    let Some(record) = mirror.record.clone() else {
        remove_folder(store, root, user, &folder, &mirror, report)?;
        return Ok(None);
    };
    let mut dir = folder.dir.clone();
    if let Some(row) = mirror.folder.as_ref().filter(|row| row.name != record.name) {
        // Renamed in the index (a peer, or the CLI): the folder follows.
        if !make_way(store, (root, user), guid, &record.name, report)? {
            // Another mailbox's folder has the name, and that mailbox is renamed away in
            // this pass (a chain of renames): this one follows in the next pass, still owed.
            return Ok(None);
        }
        if live::rename_folder(root, &row.name, &record.name)? {
            report.folders_renamed += 1;
        }
        dir = root.join(crate::maildir::folder_dir_name(&record.name)?);
        if record.name == INBOX {
            dir = root.to_path_buf();
        }
    }
    // Renamed just now: the files were read under the old name, and a file that came after
    // the read (a delivery racing the rename) would be found under neither name and left
    // unimported behind a print that shows no change. Read again where the folder is now.
    let moved;
    let (read, scope) = if dir != folder.dir && dir.is_dir() {
        moved = scan_folder(record.name.clone(), dir.clone(), folder.subscribed)?;
        report.folders_read += 1;
        (&moved, &Scope::All)
    } else {
        (&folder, scope)
    };
    let wrote = from_disk(store, user, read, &mirror, scope, report)?;
    if mirror.owed.is_none() && dir == folder.dir && matches!(scope, Scope::Bases(..)) {
        // A followed folder owed nothing: what its named files showed (if anything) went into
        // the index without marking it owed (`Store::append_found`, `disk_flags_changed`,
        // `disk_expunged` leave it unmarked when index and disk agree after them). Unless a
        // write marked it meanwhile (a peer's, or one of ours that the disk does not show yet:
        // a renumbering), index and disk still agree, and the index → disk half has nothing
        // to do.
        if !wrote || store.owed_token(user, guid)?.is_none() {
            return Ok(Some((dir, mirror, true)));
        }
    }
    if wrote {
        fault::reached(PassPoint::Imported);
    }
    let mirror = if wrote {
        reload(store, user, &mirror)?
    } else {
        mirror
    };
    Ok(Some((dir, mirror, false)))
}

/// Before a mailbox's folder is renamed to `name`: a folder of that name that no other
/// mailbox of the index holds (one kept because it held mail the index did not know when its
/// mailbox was deleted, or one the server made that no pass has taken yet) is moved aside to
/// `<name>-<8 hex digits>`, dsync's way with a name conflict, and is taken as a new mailbox
/// by the next pass. Without it the rename failed on every pass, and the user's Maildir
/// stopped following the index. Returns false when another mailbox holds the folder (it is
/// being renamed away: Lists → Work and Lists/Sub's folder → Lists/Sub/Sub, then Work →
/// Lists/Sub): the rename waits for a later pass.
fn make_way(
    store: &Store,
    (root, user): (&Path, &str),
    guid: MailboxGuid,
    name: &str,
    report: &mut PassReport,
) -> Result<bool, BackendError> {
    if name == INBOX {
        return Ok(true);
    }
    let dir = root.join(crate::maildir::folder_dir_name(name)?);
    if !dir.exists() {
        return Ok(true);
    }
    let held = store.user_folders(user)?.iter().any(|s| {
        s.guid != guid && s.record.is_some() && s.folder.as_ref().is_some_and(|f| f.name == name)
    });
    if held {
        return Ok(false);
    }
    move_aside(root, name, report)?;
    Ok(true)
}

/// Renames the folder `name`, which no mailbox holds but whose name a mailbox is renamed to,
/// to `<name>-<8 hex digits>` (a name no folder has), dsync's way with a name conflict; it is
/// taken as a new mailbox under that name. Returns the new name, or `None` if no free name
/// was found or the folder was gone.
fn move_aside(
    root: &Path,
    name: &str,
    report: &mut PassReport,
) -> Result<Option<String>, BackendError> {
    let aside = (0..16)
        .map(|_| format!("{name}-{:08x}", rand::random::<u32>()))
        .find(|n| crate::maildir::folder_dir_name(n).is_ok_and(|d| !root.join(d).exists()));
    let Some(aside) = aside else {
        return Ok(None);
    };
    if !live::rename_folder(root, name, &aside)? {
        return Ok(None);
    }
    problem(
        report,
        root.join(crate::maildir::folder_dir_name(name)?).display(),
        format!("a mailbox is renamed to {name:?}, whose folder no mailbox holds: moved aside to {aside:?}, to be imported as a new mailbox"),
    );
    Ok(Some(aside))
}

/// disk → index: what the server did to this folder becomes local writes. Returns whether
/// anything was written.
fn from_disk(
    store: &Store,
    user: &str,
    folder: &ScannedFolder,
    mirror: &MailboxMirror,
    scope: &Scope,
    report: &mut PassReport,
) -> Result<bool, BackendError> {
    let guid = mirror.guid;
    let Some(record) = &mirror.record else {
        return Ok(false);
    };
    let mut wrote = false;
    // A mailbox that has never held mail takes the identity of a folder that has some.
    if let Some(list) = &folder.uidlist {
        if list.uidvalidity != record.uidvalidity
            && record.uidnext == 1
            && !folder.messages.is_empty()
        {
            store.prepare_import(user, &record.name, Some(list.uidvalidity), false, None)?;
            wrote = true;
        }
    }
    let by_base: HashMap<&str, u32> = mirror
        .files
        .iter()
        .map(|(uid, row)| (row.base.as_str(), *uid))
        .collect();
    let owed_unlink: HashSet<&str> = mirror.unlinks.iter().map(String::as_str).collect();
    let live: BTreeMap<u32, &crate::model::MessageRecord> =
        mirror.messages.iter().map(|(u, r)| (*u, r)).collect();
    let on_disk: HashSet<&str> = folder
        .messages
        .iter()
        .map(|m| m.basename.as_str())
        .collect();
    // Whether a file the index knows is on disk: for a folder looked at only in some files,
    // the others are where index and disk last agreed.
    let present = |base: &str| on_disk.contains(base) || !scope.covers(base);
    let disk_next = folder
        .uidlist
        .as_ref()
        .map_or(1, |u| u.effective_next_uid());

    let mut batch = crate::maildir::import::Batch::default();
    let mut adopted: Vec<MirrorEdit> = Vec::new();
    let mut adopted_at: HashSet<u32> = HashSet::new();
    let mut flag_changes: Vec<DiskFlags> = Vec::new();
    for message in &folder.messages {
        let Some(uid) = message.uid else { continue };
        if owed_unlink.contains(message.basename.as_str()) {
            continue;
        }
        if let Some(&known) = by_base.get(message.basename.as_str()) {
            let row = &mirror.files[&known];
            if known != uid {
                // The file sits at another UID than the index's (the server renumbered it,
                // or a clash moved it in the index): the index → disk half re-delivers it.
                tracing::debug!(path = %message.path.display(), disk = uid, index = known, "a file at another UID than the index's");
            }
            if sorted(&message.flags) != sorted(&row.disk_flags) {
                flag_changes.push(flags_from_disk(known, message, row, report));
            }
            continue;
        }
        let Some(bytes) = read_message(message, report) else {
            continue;
        };
        let digest = Digest::of(&bytes);
        let row_gone = |uid: &u32| {
            mirror
                .files
                .get(uid)
                .is_none_or(|row| !present(row.base.as_str()))
        };
        // Our own delivery (or re-delivery at a new UID), cut short before it was settled (a
        // crash): the file is the one the index expects. Found at its UID, or — a batch cut
        // short between its renames and its uidlist line, numbered since at another UID — by
        // its digest among the messages still waiting for a file (only for files we named:
        // the server's mail is never taken for ours).
        let waiting_at = live
            .get(&uid)
            .filter(|indexed| indexed.digest == digest && row_gone(&uid))
            .map(|_| uid)
            .or_else(|| {
                live::is_our_base(&message.basename)
                    .then(|| {
                        live.iter()
                            .find(|(at, m)| {
                                m.digest == digest && row_gone(at) && !adopted_at.contains(*at)
                            })
                            .map(|(at, _)| *at)
                    })
                    .flatten()
            });
        if let Some(at) = waiting_at {
            adopted_at.insert(at);
            adopted.push(MirrorEdit::Held {
                uid: at,
                digest,
                row: FileRow {
                    base: message.basename.clone(),
                    disk_flags: sorted(&message.flags),
                },
            });
            continue;
        }
        if live.contains_key(&uid) {
            // The server gave this UID to other mail before our delivery got there: its
            // clients saw the server's message at it, so ours moves up (after the flag
            // changes seen so far, which name messages by their UIDs before the move).
            store.disk_flags_changed(user, guid, &flag_changes)?;
            report.flags_from_disk += std::mem::take(&mut flag_changes).len() as u64;
            store.renumber_message(user, guid, uid, disk_next)?;
            report.renumbered += 1;
        }
        let flags = parse_flags(&message.flags, message, report);
        let full = batch.push(NewMessage {
            bytes,
            flags,
            internal_date: message.internal_date,
            uid: Some(uid),
            exact_uid: true,
            source: Some(message.basename.clone()),
            ..NewMessage::default()
        });
        if let Some(full) = full {
            import_batch(store, user, &record.name, full, report)?;
            wrote = true;
        }
    }
    if !adopted.is_empty() {
        store.mirror_settle(user, guid, &adopted, None)?;
        wrote = true;
    }
    let mut gone: Vec<u32> = mirror
        .files
        .iter()
        .filter(|(uid, row)| live.contains_key(uid) && !present(row.base.as_str()))
        .map(|(uid, _)| *uid)
        .collect();
    // A file renamed while the folder was read (a flag change, new/ → cur/) can be missing
    // from the listing without being gone: the directories are listed once more, and only
    // what is missing from both listings is an expunge. A file the watcher saw unlinked
    // (and whose base no later report names) needs no listing.
    let seen_unlinked: HashSet<u32> = gone
        .iter()
        .copied()
        .filter(|uid| scope.saw_unlinked(&mirror.files[uid]))
        .collect();
    let wanted: HashSet<&str> = gone
        .iter()
        .filter(|uid| !seen_unlinked.contains(uid))
        .map(|uid| mirror.files[uid].base.as_str())
        .collect();
    if !wanted.is_empty() {
        report.folders_listed_for_expunges += 1;
        let still = crate::maildir::scan::bases_present(&folder.dir, &wanted)?;
        gone.retain(|uid| !still.contains(mirror.files[uid].base.as_str()));
    }
    // The last of the new files, the flag changes and the expunges: one transaction.
    let rest = batch.rest();
    let sizes = sizes_of(&rest);
    let flagged = flag_changes.len() as u64;
    wrote |= !rest.is_empty() || flagged > 0 || !gone.is_empty();
    let found = store.disk_found(
        user,
        guid,
        FoundOnDisk {
            mailbox: record.name.clone(),
            new: rest,
            flags: flag_changes,
            expunged: gone,
        },
    )?;
    count_imports(found.appended, sizes, report);
    report.flags_from_disk += flagged;
    report.expunged_on_disk += found.expunged as u64;
    report.expunges_seen_unlinked += seen_unlinked.len() as u64;
    if let Some(row) = &mirror.folder {
        if row.subscribed != folder.subscribed && folder.mailbox != INBOX {
            store.subscribe(user, &record.name, folder.subscribed)?;
            report.subscriptions_from_disk += 1;
            wrote = true;
        }
    }
    Ok(wrote)
}

/// A file's flags as they changed on disk since index and disk last agreed.
fn flags_from_disk(
    uid: u32,
    message: &ScannedMessage,
    row: &FileRow,
    report: &mut PassReport,
) -> DiskFlags {
    let now: Vec<String> = sorted(&message.flags);
    let before: Vec<String> = sorted(&row.disk_flags);
    let added: Vec<String> = now
        .iter()
        .filter(|f| !before.contains(f))
        .cloned()
        .collect();
    let removed: Vec<String> = before
        .iter()
        .filter(|f| !now.contains(f))
        .cloned()
        .collect();
    DiskFlags {
        uid,
        added: parse_flags(&added, message, report),
        removed: parse_flags(&removed, message, report),
        row: FileRow {
            base: row.base.clone(),
            disk_flags: now,
        },
    }
}

/// The flags of a file's name as merkmail's; one that is not a valid flag is left out and
/// reported.
fn parse_flags(
    names: &[String],
    message: &ScannedMessage,
    report: &mut PassReport,
) -> Vec<FlagName> {
    crate::maildir::import::parse_flag_names(names, &mut |why| {
        problem(report, message.path.display(), why)
    })
}

/// Reads a message file for import; a file that vanished or was cut short is left for the
/// next pass (and reported), not taken.
fn read_message(message: &ScannedMessage, report: &mut PassReport) -> Option<Vec<u8>> {
    if !message.path.exists() {
        return None;
    }
    crate::maildir::import::read_scanned(message)
        .map_err(|why| problem(report, message.path.display(), why))
        .ok()
}

fn import_batch(
    store: &Store,
    user: &str,
    mailbox: &str,
    batch: Vec<NewMessage>,
    report: &mut PassReport,
) -> Result<(), BackendError> {
    let sizes = sizes_of(&batch);
    count_imports(store.append_found(user, mailbox, batch)?, sizes, report);
    Ok(())
}

/// Each new message's size and source, for [`count_imports`].
fn sizes_of(batch: &[NewMessage]) -> Vec<(u64, Option<String>)> {
    batch
        .iter()
        .map(|m| (m.bytes.len() as u64, m.source.clone()))
        .collect()
}

/// Counts what an import of new messages (with their sizes and sources) did.
fn count_imports(
    outcomes: Vec<AppendOutcome>,
    sizes: Vec<(u64, Option<String>)>,
    report: &mut PassReport,
) {
    for (outcome, (size, source)) in outcomes.into_iter().zip(sizes) {
        if outcome.skipped {
            continue;
        }
        report.imported += 1;
        report.imported_bytes += size;
        if let (true, Some(_)) = (outcome.renumbered, source) {
            // The index could not take the file's UID (another message holds it there): the
            // message lives at a new UID. Its file still holds the body; the index → disk
            // half delivers a copy at the new UID from it and then removes it, as for a file
            // listed at another UID than the index's.
            report.renumbered += 1;
        }
    }
}

/// Edits a pass gathers at most before it commits the folders' settles so far.
const SETTLE_EDITS: usize = 8_192;

/// The settles of the folders a pass brought to the disk, not committed yet, and the folders
/// to follow once they are.
#[derive(Default)]
struct Settles {
    list: Vec<MirrorSettle>,
    follow: Vec<(PathBuf, Option<UidlistMark>)>,
}

impl Settles {
    fn edits(&self) -> usize {
        self.list.iter().map(|s| s.edits.len()).sum()
    }

    fn commit(
        &mut self,
        store: &Store,
        user: &str,
        watched: Option<&mut Watched<'_>>,
    ) -> Result<(), BackendError> {
        store.mirror_settle_all(user, &self.list)?;
        self.list.clear();
        let follow = std::mem::take(&mut self.follow);
        if let Some(w) = watched {
            for (dir, uidlist) in follow {
                w.tracking.track(&dir, uidlist);
            }
        }
        Ok(())
    }
}

/// index → disk, under the folder's uidlist lock: owed removals, flag renames and deliveries;
/// the settle that records them goes into `settles`, which the caller commits. Returns whether
/// the folder was left agreeing with the index.
#[allow(clippy::too_many_arguments)]
fn to_disk(
    store: &Store,
    user: &str,
    dir: &Path,
    record: &crate::model::MailboxRecord,
    mirror: &MailboxMirror,
    print: &FolderPrint,
    report: &mut PassReport,
    settles: &mut Vec<MirrorSettle>,
) -> Result<bool, BackendError> {
    let guid = mirror.guid;
    let folder = LiveFolder::open(dir)?;
    let mut locked = folder.lock()?;
    if locked.uidlist().uidvalidity != record.uidvalidity
        && !locked.adopt_identity(record.uidvalidity, &guid.to_hex())?
    {
        let whole;
        let mirror = if mirror.whole {
            mirror
        } else {
            whole = store.mailbox_mirror(user, guid)?;
            &whole
        };
        rebuild(store, (user, dir), record, mirror, &mut locked, report)?;
        return Ok(false);
    }
    let mut edits = unlink_owed(&mut locked, mirror, report)?;
    let mut owed_still = false;
    // Where the uidlist lists each file the index knows: nearly always at the index's UID,
    // found by a binary search; a map of every line (a round touches a few files of folders
    // of thousands) only once a file is not there.
    let mut listed = Listed::default();
    let mut pending = Pending::default();
    for (n, (uid, message)) in mirror.messages.iter().enumerate() {
        if n % 256 == 255 {
            locked.touch()?;
        }
        let flags = flags_of(message);
        let listed_at = mirror
            .files
            .get(uid)
            .and_then(|row| listed.uid_of(locked.uidlist(), *uid, &row.base));
        if let (Some(row), Some(listed)) = (mirror.files.get(uid), listed_at.filter(|at| at != uid))
        {
            // The file is listed at another UID: a copy is delivered at the index's UID, then
            // the old file goes (IMAP clients see an expunge and a new UID above it).
            owed_still |=
                pending.flush(store, (user, guid, dir), &mut locked, &mut edits, report)?;
            let at = (guid, *uid);
            match redeliver(store, user, &mut locked, at, row, message, &flags, report)? {
                Some(edit) => edits.push(edit),
                None => owed_still = true,
            }
            tracing::info!(uid, listed, "re-delivered a file listed at another UID");
            continue;
        }
        if let Some(row) = mirror.files.get(uid) {
            if sorted(&row.disk_flags) != flags {
                match locked.set_flags(&row.base, &row.disk_flags, &flags) {
                    Ok(true) => {
                        report.flags_to_disk += 1;
                        edits.push(MirrorEdit::Held {
                            uid: *uid,
                            digest: message.digest,
                            row: FileRow {
                                base: row.base.clone(),
                                disk_flags: flags,
                            },
                        });
                    }
                    // Gone since the scan: the next pass sees the expunge.
                    Ok(false) => owed_still = true,
                    Err(
                        e @ (LiveError::KeywordsFull { .. } | LiveError::UnstorableFlag { .. }),
                    ) => {
                        problem(report, dir.display(), format!("UID {uid}: {e}"));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            continue;
        }
        pending.push(store, *uid, message, flags)?;
        if pending.full() {
            owed_still |=
                pending.flush(store, (user, guid, dir), &mut locked, &mut edits, report)?;
        }
    }
    owed_still |= pending.flush(store, (user, guid, dir), &mut locked, &mut edits, report)?;
    drop(locked);
    if !edits.is_empty() {
        fault::reached(PassPoint::Placed);
    }
    edits.push(MirrorEdit::Folder(Some(FolderRow {
        name: record.name.clone(),
        subscribed: record.subscribed,
        uidvalidity: record.uidvalidity,
    })));
    // Kept only if the folder showed no change while the pass worked on it (nothing written
    // by either side): then the next pass may leave it unread.
    let kept = if owed_still {
        None
    } else {
        print.to_keep(&FolderPrint::of(dir))
    };
    edits.push(MirrorEdit::Print(kept));
    let token = if owed_still { None } else { mirror.owed };
    if !owed_still {
        edits.push(MirrorEdit::OwedUids(mirror.owed_uids.clone()));
    }
    settles.push(MirrorSettle {
        guid,
        edits,
        owed: token,
    });
    Ok(!owed_still)
}

/// Where a folder's uidlist lists a base name, asked for the files the index holds.
#[derive(Default)]
struct Listed {
    /// Every line's base name and UID, made the first time a file is not at the UID asked.
    all: Option<HashMap<Arc<str>, u32>>,
}

impl Listed {
    /// The UID `list` gives `base`, if any; `expected` (the index's UID) is looked at first.
    fn uid_of(&mut self, list: &UidList, expected: u32, base: &str) -> Option<u32> {
        if let Ok(at) = list
            .entries
            .binary_search_by_key(&expected, |(uid, _)| *uid)
        {
            if &*list.entries[at].1 == base {
                return Some(expected);
            }
        }
        self.all
            .get_or_insert_with(|| {
                list.entries
                    .iter()
                    .map(|(uid, base)| (Arc::clone(base), *uid))
                    .collect()
            })
            .get(base)
            .copied()
    }
}

/// The folder holds mail under another UIDVALIDITY than its mailbox: a peer's UIDVALIDITY
/// won (the side with more messages, docs/PROTOCOL.md "The IMAP promises"), and the index
/// replaced this side's placements with the winner's. The folder is rebuilt to match: the
/// files the index let go are removed, the ones it keeps are renamed to its flags, the
/// missing ones are written, and then the uidlist is written anew under the mailbox's
/// UIDVALIDITY and GUID, listing every file at the index's UID. Mail Dovecot delivered
/// meanwhile is listed nowhere and is numbered by the next pass. Dovecot sees the new
/// UIDVALIDITY and its clients resynchronise, as after any UIDVALIDITY change.
fn rebuild(
    store: &Store,
    (user, dir): (&str, &Path),
    record: &crate::model::MailboxRecord,
    mirror: &MailboxMirror,
    locked: &mut live::LockedFolder<'_>,
    report: &mut PassReport,
) -> Result<(), BackendError> {
    let guid = mirror.guid;
    let was = locked.uidlist().uidvalidity;
    let mut edits = unlink_owed(locked, mirror, report)?;
    let on_disk = live::file_names(dir)?;
    let mut entries: Vec<(u32, String)> = Vec::new();
    let mut owed_still = false;
    // The missing files are written but listed by the rebuilt uidlist, not appended.
    let mut pending = Pending {
        unlisted: Some(Vec::new()),
        ..Pending::default()
    };
    let at = (user, guid, dir);
    for (uid, message) in &mirror.messages {
        let flags = flags_of(message);
        let Some(row) = mirror
            .files
            .get(uid)
            .filter(|row| on_disk.contains_key(&row.base))
        else {
            pending.push(store, *uid, message, flags)?;
            if pending.full() {
                owed_still |= pending.flush(store, at, locked, &mut edits, report)?;
            }
            continue;
        };
        let mut disk_flags = row.disk_flags.clone();
        if sorted(&row.disk_flags) != flags {
            match locked.set_flags(&row.base, &row.disk_flags, &flags) {
                Ok(true) => {
                    report.flags_to_disk += 1;
                    disk_flags = flags;
                }
                Ok(false) => owed_still = true,
                Err(e @ (LiveError::KeywordsFull { .. } | LiveError::UnstorableFlag { .. })) => {
                    problem(report, dir.display(), format!("UID {uid}: {e}"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        entries.push((*uid, row.base.clone()));
        edits.push(MirrorEdit::Held {
            uid: *uid,
            digest: message.digest,
            row: FileRow {
                base: row.base.clone(),
                disk_flags,
            },
        });
    }
    owed_still |= pending.flush(store, at, locked, &mut edits, report)?;
    entries.extend(pending.unlisted.take().unwrap_or_default());
    locked.rebuild(record.uidvalidity, &guid.to_hex(), entries, record.uidnext)?;
    report.folders_rebuilt += 1;
    tracing::warn!(
        folder = %dir.display(),
        was,
        now = record.uidvalidity,
        "the folder was rebuilt under the mailbox's UIDVALIDITY (a peer's won); its IMAP clients resynchronise"
    );
    edits.push(MirrorEdit::Folder(Some(FolderRow {
        name: record.name.clone(),
        subscribed: record.subscribed,
        uidvalidity: record.uidvalidity,
    })));
    edits.push(MirrorEdit::Print(None));
    let token = if owed_still { None } else { mirror.owed };
    store.mirror_settle(user, guid, &edits, token)?;
    Ok(())
}

/// Removes the files the index owes a removal; returns the edits that settle them.
fn unlink_owed(
    locked: &mut live::LockedFolder<'_>,
    mirror: &MailboxMirror,
    report: &mut PassReport,
) -> Result<Vec<MirrorEdit>, BackendError> {
    let mut edits = Vec::new();
    for (base, removed) in mirror
        .unlinks
        .iter()
        .zip(locked.unlink_all_named(&mirror.unlinks, &mirror.unlink_flags)?)
    {
        if removed {
            report.unlinked += 1;
        }
        edits.push(MirrorEdit::Unlinked { base: base.clone() });
    }
    Ok(edits)
}

/// Deliveries gathered for one [`LockedFolder::deliver_all`]: a batch is flushed to disk at
/// once, so a replicated folder costs a few flushes per batch rather than three per message.
#[derive(Default)]
struct Pending {
    items: Vec<Waiting>,
    bytes: usize,
    /// `Some` when the files are to be written but not appended to the uidlist (a folder
    /// being rebuilt): where each went, (UID, base name), for the new uidlist.
    unlisted: Option<Vec<(u32, String)>>,
}

/// A message waiting in a [`Pending`] batch.
struct Waiting {
    uid: u32,
    digest: Digest,
    flags: Vec<String>,
    internal_date: i64,
    bytes: Vec<u8>,
    /// The spool file that holds the bytes alone, if any (linked rather than written again).
    spooled: Option<PathBuf>,
}

/// Messages (and bytes) a batch of deliveries holds at most.
const BATCH_MESSAGES: usize = 256;
const BATCH_BYTES: usize = 32 << 20;

impl Pending {
    /// Gathers `message` for delivery at `uid`: its checked bytes, and its spool file if the
    /// store keeps one.
    fn push(
        &mut self,
        store: &Store,
        uid: u32,
        message: &crate::model::MessageRecord,
        flags: Vec<String>,
    ) -> Result<(), BackendError> {
        let bytes = store.body(&message.digest)?;
        let spooled = store.spooled_file(&message.digest)?;
        self.bytes += bytes.len();
        self.items.push(Waiting {
            uid,
            digest: message.digest,
            flags,
            internal_date: message.internal_date,
            bytes,
            spooled,
        });
        Ok(())
    }

    fn full(&self) -> bool {
        self.items.len() >= BATCH_MESSAGES || self.bytes >= BATCH_BYTES
    }

    /// Delivers what is gathered; returns whether some of it must wait for a later pass.
    fn flush(
        &mut self,
        store: &Store,
        (user, guid, dir): (&str, MailboxGuid, &Path),
        locked: &mut live::LockedFolder<'_>,
        edits: &mut Vec<MirrorEdit>,
        report: &mut PassReport,
    ) -> Result<bool, BackendError> {
        if self.items.is_empty() {
            return Ok(false);
        }
        let items = std::mem::take(&mut self.items);
        self.bytes = 0;
        let batch: Vec<live::Delivery<'_>> = items
            .iter()
            .map(|w| live::Delivery {
                bytes: &w.bytes,
                flags: &w.flags,
                internal_date: w.internal_date,
                uid: w.uid,
                link_from: w.spooled.as_deref(),
            })
            .collect();
        let results = match self.unlisted {
            Some(_) => locked.place_files(&batch)?,
            None => locked.deliver_all(&batch)?,
        };
        let mut owed_still = false;
        for (
            Waiting {
                uid,
                digest,
                flags,
                bytes,
                ..
            },
            result,
        ) in items.iter().zip(results)
        {
            match result {
                Ok(placed) => {
                    if let Some(unlisted) = &mut self.unlisted {
                        unlisted.push((*uid, placed.base.clone()));
                    }
                    report.delivered += 1;
                    report.delivered_bytes += bytes.len() as u64;
                    edits.push(MirrorEdit::Held {
                        uid: *uid,
                        digest: *digest,
                        row: FileRow {
                            base: placed.base,
                            disk_flags: flags.clone(),
                        },
                    });
                }
                Err(LiveError::BelowNext { next, .. }) => {
                    // The folder gave this UID (or a later one) to other mail: a client may
                    // have seen its UIDNEXT past it. The message moves up, on every replica.
                    store.renumber_message(user, guid, *uid, next)?;
                    report.renumbered += 1;
                    owed_still = true;
                }
                Err(e @ (LiveError::KeywordsFull { .. } | LiveError::UnstorableFlag { .. })) => {
                    // Never dropped: it stays in the index (and replicates); the disk lacks it
                    // until an operator frees a keyword.
                    problem(
                        report,
                        dir.display(),
                        format!("UID {uid} not delivered: {e}"),
                    );
                    owed_still = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(owed_still)
    }
}

/// Delivers a copy of the file `row` names at `uid` and removes the old file. Returns the new
/// file row, or `None` if it must wait (the UID is below the folder's next: the message was
/// moved up in the index, and the next pass delivers it there).
#[allow(clippy::too_many_arguments)]
fn redeliver(
    store: &Store,
    user: &str,
    locked: &mut live::LockedFolder<'_>,
    (guid, uid): (MailboxGuid, u32),
    row: &FileRow,
    message: &crate::model::MessageRecord,
    flags: &[String],
    report: &mut PassReport,
) -> Result<Option<MirrorEdit>, BackendError> {
    let bytes = match locked.find(&row.base)? {
        Some(path) => std::fs::read(&path).map_err(MaildirError::io(&path, "read"))?,
        None => return Ok(None),
    };
    match locked.deliver_at(&bytes, flags, message.internal_date, Some(uid)) {
        Ok(placed) => {
            locked.unlink(&row.base)?;
            report.delivered += 1;
            report.delivered_bytes += bytes.len() as u64;
            report.unlinked += 1;
            // Held, not a plain file row: a peer's write may move the message away before the
            // pass settles (the lock keeps Dovecot out, not the daemon's other threads), and
            // then the copy holds mail the index has elsewhere and is owed a removal.
            Ok(Some(MirrorEdit::Held {
                uid,
                digest: message.digest,
                row: FileRow {
                    base: placed.base,
                    disk_flags: flags.to_vec(),
                },
            }))
        }
        Err(LiveError::BelowNext { next, .. }) => {
            store.renumber_message(user, guid, uid, next)?;
            report.renumbered += 1;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A mailbox deleted in the index: its folder goes, unless it holds mail the index does not
/// know (delivered after the delete): then the folder stays and the next pass imports it.
fn remove_folder(
    store: &Store,
    root: &Path,
    user: &str,
    folder: &ScannedFolder,
    mirror: &MailboxMirror,
    report: &mut PassReport,
) -> Result<(), BackendError> {
    let known: HashSet<&str> = mirror
        .files
        .values()
        .map(|r| r.base.as_str())
        .chain(mirror.unlinks.iter().map(String::as_str))
        .collect();
    let unknown = folder
        .messages
        .iter()
        .filter(|m| !known.contains(m.basename.as_str()))
        .count();
    if unknown > 0 || folder.mailbox == INBOX {
        problem(
            report,
            folder.dir.display(),
            format!("mailbox deleted, but the folder holds {unknown} message(s) the index does not know: kept, to be imported"),
        );
        // Forget the folder: the next pass finds it as a new one and imports that mail.
        report.folders_kept += 1;
        return Ok(settle_gone(store, user, mirror)?);
    }
    if live::remove_folder(root, &folder.mailbox)? {
        report.folders_removed += 1;
    }
    Ok(settle_gone(store, user, mirror)?)
}

/// Subscriptions, three ways: a folder whose subscription changed on disk was handled per
/// folder (a local write); now the file is written if it differs from the index.
fn sync_subscriptions(store: &Store, root: &Path, user: &str) -> Result<(), BackendError> {
    let mailboxes = match store.list_mailboxes(user) {
        Ok(m) => m,
        // A user the index does not know yet (their Maildir holds only an empty INBOX):
        // nothing to say about their subscriptions.
        Err(StoreError::UnknownUser(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let wanted: BTreeSet<String> = mailboxes
        .into_iter()
        .filter(|m| m.subscribed && m.name != INBOX)
        .map(|m| m.name)
        .collect();
    let path = root.join("subscriptions");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        // Unreadable is not empty: rewriting it could drop the server's subscriptions.
        Err(e) => return Err(MaildirError::io(&path, "read")(e).into()),
    };
    let (have, _) = crate::maildir::folder::parse_subscriptions(&text);
    let have: BTreeSet<String> = have.into_iter().filter(|n| n != INBOX).collect();
    if have != wanted {
        let names: Vec<String> = wanted.into_iter().collect();
        live::write_subscriptions(root, &names)?;
    }
    Ok(())
}

/// What `verify` found when it held the index against the Maildirs: each mismatch in words
/// (the folder or file, then what differs). Empty when they agree.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskReport {
    pub folders_checked: u64,
    pub files_checked: u64,
    pub mismatches: Vec<String>,
}

/// Holds the index against the Maildirs without changing either: every mailbox has its
/// folder, every message its file (at its UID in the uidlist, with its flags in the name and
/// its size), and every file in `cur/` or `new/` is known to the index. Work still owed to the
/// disk (a serve that was stopped before a pass finished) counts as a mismatch, since the next
/// pass would change the disk.
pub fn verify(store: &Store, template: &Template) -> Result<DiskReport, BackendError> {
    let mut report = DiskReport::default();
    let owed = store.owed_mailboxes()?;
    let users: BTreeSet<String> = template
        .users()?
        .into_iter()
        .chain(store.users()?)
        .collect();
    for user in users {
        let root = template.root(&user);
        let disk = if root.is_dir() {
            scan(&root)?
        } else {
            Vec::new()
        };
        let by_name: HashMap<&str, &ScannedFolder> =
            disk.iter().map(|f| (f.mailbox.as_str(), f)).collect();
        let mut seen_folders: HashSet<String> = HashSet::new();
        for mirror in store.user_mirror(&user)? {
            let Some(record) = &mirror.record else {
                if let Some(row) = &mirror.folder {
                    if by_name.contains_key(row.name.as_str()) {
                        report.mismatches.push(format!(
                            "{user}/{}: deleted, but its folder is still on disk",
                            row.name
                        ));
                    }
                }
                continue;
            };
            report.folders_checked += 1;
            if owed.iter().any(|(u, g)| *u == user && *g == mirror.guid) {
                report.mismatches.push(format!(
                    "{user}/{}: changes are still owed to the disk (run `merkmail scan`)",
                    record.name
                ));
            }
            let Some(folder) = by_name.get(record.name.as_str()) else {
                report
                    .mismatches
                    .push(format!("{user}/{}: no folder on disk", record.name));
                continue;
            };
            seen_folders.insert(record.name.clone());
            if let Some(list) = &folder.uidlist {
                if list.uidvalidity != record.uidvalidity {
                    report.mismatches.push(format!(
                        "{user}/{}: UIDVALIDITY {} on disk, {} in the index",
                        record.name, list.uidvalidity, record.uidvalidity
                    ));
                }
            }
            verify_folder(&user, record, &mirror, folder, &mut report);
        }
        for folder in &disk {
            if !seen_folders.contains(&folder.mailbox) {
                report.mismatches.push(format!(
                    "{}: a folder the index does not know",
                    folder.dir.display()
                ));
            }
        }
    }
    Ok(report)
}

fn verify_folder(
    user: &str,
    record: &crate::model::MailboxRecord,
    mirror: &MailboxMirror,
    folder: &ScannedFolder,
    report: &mut DiskReport,
) {
    let on_disk: HashMap<&str, &ScannedMessage> = folder
        .messages
        .iter()
        .map(|m| (m.basename.as_str(), m))
        .collect();
    let mut known: HashSet<&str> = mirror.unlinks.iter().map(String::as_str).collect();
    for (uid, message) in &mirror.messages {
        report.files_checked += 1;
        let at = format!("{user}/{} UID {uid}", record.name);
        let Some(row) = mirror.files.get(uid) else {
            report.mismatches.push(format!("{at}: no file holds it"));
            continue;
        };
        known.insert(row.base.as_str());
        let Some(file) = on_disk.get(row.base.as_str()) else {
            report
                .mismatches
                .push(format!("{at}: its file {} is missing", row.base));
            continue;
        };
        if file.uid != Some(*uid) {
            report.mismatches.push(format!(
                "{at}: its file {} is listed at UID {:?}",
                row.base, file.uid
            ));
        }
        if file.size != message.size {
            report.mismatches.push(format!(
                "{at}: its file holds {} bytes, the index says {}",
                file.size, message.size
            ));
        }
        if sorted(&file.flags) != flags_of(message) {
            report.mismatches.push(format!(
                "{at}: flags {:?} on disk, {:?} in the index",
                sorted(&file.flags),
                flags_of(message)
            ));
        }
    }
    for file in &folder.messages {
        if !known.contains(file.basename.as_str()) {
            report.mismatches.push(format!(
                "{}: a file the index does not know",
                file.path.display()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MailFiles;

    /// A base name is found at the UID asked for by a search, and at any other UID (or
    /// nowhere) by the map of every line, which is made only then.
    #[test]
    fn a_listed_base_is_found_at_its_uid_or_wherever_the_uidlist_has_it() {
        let list = crate::maildir::uidlist::parse_uidlist(
            "3 V7 N9 G0123456789abcdef0123456789abcdef\n2 :two\n5 :five\n8 :eight\n",
        )
        .expect("parse");
        let mut listed = Listed::default();
        assert_eq!(listed.uid_of(&list, 5, "five"), Some(5));
        assert_eq!(listed.uid_of(&list, 2, "two"), Some(2));
        assert!(
            listed.all.is_none(),
            "no map while every file is at its UID"
        );
        assert_eq!(listed.uid_of(&list, 3, "eight"), Some(8));
        assert_eq!(listed.uid_of(&list, 5, "two"), Some(2));
        assert_eq!(listed.uid_of(&list, 8, "nine"), None);
        assert_eq!(listed.uid_of(&list, 4, "nine"), None);
        assert!(listed.all.is_some());
    }

    /// A body is read by the name its flags give, keywords through dovecot-keywords; a file
    /// renamed since the folder was last listed, or named by a stale hint, is still found
    /// (by a listing); a file that is gone reads as none.
    #[test]
    fn a_body_is_read_by_the_name_its_flags_give_and_found_without_them() {
        let parent =
            std::env::temp_dir().join(format!("merkmail-files-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        let dir = parent.join("ann/Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        std::fs::write(dir.join("dovecot-keywords"), "0 Junk\n").expect("keywords");
        for (name, body) in [
            ("cur/1.a.host:2,FS", "one\n"),
            ("cur/2.b.host:2,Sa", "two\n"),
            ("cur/3.c.host:2,RS", "three\n"),
            ("new/4.d.host", "four\n"),
        ] {
            std::fs::write(dir.join(name), body).expect("write");
        }
        let template = format!("{}/%u/Maildir", parent.display());
        let files = Files {
            template: Template::parse(&template).expect("template"),
            names: Default::default(),
        };
        let flags = |f: &[&str]| f.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let read = |base: &str, f: &[&str]| {
            files
                .read("ann", INBOX, base, &flags(f))
                .expect("read")
                .map(|b| String::from_utf8(b).expect("utf-8"))
        };
        assert_eq!(
            read("1.a.host", &["\\Flagged", "\\Seen"]).as_deref(),
            Some("one\n")
        );
        assert_eq!(
            read("2.b.host", &["\\Seen", "Junk"]).as_deref(),
            Some("two\n")
        );
        // A stale hint (the file's flags changed since) and none at all.
        assert_eq!(read("3.c.host", &["\\Seen"]).as_deref(), Some("three\n"));
        assert_eq!(read("4.d.host", &[]).as_deref(), Some("four\n"));
        assert_eq!(read("5.gone.host", &["\\Seen"]), None);
        assert_eq!(
            named_by_flags(&dir, "2.b.host", &flags(&["Junk", "\\Seen"])).as_deref(),
            Some("cur/2.b.host:2,Sa")
        );
        assert_eq!(named_by_flags(&dir, "4.d.host", &[]), None);
        assert_eq!(named_by_flags(&dir, "x", &flags(&["Unknown"])), None);
        let _ = std::fs::remove_dir_all(&parent);
    }
}
