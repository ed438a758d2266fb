//! Import side: walks a Maildir++ root and lists its folders and messages, without reading any
//! message body (the caller reads them one at a time, so memory stays bounded).
//!
//! What counts: INBOX is root/{cur,new}; each `.Name` directory with cur/ or new/ is a folder;
//! root/subscriptions says which are subscribed. tmp/, dot-files that are not folders, Dovecot's
//! index and lock files, `maildirfolder` and `subscriptions` are ignored without comment. Anything
//! else odd (a non-UTF-8 name, a symlink, a corrupt uidlist, an unknown keyword letter) is left
//! out and reported in [`ScannedFolder::skipped`] with the reason.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::maildir::folder::{mailbox_name_from_dir, parse_subscriptions};
use crate::maildir::name::{parse_filename, parse_keywords_file};
use crate::maildir::uidlist::{parse_kept_file, read_kept, KeptRead, UidList};
use crate::maildir::{MaildirError, INBOX};
use std::sync::Arc;

/// One folder found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFolder {
    /// merkmail's name for it: UTF-8, '/' between levels, "INBOX" for the root.
    pub mailbox: String,
    /// The folder's directory (the root itself for INBOX).
    pub dir: PathBuf,
    /// The folder's dovecot-uidlist, if it has a readable one.
    pub uidlist: Option<Arc<UidList>>,
    pub subscribed: bool,
    /// Sorted: messages with a UID by UID, then the others by base name, then by path.
    pub messages: Vec<ScannedMessage>,
    /// Entries left out, or only partly understood, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// One message file found by [`scan`]; the body is at `path`, unread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedMessage {
    pub path: PathBuf,
    /// The file name up to its first ':', the key of dovecot-uidlist.
    pub basename: String,
    /// From dovecot-uidlist when it lists this base name. `None` for mail Dovecot has not seen
    /// yet, and for the second of two files with the same base name.
    pub uid: Option<u32>,
    /// System flags and keywords from the file name, in new/ as in cur/: Dovecot itself leaves
    /// saved mail in new/ with a flag suffix (`new/<base>:2,Sab`) and honours it when reading.
    pub flags: Vec<String>,
    /// Unix seconds from the file's mtime, which is where Dovecot keeps the INTERNALDATE.
    pub internal_date: i64,
    /// File size in bytes.
    pub size: u64,
}

/// Root entries that belong to Dovecot or to Maildir++ itself and mean nothing to an import.
fn is_ignored_root_file(name: &str) -> bool {
    name.starts_with("dovecot")
        || name == "maildirfolder"
        || name == "subscriptions"
        || name == "tmp"
        || name.starts_with("courierimap")
}

/// The folders of a Maildir++ tree, listed but not read: what [`list`] finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// INBOX first, then the folders by mailbox name: (mailbox, directory).
    pub folders: Vec<(String, PathBuf)>,
    /// The mailboxes `subscriptions` names.
    pub subscriptions: BTreeSet<String>,
    /// Root-level entries left out, with the reason (reported under INBOX by [`scan`]).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Lists every folder of the Maildir++ tree at `root`. INBOX comes first (always present, as in
/// IMAP, even when the root has no cur/ of its own), then the folders by name. Fails if `root` is
/// missing, unreadable, or does not look like a Maildir (no cur/ or new/, and no `.Folder` that
/// has one); unreadable directories inside fail the scan too, rather than import part of a
/// folder. Other problems are reported per entry in `skipped`, root-level ones under INBOX.
pub fn scan(root: &Path) -> Result<Vec<ScannedFolder>, MaildirError> {
    let mut listing = list(root)?;
    let mut folders = Vec::new();
    for (mailbox, dir) in std::mem::take(&mut listing.folders) {
        let subscribed = listing.subscriptions.contains(&mailbox);
        folders.push(scan_folder(mailbox, dir, subscribed)?);
    }
    if let Some(inbox) = folders.first_mut() {
        inbox.skipped.append(&mut listing.skipped);
    }
    Ok(folders)
}

/// The folders of the Maildir++ tree at `root`, as [`scan`] finds them, without reading any
/// folder's mail: a readdir of the root, a stat per entry and the subscriptions file.
pub fn list(root: &Path) -> Result<Listing, MaildirError> {
    let meta = fs::metadata(root).map_err(|e| MaildirError::NotMaildir {
        path: root.to_path_buf(),
        problem: format!("cannot stat: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(MaildirError::NotMaildir {
            path: root.to_path_buf(),
            problem: "not a directory".into(),
        });
    }

    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    let mut has_inbox = false;
    let mut folder_dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in read_dir_sorted(root)? {
        let path = root.join(&entry);
        let Some(name) = entry.to_str() else {
            skipped.push((path, "name is not UTF-8".into()));
            continue;
        };
        let kind = match fs::symlink_metadata(&path) {
            Ok(kind) => kind,
            // Gone between the readdir and the stat (a folder renamed or deleted meanwhile):
            // the next look sees the tree as it is then.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(MaildirError::io(&path, "stat")(e)),
        };
        if name == "cur" || name == "new" {
            if kind.is_dir() {
                has_inbox = true;
            } else {
                skipped.push((path, "cur/ or new/ is not a directory".into()));
            }
        } else if name.starts_with('.') {
            if kind.file_type().is_symlink() {
                // Following it could read mail from outside the tree being imported.
                skipped.push((path, "folder is a symbolic link; not followed".into()));
            } else if kind.is_dir() {
                folder_dirs.push((name.to_string(), path));
            }
            // Other dot-files (.customflags, editor droppings) are not folders: ignored.
        } else if !is_ignored_root_file(name) {
            skipped.push((path, "not part of a Maildir++ tree; ignored".into()));
        }
    }
    let is_mailbox_dir = |p: &Path| p.join("cur").is_dir() || p.join("new").is_dir();
    if !has_inbox && !folder_dirs.iter().any(|(_, p)| is_mailbox_dir(p)) {
        return Err(MaildirError::NotMaildir {
            path: root.to_path_buf(),
            problem: "has no cur/, new/ or .Folder directory".into(),
        });
    }

    let subscriptions = read_subscriptions(root, &mut skipped)?;

    let mut other: Vec<(String, PathBuf)> = Vec::new();
    for (name, path) in folder_dirs {
        let mailbox = match mailbox_name_from_dir(&name) {
            Ok(m) => m,
            Err(e) => {
                skipped.push((path, e.to_string()));
                continue;
            }
        };
        if !is_mailbox_dir(&path) {
            skipped.push((
                path,
                format!("folder {mailbox:?} has neither cur/ nor new/; not a mailbox"),
            ));
            continue;
        }
        other.push((mailbox, path));
    }
    other.sort();
    let mut folders = vec![(INBOX.to_string(), root.to_path_buf())];
    folders.extend(other);
    Ok(Listing {
        folders,
        subscriptions,
        skipped,
    })
}

/// Directory entries sorted by name, so every scan sees them in the same order.
fn read_dir_sorted(dir: &Path) -> Result<Vec<std::ffi::OsString>, MaildirError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(MaildirError::io(dir, "read directory"))? {
        let entry = entry.map_err(MaildirError::io(dir, "read directory"))?;
        names.push(entry.file_name());
    }
    names.sort();
    Ok(names)
}

/// Reads a small text file that may be absent; `Ok(None)` when it is.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, MaildirError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MaildirError::Io {
            path: path.to_path_buf(),
            op: "read",
            source: e,
        }),
    }
}

fn read_subscriptions(
    root: &Path,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<BTreeSet<String>, MaildirError> {
    let path = root.join("subscriptions");
    let Some(bytes) = read_optional(&path)? else {
        return Ok(BTreeSet::new());
    };
    let Ok(text) = String::from_utf8(bytes) else {
        skipped.push((
            path,
            "subscriptions file is not UTF-8; no folder marked subscribed".into(),
        ));
        return Ok(BTreeSet::new());
    };
    let (names, errors) = parse_subscriptions(&text);
    for e in errors {
        skipped.push((path.clone(), e));
    }
    Ok(names.into_iter().collect())
}

/// Unix seconds of a file time, rounded down also before 1970 (a message's INTERNALDATE from
/// its file's mtime, here and in `append --date-from-file`).
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 {
                secs.saturating_neg().saturating_sub(1)
            } else {
                secs.saturating_neg()
            }
        }
    }
}

/// Scans one folder directory (cur/ and new/, its uidlist and keywords), as [`scan`] does for
/// each folder [`list`] finds.
pub fn scan_folder(
    mailbox: String,
    dir: PathBuf,
    subscribed: bool,
) -> Result<ScannedFolder, MaildirError> {
    let mut skipped = Vec::new();
    let (uidlist, keywords) = read_headers(&dir, &mut skipped)?;
    let uid_of = uids_of(uidlist.as_deref());

    // cur/ first: when a base name is in both, the cur/ file is the one Dovecot already knows.
    let mut messages: Vec<ScannedMessage> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for sub in ["cur", "new"] {
        let sub_dir = dir.join(sub);
        if !sub_dir.is_dir() {
            continue;
        }
        for entry in read_dir_sorted(&sub_dir)? {
            let path = sub_dir.join(&entry);
            let Some(file_name) = entry.to_str() else {
                skipped.push((path, "file name is not UTF-8".into()));
                continue;
            };
            let found = Found {
                keywords: &keywords,
                uid_of: &uid_of,
            };
            if let Some(message) = found.message(path, file_name, &mut seen, &mut skipped)? {
                messages.push(message);
            }
        }
    }
    sort_messages(&mut messages);
    Ok(ScannedFolder {
        mailbox,
        dir,
        uidlist,
        subscribed,
        messages,
        skipped,
    })
}

/// Scans only the named files of one folder (`cur/NAME` or `new/NAME`, as a file watcher
/// reported them), with its uidlist and keywords read in full: what a folder whose other
/// files are known to be unchanged needs. A named file that is gone is simply absent; a base
/// name none of whose named files exists is looked up once in a listing of cur/ and new/ (it
/// was renamed again, and the watcher has not reported the new name yet). Returns the folder
/// and the base names looked at: for those, a base absent from the messages is gone.
///
/// Every file the uidlist lists at `listed_from` or above is looked at too, named or not: the
/// server (or this pass) numbered it, and a pass that took only the named ones would take a
/// later UID before an earlier one, which a replica that already shows the later one must
/// then move up.
pub fn scan_names(
    mailbox: String,
    dir: PathBuf,
    subscribed: bool,
    names: &BTreeSet<String>,
    listed_from: u32,
) -> Result<(ScannedFolder, BTreeSet<String>), MaildirError> {
    let mut skipped = Vec::new();
    let (uidlist, keywords) = read_headers(&dir, &mut skipped)?;
    let mut bases: BTreeSet<String> = BTreeSet::new();
    if let Some(list) = &uidlist {
        bases.extend(
            list.entries
                .iter()
                .filter(|(uid, _)| *uid >= listed_from)
                .map(|(_, base)| base.to_string()),
        );
    }
    let mut paths: Vec<(PathBuf, String)> = Vec::new();
    let mut named: HashSet<&str> = HashSet::new();
    // cur/ first, as in a full scan.
    for sub in ["cur/", "new/"] {
        for name in names.iter().filter_map(|n| n.strip_prefix(sub)) {
            if name.is_empty() || name.starts_with('.') || name.contains('/') {
                continue;
            }
            let base = name.split(':').next().unwrap_or(name);
            if base.is_empty() {
                continue;
            }
            bases.insert(base.to_string());
            named.insert(base);
            paths.push((dir.join(sub).join(name), name.to_string()));
        }
    }
    // The UIDs of these bases only: a map of every line of an 11 000-line uidlist cost more
    // than the rest of looking at a few files.
    let uid_of: HashMap<&str, u32> = uidlist
        .iter()
        .flat_map(|l| l.entries.iter())
        .filter(|(_, base)| bases.contains(&**base))
        .map(|(uid, base)| (&**base, *uid))
        .collect();
    let found = Found {
        keywords: &keywords,
        uid_of: &uid_of,
    };
    let mut messages: Vec<ScannedMessage> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (path, name) in paths {
        if let Some(message) = found.message(path, &name, &mut seen, &mut skipped)? {
            messages.push(message);
        }
    }
    let missing: Vec<&String> = bases.iter().filter(|b| !seen.contains(*b)).collect();
    // A file named but gone was expunged or renamed (a flag change, new/ → cur/, whose new
    // name the watcher names too): the caller's expunge looks again before it takes it as
    // one. Only a file the uidlist lists that no one named yet is looked for in a listing.
    let unnamed: Vec<&&String> = missing
        .iter()
        .filter(|b| !named.contains(b.as_str()))
        .collect();
    if !unnamed.is_empty() {
        tracing::debug!(folder = %dir.display(), listed_from, unnamed = ?unnamed.iter().take(3).collect::<Vec<_>>(), n = unnamed.len(), "listing a followed folder for files the uidlist lists that no one named");
        let mut listed = names_by_base(&dir)?;
        for base in missing {
            let Some(path) = listed.remove(base.as_str()) else {
                continue;
            };
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if let Some(message) = found.message(path, &name, &mut seen, &mut skipped)? {
                messages.push(message);
            }
        }
    }
    sort_messages(&mut messages);
    let folder = ScannedFolder {
        mailbox,
        dir,
        uidlist,
        subscribed,
        messages,
        skipped,
    };
    Ok((folder, bases))
}

/// Which of `wanted` (base names) a file in the folder's cur/ or new/ has (names only: no
/// stat, and nothing kept of the others: at 10 000 files this is what a listing costs).
pub fn bases_present(dir: &Path, wanted: &HashSet<&str>) -> Result<HashSet<String>, MaildirError> {
    let mut out = HashSet::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    each_file_name(dir, |_, name| {
        if let Some(base) = name.split(':').next().filter(|b| wanted.contains(b)) {
            out.insert(base.to_string());
        }
    })?;
    Ok(out)
}

/// Every file in a folder's cur/ and new/ by base name (names only: no stat). A base name in
/// both keeps its cur/ file, the one Dovecot already knows; a directory that is missing lists
/// nothing.
pub fn names_by_base(dir: &Path) -> Result<HashMap<String, PathBuf>, MaildirError> {
    let mut out = HashMap::new();
    each_file_name(dir, |sub_dir, name| {
        if name.starts_with('.') {
            return;
        }
        if let Some(base) = name.split(':').next().filter(|b| !b.is_empty()) {
            out.insert(base.to_string(), sub_dir.join(name));
        }
    })?;
    Ok(out)
}

/// Calls `f` with (`new/` or `cur/` directory, name) for every UTF-8 name in a folder's new/
/// then cur/ (names only: no stat); a directory that is missing lists nothing.
fn each_file_name(dir: &Path, mut f: impl FnMut(&Path, &str)) -> Result<(), MaildirError> {
    for sub in ["new", "cur"] {
        let sub_dir = dir.join(sub);
        let entries = match fs::read_dir(&sub_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(MaildirError::io(&sub_dir, "read directory")(e)),
        };
        for entry in entries {
            let entry = entry.map_err(MaildirError::io(&sub_dir, "read directory"))?;
            let name = entry.file_name();
            if let Some(name) = name.to_str() {
                f(&sub_dir, name);
            }
        }
    }
    Ok(())
}

/// A folder's keywords by index, as `dovecot-keywords` lists them.
type Keywords = Vec<(u8, String)>;

/// A folder's uidlist and keywords, each `None`/empty (with the reason in `skipped`) if it
/// cannot be used.
fn read_headers(
    dir: &Path,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<(Option<Arc<UidList>>, Keywords), MaildirError> {
    let uidlist_path = dir.join("dovecot-uidlist");
    let read = read_kept(&uidlist_path).map_err(|e| MaildirError::Io {
        path: uidlist_path.clone(),
        op: "read",
        source: e,
    })?;
    let uidlist = match read {
        None => None,
        Some(KeptRead::List(list)) => Some(list),
        Some(KeptRead::Whole(bytes, id)) => match String::from_utf8(bytes) {
            Err(_) => {
                skipped.push((
                    uidlist_path,
                    "dovecot-uidlist is not UTF-8; UIDs will be reassigned".into(),
                ));
                None
            }
            Ok(text) => match parse_kept_file(&uidlist_path, &text, id) {
                Ok(list) => Some(list),
                Err(e) => {
                    skipped.push((uidlist_path, format!("{e}; UIDs will be reassigned")));
                    None
                }
            },
        },
    };
    let keywords_path = dir.join("dovecot-keywords");
    let keywords = match read_optional(&keywords_path)? {
        None => Vec::new(),
        Some(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse_keywords_file(&text),
            Err(_) => {
                skipped.push((
                    keywords_path,
                    "dovecot-keywords is not UTF-8; keywords lost".into(),
                ));
                Vec::new()
            }
        },
    };
    Ok((uidlist, keywords))
}

fn uids_of(uidlist: Option<&UidList>) -> HashMap<&str, u32> {
    uidlist
        .iter()
        .flat_map(|l| l.entries.iter().map(|(uid, base)| (&**base, *uid)))
        .collect()
}

/// Known UIDs first in UID order (`None` sorts before `Some`, hence the key), then the new
/// mail in a stable order.
fn sort_messages(messages: &mut [ScannedMessage]) {
    messages.sort_by(|a, b| {
        (a.uid.is_none(), a.uid, &a.basename, &a.path).cmp(&(
            b.uid.is_none(),
            b.uid,
            &b.basename,
            &b.path,
        ))
    });
}

/// What a folder's files are read against: its keywords and the UIDs its uidlist gives.
struct Found<'a> {
    keywords: &'a [(u8, String)],
    uid_of: &'a HashMap<&'a str, u32>,
}

impl Found<'_> {
    /// The message a file in cur/ or new/ holds, or `None` (with the reason in `skipped`
    /// when it is worth one) for what is not a message, or is gone since it was listed.
    fn message(
        &self,
        path: PathBuf,
        file_name: &str,
        seen: &mut BTreeSet<String>,
        skipped: &mut Vec<(PathBuf, String)>,
    ) -> Result<Option<ScannedMessage>, MaildirError> {
        // Maildir readers skip dot-files: they are not messages (often half-written ones).
        if file_name.starts_with('.') {
            return Ok(None);
        }
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Renamed (a flag change, new/ → cur/) or expunged since the readdir: left
            // for the next look, which the directory's new mtime asks for.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(MaildirError::io(&path, "stat")(e)),
        };
        if !meta.file_type().is_file() {
            skipped.push((
                path,
                "not a regular file (directory or symbolic link)".into(),
            ));
            return Ok(None);
        }
        let parsed = parse_filename(file_name, self.keywords);
        if parsed.basename.is_empty() {
            skipped.push((path, "empty base name".into()));
            return Ok(None);
        }
        for c in &parsed.unknown_keyword_letters {
            skipped.push((
                path.clone(),
                format!(
                    "keyword letter {c:?} names no keyword in dovecot-keywords; that keyword is dropped"
                ),
            ));
        }
        let mut uid = self.uid_of.get(parsed.basename.as_str()).copied();
        if !seen.insert(parsed.basename.clone()) {
            skipped.push((
                path.clone(),
                "base name already seen in this folder; listed without a UID".into(),
            ));
            uid = None;
        }
        let modified = meta
            .modified()
            .map_err(MaildirError::io(&path, "read mtime"))?;
        Ok(Some(ScannedMessage {
            path,
            basename: parsed.basename,
            uid,
            flags: parsed.flags,
            internal_date: unix_seconds(modified),
            size: meta.len(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, text).unwrap();
    }

    #[test]
    fn missing_or_empty_root_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        assert!(matches!(
            scan(&missing),
            Err(MaildirError::NotMaildir { .. })
        ));
        assert!(matches!(
            scan(tmp.path()),
            Err(MaildirError::NotMaildir { .. })
        ));
        let file = tmp.path().join("file");
        write(&file, "x");
        assert!(matches!(scan(&file), Err(MaildirError::NotMaildir { .. })));
        // A dot-directory that is not a mailbox (.git) does not make a Maildir.
        write(&tmp.path().join(".git/config"), "x");
        assert!(matches!(
            scan(tmp.path()),
            Err(MaildirError::NotMaildir { .. })
        ));
    }

    #[test]
    fn scan_reads_a_hand_made_maildir_and_reports_oddities() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(
            &r.join("dovecot-uidlist"),
            "3 V42 N10 G3085f01b7f11094c501100008c4a11c1\n2 :b\n5 W9 :a\n",
        );
        write(&r.join("dovecot-keywords"), "0 $Label1\n1 Junk\n");
        write(&r.join("cur/a:2,Sa"), "A");
        write(&r.join("cur/b:2,FRc"), "BB");
        write(&r.join("cur/.hidden"), "x");
        write(&r.join("new/c:2,S"), "CCC");
        write(&r.join("new/b"), "dup");
        write(&r.join("tmp/partial"), "x");
        write(&r.join("dovecot.index.log"), "x");
        write(&r.join("subscriptions"), "V\t2\n\nSent\t2024\n");
        write(&r.join("stray"), "x");
        write(&r.join(".Sent.2024/cur/m:2,S"), "M");
        write(&r.join(".Sent.2024/maildirfolder"), "");
        write(&r.join(".Sent.2024/dovecot-uidlist"), "garbage\n");
        write(&r.join(".bad..name/cur/x"), "x");
        write(&r.join(".NoCur/tmp/x"), "x");
        write(&r.join(".customflags"), "x");

        let folders = scan(r).unwrap();
        let names: Vec<&str> = folders.iter().map(|f| f.mailbox.as_str()).collect();
        assert_eq!(names, ["INBOX", "Sent/2024"]);

        let inbox = &folders[0];
        assert!(!inbox.subscribed);
        assert_eq!(inbox.uidlist.as_ref().map(|l| l.uidvalidity), Some(42));
        let got: Vec<(Option<u32>, &str, Vec<&str>, u64)> = inbox
            .messages
            .iter()
            .map(|m| {
                (
                    m.uid,
                    m.basename.as_str(),
                    m.flags.iter().map(String::as_str).collect(),
                    m.size,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(2), "b", vec!["\\Flagged", "\\Answered"], 2),
                (Some(5), "a", vec!["\\Seen", "$Label1"], 1),
                (None, "b", vec![], 3),
                (None, "c", vec!["\\Seen"], 3),
            ]
        );
        let reasons: Vec<String> = inbox
            .skipped
            .iter()
            .map(|(p, r)| {
                format!(
                    "{} {r}",
                    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
                )
            })
            .collect();
        let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
        assert!(has("b:2,FRc keyword letter 'c'"), "{reasons:?}");
        assert!(has("b base name already seen"), "{reasons:?}");
        assert!(has("stray not part"), "{reasons:?}");
        assert!(has(".bad..name"), "{reasons:?}");
        assert!(has(".NoCur folder"), "{reasons:?}");
        assert_eq!(reasons.len(), 5, "{reasons:?}");

        let sent = &folders[1];
        assert!(sent.subscribed);
        assert!(sent.uidlist.is_none());
        assert_eq!(sent.messages.len(), 1);
        assert_eq!(sent.messages[0].flags, ["\\Seen"]);
        assert_eq!(sent.skipped.len(), 1);
        assert!(sent.skipped[0].1.contains("UIDs will be reassigned"));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path().join("m");
        write(&r.join("cur/ok"), "x");
        write(&tmp.path().join("secret"), "s");
        std::os::unix::fs::symlink(tmp.path().join("secret"), r.join("cur/link")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), r.join(".Evil")).unwrap();
        let folders = scan(&r).unwrap();
        assert_eq!(folders.len(), 1);
        assert_eq!(folders[0].messages.len(), 1);
        assert_eq!(folders[0].skipped.len(), 2, "{:?}", folders[0].skipped);
    }

    #[test]
    fn times_round_down() {
        use std::time::Duration;
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1500)), 1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_millis(1500)), -2);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(3)), -3);
    }
}
