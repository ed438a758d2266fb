//! The `dovecot-uidlist` file: UIDVALIDITY, the next UID, the mailbox GUID, and which UID each
//! message base name has.
//!
//! Version 3 (Dovecot 1.1 and later):
//! ```text
//! 3 V<uidvalidity> N<nextuid> [G<guid, 32 hex>] [<other key><value> ...]
//! <uid> [<key><value> ...] :<base name>
//! ```
//! Version 1 (Dovecot 1.0, Courier's courierimapuiddb): header `1 <uidvalidity> <nextuid>`,
//! entries `<uid> <file name>`. We read both and write version 3. The checks mirror the ones
//! that make Dovecot call a uidlist corrupted, so a file we accept is one Dovecot accepts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::maildir::MaildirError;

/// A parsed dovecot-uidlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidList {
    pub uidvalidity: u32,
    pub next_uid: u32,
    /// The mailbox GUID as 32 hex digits, when the header has one.
    pub guid: Option<String>,
    /// (uid, base name) in file order; UIDs strictly increase. Base names stop before any ':'.
    /// Shared, so that a list grown by a line (the kept parse of a file just appended to)
    /// copies pointers, not every name.
    pub entries: Vec<(u32, Arc<str>)>,
}

impl UidList {
    /// The UIDNEXT to believe: the header's, or one past the highest listed UID if that is
    /// larger. Dovecot appends entries without rewriting the header (its live UIDNEXT is in
    /// dovecot.index, which we do not read), so `3 V.. N1` followed by `1 :a` is normal.
    pub fn effective_next_uid(&self) -> u32 {
        let past_last = self
            .entries
            .iter()
            .map(|(uid, _)| uid.saturating_add(1))
            .max()
            .unwrap_or(0);
        self.next_uid.max(past_last)
    }
}

fn err(line: usize, problem: impl Into<String>) -> MaildirError {
    MaildirError::Uidlist {
        line,
        problem: problem.into(),
    }
}

/// Parses a decimal u32 made of digits only (no sign, no spaces), as Dovecot's str_to_uint.
fn number(text: &str, what: &str, line: usize) -> Result<u32, MaildirError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(line, format!("{what} {text:?} is not a number")));
    }
    text.parse::<u32>()
        .map_err(|_| err(line, format!("{what} {text:?} does not fit in 32 bits")))
}

/// Parses the text of a dovecot-uidlist (version 3, or version 1).
pub fn parse_uidlist(text: &str) -> Result<UidList, MaildirError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let Some((_, header)) = lines.next() else {
        return Err(err(1, "missing header (empty file)"));
    };
    let (version, fields) = header.split_once(' ').unwrap_or((header, ""));
    let mut list = UidList {
        uidvalidity: 0,
        next_uid: 0,
        guid: None,
        entries: Vec::new(),
    };
    match version {
        "1" => {
            let parts: Vec<&str> = fields.split_whitespace().collect();
            let [v, n] = parts.as_slice() else {
                return Err(err(
                    1,
                    "version 1 header must be \"1 <uidvalidity> <nextuid>\"",
                ));
            };
            list.uidvalidity = number(v, "UIDVALIDITY", 1)?;
            list.next_uid = number(n, "next UID", 1)?;
        }
        "3" => {
            for field in fields.split(' ').filter(|f| !f.is_empty()) {
                let mut chars = field.chars();
                let key = chars.next();
                let value = chars.as_str();
                match key {
                    Some('V') => list.uidvalidity = number(value, "UIDVALIDITY", 1)?,
                    Some('N') => list.next_uid = number(value, "next UID", 1)?,
                    Some('G') => {
                        if value.len() != 32 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(err(
                                1,
                                format!("mailbox GUID {value:?} is not 32 hex digits"),
                            ));
                        }
                        list.guid = Some(value.to_ascii_lowercase());
                    }
                    // Other header extensions are Dovecot's business; it keeps them as opaque
                    // text, and so may we by ignoring them.
                    _ => {}
                }
            }
        }
        "" => return Err(err(1, "missing header")),
        other => {
            let shown: String = other.chars().take(20).collect();
            return Err(err(
                1,
                format!("unsupported uidlist version {shown:?} (want 1 or 3)"),
            ));
        }
    }
    if list.uidvalidity == 0 || list.next_uid == 0 {
        return Err(err(
            1,
            format!(
                "header lacks a non-zero UIDVALIDITY or next UID (uidvalidity={}, next_uid={})",
                list.uidvalidity, list.next_uid
            ),
        ));
    }

    let v3 = version == "3";
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    push_entries(&mut list, v3, lines, &mut by_name)?;
    Ok(list)
}

/// Adds the entry lines `lines` ((line number, text)) to `list`, checking each as Dovecot
/// does. `by_name` indexes `list.entries` by base name (for a base listed twice, the later
/// line wins).
fn push_entries<'t>(
    list: &mut UidList,
    v3: bool,
    lines: impl Iterator<Item = (usize, &'t str)>,
    by_name: &mut HashMap<&'t str, usize>,
) -> Result<(), MaildirError> {
    let mut prev_uid = list.entries.last().map_or(0, |(uid, _)| *uid);
    for (n, line) in lines {
        let (uid_text, rest) = line
            .split_once(' ')
            .ok_or_else(|| err(n, format!("entry {line:?} is not \"<uid> ...\"")))?;
        let uid = number(uid_text, "UID", n)?;
        if uid == 0 || uid == u32::MAX {
            return Err(err(n, format!("UID {uid} is out of range")));
        }
        if uid <= prev_uid {
            return Err(err(
                n,
                format!("UIDs not ascending ({uid} after {prev_uid})"),
            ));
        }
        prev_uid = uid;
        let file_name = if v3 {
            let (exts, name) = rest
                .split_once(':')
                .ok_or_else(|| err(n, "entry has no ':' before the file name"))?;
            if let Some(bad) = exts
                .split(' ')
                .find(|e| !e.is_empty() && !e.starts_with(|c: char| c.is_ascii_uppercase()))
            {
                return Err(err(n, format!("invalid extension field {bad:?}")));
            }
            name
        } else {
            if uid >= list.next_uid {
                return Err(err(
                    n,
                    format!("UID {uid} is not below next UID {}", list.next_uid),
                ));
            }
            rest.trim_start_matches(' ')
        };
        // Dovecot keys entries by the part before ':' and never trusts a '/' in them.
        let base = file_name.split(':').next().unwrap_or("");
        if base.is_empty() {
            return Err(err(n, "empty file name"));
        }
        if base.contains('/') {
            return Err(err(n, format!("file name {base:?} contains '/'")));
        }
        // A control character (a '\r' before the line end, say) would not survive our own
        // rewrite of the list, and no Maildir delivery writes one.
        if base.chars().any(char::is_control) {
            return Err(err(
                n,
                format!("file name {base:?} contains a control character"),
            ));
        }
        // A base name listed twice: Dovecot keeps the later UID (the file came back after an
        // expunge), and so do we.
        if let Some(old) = by_name.get(base).copied() {
            list.entries.remove(old);
            for idx in by_name.values_mut() {
                if *idx > old {
                    *idx -= 1;
                }
            }
        }
        by_name.insert(base, list.entries.len());
        list.entries.push((uid, Arc::from(base)));
    }
    Ok(())
}

/// The entries a version 3 uidlist gained: `kept` parsed from the first bytes of the file,
/// `tail` the whole lines after them. `None` when the tail cannot simply be added (it lists
/// a base name again, or breaks a rule): the whole file is then parsed, for the rules' own
/// answer and line numbers.
fn appended(kept: &UidList, tail: &str) -> Option<UidList> {
    let mut list = kept.clone();
    let mut by_name = HashMap::new();
    push_entries(&mut list, true, tail.lines().map(|l| (0, l)), &mut by_name).ok()?;
    let again = kept
        .entries
        .iter()
        .any(|(_, base)| by_name.contains_key(&**base));
    (!again).then_some(list)
}

/// Which file a path named when it was read: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

/// A kept parse's last bytes (at most this many), read again and compared before only the
/// lines after them are read ([`read_kept`]).
const GUARD: usize = 4096;

/// A uidlist parsed from `len` bytes with this BLAKE3 hash.
struct Parsed {
    hash: blake3::Hash,
    /// The hash's state after the `len` bytes, to go on over lines appended.
    hasher: blake3::Hasher,
    len: usize,
    list: Arc<UidList>,
    /// The file the bytes were read from and their last (up to [`GUARD`]) bytes, when they
    /// were read through [`read_kept`], are version 3, and end with a line end.
    file: Option<(FileId, Vec<u8>)>,
}

/// Uidlists parsed lately, by path. A pass reads a folder's uidlist when it looks at the
/// files named, again when it takes the lock to number or deliver, and the next pass reads
/// it again: at 11 000 lines, parsing (and freeing) it each time was a third of a replica's
/// work in a change round. Kept by the hash of the bytes, so a kept parse is only used for
/// the very bytes it came from, whoever wrote the file and however; a file that only grew
/// (Dovecot and merkmail append lines in place) has only its new lines parsed, when its
/// first bytes still hash as the kept ones did.
static PARSED: OnceLock<Mutex<HashMap<PathBuf, Parsed>>> = OnceLock::new();

/// Lines kept parsed at most, over all folders (about 80 bytes each); past it the kept ones
/// are dropped and kept anew.
const PARSED_LINES: usize = 1_000_000;

/// [`parse_uidlist`] of `text`, the bytes just read from the uidlist at `path`: the list
/// parsed from the same bytes before, if kept, else parsed now and kept.
pub fn parse_kept(path: &Path, text: &str) -> Result<Arc<UidList>, MaildirError> {
    parse_with(path, text, None)
}

/// [`parse_kept`] of the bytes [`read_kept`] read whole from file `id`: kept with the file's
/// identity, so that the next [`read_kept`] of it reads only what was appended.
pub fn parse_kept_file(path: &Path, text: &str, id: FileId) -> Result<Arc<UidList>, MaildirError> {
    parse_with(path, text, Some(id))
}

fn kept_lock() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Parsed>> {
    PARSED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The identity and last bytes to keep with `text` read from file `id`, if a later read may
/// take only what is appended to it.
fn file_of(text: &str, id: Option<FileId>) -> Option<(FileId, Vec<u8>)> {
    let id = id?;
    if !text.starts_with("3 ") || !text.ends_with('\n') {
        return None;
    }
    let bytes = text.as_bytes();
    Some((id, bytes[bytes.len().saturating_sub(GUARD)..].to_vec()))
}

/// Keeps `parsed` for `path`, dropping every kept parse first past [`PARSED_LINES`].
fn keep(path: &Path, parsed: Parsed) {
    let mut kept = kept_lock();
    let held: usize = kept.values().map(|p| p.list.entries.len()).sum();
    if held + parsed.list.entries.len() > PARSED_LINES {
        kept.clear();
    }
    kept.insert(path.to_path_buf(), parsed);
}

fn parse_with(path: &Path, text: &str, id: Option<FileId>) -> Result<Arc<UidList>, MaildirError> {
    let before = kept_lock()
        .get(path)
        .map(|p| (p.hash, p.len, Arc::clone(&p.list)));
    // One pass of the hash over the bytes: through the kept length first (where the file may
    // only have grown since), then the rest.
    let mut hasher = blake3::Hasher::new();
    let mut grown = None;
    if let Some((kept_hash, len, list)) = &before {
        let bytes = text.as_bytes();
        if *len > 0
            && *len < text.len()
            && text.is_char_boundary(*len)
            && text.starts_with("3 ")
            && bytes[*len - 1] == b'\n'
        {
            hasher.update(&bytes[..*len]);
            if hasher.finalize() == *kept_hash {
                grown = Some((Arc::clone(list), *len));
            }
            hasher.update(&bytes[*len..]);
        } else {
            hasher.update(bytes);
        }
    } else {
        hasher.update(text.as_bytes());
    }
    let hash = hasher.finalize();
    if let Some((kept_hash, _, list)) = before {
        if kept_hash == hash {
            if let Some(file) = file_of(text, id) {
                if let Some(p) = kept_lock().get_mut(path) {
                    p.file = Some(file);
                }
            }
            return Ok(list);
        }
    }
    let list = match grown.and_then(|(kept, len)| appended(&kept, &text[len..])) {
        Some(list) => Arc::new(list),
        None => Arc::new(parse_uidlist(text)?),
    };
    keep(
        path,
        Parsed {
            hash,
            hasher,
            len: text.len(),
            list: Arc::clone(&list),
            file: file_of(text, id),
        },
    );
    Ok(list)
}

/// What [`read_kept`] found at a uidlist's path.
pub enum KeptRead {
    /// The file read before, with whole lines appended at most: its list (only the lines
    /// after the kept bytes were read, and parsed).
    List(Arc<UidList>),
    /// Any other file (new, replaced, cut short, in the middle of an append, or never read
    /// through here): its bytes, read whole, for [`parse_kept_file`].
    Whole(Vec<u8>, FileId),
}

/// Reads the uidlist at `path` (`None`: there is none). Dovecot and merkmail only append to
/// a uidlist in place, and any other change writes a new file and renames it over the old one
/// (a new inode; see `maildir::watch::UidlistMark`). So when the file is the one whose parse
/// is kept, no shorter, and still holds the kept bytes' last 4 KiB where they were, only what
/// follows them is read: a pass looks at a folder's uidlist up to three times, and at 7 000
/// lines reading and hashing it whole each time was a tenth of a replica's work in a change
/// round. Anything else (a cut, a torn last line, another file) is read whole.
pub fn read_kept(path: &Path) -> std::io::Result<Option<KeptRead>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let id = FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(list) = read_appended(path, &file, id, meta.len()) {
        return Ok(Some(KeptRead::List(list)));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(KeptRead::Whole(bytes, id)))
}

/// The kept parse of file `id` at `path` (`size` bytes now) with the lines appended since,
/// read from the kept bytes' last [`GUARD`] on; `None` when it is not that file any more,
/// or the tail is not whole lines that simply add entries.
fn read_appended(path: &Path, file: &std::fs::File, id: FileId, size: u64) -> Option<Arc<UidList>> {
    use std::os::unix::fs::FileExt;
    let (len, guard, hasher, list) = {
        let kept = kept_lock();
        let p = kept.get(path)?;
        let (kept_id, guard) = p.file.as_ref()?;
        if *kept_id != id || size < p.len as u64 {
            return None;
        }
        (p.len, guard.clone(), p.hasher.clone(), Arc::clone(&p.list))
    };
    let from = len - guard.len();
    let mut buf = vec![0u8; usize::try_from(size).ok()? - from];
    file.read_exact_at(&mut buf, from as u64).ok()?;
    if buf[..guard.len()] != guard[..] {
        return None;
    }
    let tail = &buf[guard.len()..];
    if tail.is_empty() {
        return Some(list);
    }
    if tail.last() != Some(&b'\n') {
        return None;
    }
    let grown = Arc::new(appended(&list, std::str::from_utf8(tail).ok()?)?);
    let mut hasher = hasher;
    hasher.update(tail);
    keep(
        path,
        Parsed {
            hash: hasher.finalize(),
            hasher,
            len: len + tail.len(),
            list: Arc::clone(&grown),
            file: Some((id, buf[buf.len().saturating_sub(GUARD)..].to_vec())),
        },
    );
    Some(grown)
}

/// Writes a version 3 uidlist that Dovecot reads. Entries are written in the order given;
/// Dovecot requires ascending UIDs, which [`crate::maildir::MaildirWriter`] guarantees.
pub fn format_uidlist(list: &UidList) -> String {
    let mut out = format!("3 V{} N{}", list.uidvalidity, list.next_uid);
    if let Some(guid) = &list.guid {
        out.push_str(" G");
        out.push_str(guid);
    }
    out.push('\n');
    for (uid, base) in &list.entries {
        out.push_str(&format!("{uid} :{base}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uidlist read before is read again from its kept last bytes on when the same file grew
    /// by whole lines (a change in place before them is not seen: Dovecot never makes one);
    /// a file replaced, cut short, changed within the kept last bytes, or ending in a torn line
    /// is read whole.
    #[test]
    fn a_grown_uidlist_is_read_from_its_kept_end_and_anything_else_whole() {
        let dir = std::env::temp_dir().join(format!("merkmail-read-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("dovecot-uidlist");
        let mut text = String::from("3 V1 N1 G0123456789abcdef0123456789abcdef\n");
        for uid in 1..=200 {
            text.push_str(&format!("{uid} :{uid}.M1P1.host,S=1000\n"));
        }
        std::fs::write(&path, &text).expect("write");
        let read_whole = |path: &Path| match read_kept(path).expect("read") {
            Some(KeptRead::Whole(bytes, id)) => (String::from_utf8(bytes).expect("utf-8"), id),
            Some(KeptRead::List(_)) => panic!("read from the kept end, expected whole"),
            None => panic!("no uidlist"),
        };
        let read_list = |path: &Path| match read_kept(path).expect("read") {
            Some(KeptRead::List(list)) => list,
            _ => panic!("read whole, expected from the kept end"),
        };
        let append = |line: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            f.write_all(line.as_bytes()).expect("append");
        };
        let (whole, id) = read_whole(&path);
        let first = parse_kept_file(&path, &whole, id).expect("parse");
        assert!(
            Arc::ptr_eq(&first, &read_list(&path)),
            "unchanged: the kept list"
        );

        append("201 :201.M1P1.host,S=1000\n");
        let grown = read_list(&path);
        assert_eq!(grown.entries.len(), 201);
        assert_eq!(grown.entries[200], (201, Arc::from("201.M1P1.host,S=1000")));

        // Before the kept last bytes, in place: not read again (the trust named above).
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[3] = b'7'; // V1 -> V7
        std::fs::write(&path, &bytes).expect("write in place");
        append("202 :202.M1P1.host,S=1000\n");
        let trusted = read_list(&path);
        assert_eq!((trusted.uidvalidity, trusted.entries.len()), (1, 202));

        // A torn last line, then the file cut back shorter than what was kept: whole each
        // time, and then the change in place is seen.
        append("203 :203.M1");
        let (torn, id) = read_whole(&path);
        assert!(!torn.ends_with('\n'));
        let last = torn.rfind('\n').expect("a line end");
        let cut = &torn[..torn[..last].rfind('\n').expect("a line end") + 1];
        std::fs::write(&path, cut).expect("cut");
        let (again, id2) = read_whole(&path);
        assert_eq!((again.as_str(), id2), (cut, id));
        let reread = parse_kept_file(&path, &again, id2).expect("parse");
        assert_eq!((reread.uidvalidity, reread.entries.len()), (7, 201));

        // A change within the kept last bytes (same size): whole.
        let mut bytes = again.clone().into_bytes();
        let at = bytes.len() - 5;
        bytes[at] = b'9';
        std::fs::write(&path, &bytes).expect("write in place");
        let (changed, id3) = read_whole(&path);
        let list = parse_kept_file(&path, &changed, id3).expect("parse");

        // Replaced by a rename (Dovecot's rewrite): another inode, whole.
        let tmp = dir.join("dovecot-uidlist.lock");
        std::fs::write(&tmp, format_uidlist(&list)).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        let (_, id4) = read_whole(&path);
        assert_ne!(id4, id3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A kept parse is used only for the very bytes it came from: the same bytes give the
    /// same list without parsing, an append or a rewrite is parsed anew, and each path keeps
    /// its own.
    #[test]
    fn a_kept_parse_serves_only_the_same_bytes() {
        let path = Path::new("/nonexistent/merkmail-kept/dovecot-uidlist");
        let other = Path::new("/nonexistent/merkmail-kept/.Sent/dovecot-uidlist");
        let v1 = "3 V1 N3 G0123456789abcdef0123456789abcdef\n1 :a\n2 :b\n";
        let first = parse_kept(path, v1).expect("parse");
        assert!(Arc::ptr_eq(&first, &parse_kept(path, v1).expect("again")));
        let appended = format!("{v1}3 :c\n");
        let grown = parse_kept(path, &appended).expect("appended");
        assert_eq!(grown.entries.len(), 3);
        assert!(!Arc::ptr_eq(&first, &grown));
        // Same length, other bytes (a rewrite in place): parsed anew.
        let rewritten = v1.replace(":b", ":x");
        let parsed = parse_kept(path, &rewritten).expect("rewritten");
        assert_eq!(&*parsed.entries[1].1, "x");
        let elsewhere = parse_kept(other, &rewritten).expect("other path");
        assert_eq!(*elsewhere, *parsed);
        // Lines appended: only they are parsed, and the list is the one a whole parse gives,
        // also when a base comes back at a later UID.
        parse_kept(path, &appended).expect("kept again");
        let again = format!("{appended}4 :a\n");
        let grown_again = parse_kept(path, &again).expect("a base listed again");
        assert_eq!(*grown_again, parse_uidlist(&again).expect("parse"));
        assert_eq!(
            pairs(&grown_again),
            vec![(2, "b".into()), (3, "c".into()), (4, "a".into())]
        );
        let wrong = format!("{again}4 :d\n");
        assert!(parse_kept(path, &wrong).is_err(), "a UID not ascending");
        assert!(parse_kept(path, "3 V0 N1\n").is_err());
        assert_eq!(*parse_kept(path, &rewritten).expect("still kept"), *parsed);
    }
    use proptest::prelude::*;

    /// The entries as owned pairs, to compare with literals.
    fn pairs(list: &UidList) -> Vec<(u32, String)> {
        list.entries
            .iter()
            .map(|(uid, base)| (*uid, base.to_string()))
            .collect()
    }

    fn ok(text: &str) -> UidList {
        match parse_uidlist(text) {
            Ok(l) => l,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    #[test]
    fn good_uidlists_parse() {
        let l = ok("3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n\
                    25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394\n\
                    25017 W2481 :1276533073.M242911P3632.kurkku:2,F\n\
                    25018 S1 W2 :1276533074.x\n");
        assert_eq!(l.uidvalidity, 1275660208);
        assert_eq!(l.next_uid, 25022);
        assert_eq!(l.guid.as_deref(), Some("3085f01b7f11094c501100008c4a11c1"));
        assert_eq!(
            pairs(&l),
            vec![
                (
                    25006,
                    "1276528487.M364837P9451.kurkku,S=1355,W=1394".to_string()
                ),
                (25017, "1276533073.M242911P3632.kurkku".to_string()),
                (25018, "1276533074.x".to_string()),
            ]
        );
        let v1 = ok("1 1000 5\n1 a:2,S\n3 b\n");
        assert_eq!(
            (v1.uidvalidity, v1.next_uid, v1.guid.clone()),
            (1000, 5, None)
        );
        assert_eq!(pairs(&v1), vec![(1, "a".to_string()), (3, "b".to_string())]);
        // Unknown header fields are ignored; field order does not matter.
        let l = ok("3 N7 X123 V9\n");
        assert_eq!((l.uidvalidity, l.next_uid), (9, 7));
        // A file listed twice keeps its later UID.
        let l = ok("3 V1 N9\n1 :a\n2 :b\n5 :a\n");
        assert_eq!(pairs(&l), vec![(2, "b".to_string()), (5, "a".to_string())]);
        // Dovecot appends entries without rewriting N; the effective UIDNEXT follows them.
        let l = ok("3 V1 N1 G6823c909cdd00a6ba92e000083ecc375\n1 :a\n2 :b\n");
        assert_eq!((l.next_uid, l.effective_next_uid()), (1, 3));
        assert_eq!(ok("3 V1 N9\n1 :a\n").effective_next_uid(), 9);
        // Windows line ends are tolerated.
        assert_eq!(
            pairs(&ok("3 V1 N2\r\n1 :a\r\n")),
            vec![(1, "a".to_string())]
        );
    }

    #[test]
    fn malformed_uidlists_are_errors() {
        let bad = [
            ("", "missing header"),
            ("\n1 :a\n", "missing header"),
            ("2 V1 N1\n", "version"),
            ("x V1 N1\n", "version"),
            ("3 V0 N1\n", "non-zero"),
            ("3 N5\n", "non-zero"),
            ("3 V1\n", "non-zero"),
            ("3 Vabc N1\n", "not a number"),
            ("3 V-1 N1\n", "not a number"),
            ("3 V99999999999 N1\n", "32 bits"),
            ("3 V1 N2 Gxyz\n", "GUID"),
            ("1 5\n", "version 1 header"),
            ("1 a b\n", "not a number"),
            ("3 V1 N5\ngarbage\n", "entry"),
            ("3 V1 N5\n\n", "entry"),
            ("3 V1 N5\n1 a\n", "':'"),
            ("3 V1 N5\n0 :a\n", "out of range"),
            ("3 V1 N5\n4294967295 :a\n", "out of range"),
            ("3 V1 N5\n2 :a\n2 :b\n", "ascending"),
            ("3 V1 N5\n3 :a\n2 :b\n", "ascending"),
            ("3 V1 N5\nx1 :a\n", "not a number"),
            ("3 V1 N5\n1 :\n", "empty"),
            ("3 V1 N5\n1 :../x\n", "'/'"),
            ("3 V1 N5\n1 w1 :a\n", "extension"),
            ("1 1 5\n5 a\n", "next UID"),
        ];
        for (text, want) in bad {
            match parse_uidlist(text) {
                Err(e @ MaildirError::Uidlist { .. }) => {
                    assert!(e.to_string().contains(want), "{text:?}: {e} lacks {want:?}")
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    fn uidlist_strategy() -> impl Strategy<Value = UidList> {
        (
            1u32..,
            prop::option::of("[0-9a-f]{32}"),
            prop::collection::btree_map(1u32..1_000_000, "[0-9A-Za-z.,=_-]{1,40}", 0..20),
        )
            .prop_map(|(uidvalidity, guid, map)| {
                let mut seen = std::collections::HashSet::new();
                let entries: Vec<(u32, Arc<str>)> = map
                    .into_iter()
                    .filter(|(_, b)| seen.insert(b.clone()))
                    .map(|(u, b)| (u, Arc::from(b)))
                    .collect();
                let next_uid = entries.last().map_or(1, |(u, _)| u + 1);
                UidList {
                    uidvalidity,
                    next_uid,
                    guid,
                    entries,
                }
            })
    }

    /// Entry lines, mostly good: ascending or not, a base listed again, now and then a line
    /// Dovecot would call corrupt.
    fn entry_lines() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            prop_oneof![
                8 => (1u32..60, "[a-e]{1,2}").prop_map(|(uid, base)| format!("{uid} :{base}")),
                1 => (1u32..60, "[a-e]{1,2}").prop_map(|(uid, base)| format!("{uid} W7 :{base}:2,S")),
                1 => prop_oneof![
                    Just("x :a".to_string()),
                    Just(String::new()),
                    Just("5 a".to_string()),
                    Just("6 :a/b".to_string()),
                ],
            ],
            0..12,
        )
    }

    proptest! {
        /// A uidlist read after lines were appended to it (whole lines, as every writer
        /// appends) gives what parsing the whole file gives: the same list, or an error —
        /// whether its first bytes were kept parsed or not.
        #[test]
        fn a_grown_uidlist_reads_as_a_whole_one(
            first in entry_lines(),
            more in entry_lines(),
            n in 0u32..1_000_000,
        ) {
            let path = PathBuf::from(format!("/nonexistent/merkmail-grown/{n}/dovecot-uidlist"));
            let head = "3 V7 N1 G0123456789abcdef0123456789abcdef\n";
            let before: String = first.iter().map(|l| format!("{l}\n")).collect();
            let after: String = more.iter().map(|l| format!("{l}\n")).collect();
            let whole = format!("{head}{before}{after}");
            let _ = parse_kept(&path, &format!("{head}{before}"));
            let kept = parse_kept(&path, &whole).map(|l| (*l).clone()).ok();
            prop_assert_eq!(kept, parse_uidlist(&whole).ok());
        }

        #[test]
        fn format_then_parse_is_identity(list in uidlist_strategy()) {
            prop_assert_eq!(parse_uidlist(&format_uidlist(&list)).ok(), Some(list));
        }

        #[test]
        fn parse_never_panics(text in "[0-9 VNGa-z:/\\n]{0,80}") {
            let _ = parse_uidlist(&text);
        }
    }
}
