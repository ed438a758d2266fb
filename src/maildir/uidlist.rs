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

/// A uidlist parsed from `len` bytes with this BLAKE3 hash.
struct Parsed {
    hash: blake3::Hash,
    len: usize,
    list: Arc<UidList>,
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
    let kept = PARSED.get_or_init(Default::default);
    let lock = || {
        kept.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let before = lock()
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
            return Ok(list);
        }
    }
    let list = match grown.and_then(|(kept, len)| appended(&kept, &text[len..])) {
        Some(list) => Arc::new(list),
        None => Arc::new(parse_uidlist(text)?),
    };
    let mut kept = lock();
    let held: usize = kept.values().map(|p| p.list.entries.len()).sum();
    if held + list.entries.len() > PARSED_LINES {
        kept.clear();
    }
    kept.insert(
        path.to_path_buf(),
        Parsed {
            hash,
            len: text.len(),
            list: Arc::clone(&list),
        },
    );
    Ok(list)
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
