//! Maildir message file names (`<base>:2,<flag letters>`) and the `dovecot-keywords` file that
//! gives keyword letters their names.
//!
//! Dovecot's rules, which we follow so that both sides agree on what a name means: the *base
//! name* (the uidlist key and Dovecot's default message GUID) is everything before the first
//! ':'; flags are read from the last ':' only when it is followed by "2,", up to the next ',';
//! letters that mean nothing are ignored. Fields such as ",S=<size>" and ",W=<vsize>" are part
//! of the base name.

use std::collections::{BTreeMap, BTreeSet};

use crate::maildir::{MAX_KEYWORDS, SYSTEM_FLAGS};

/// What a message file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedName {
    /// The part before the first ':', which is the key Dovecot's uidlist uses.
    pub basename: String,
    /// System flags (canonical spelling, e.g. `\Seen`) and keywords, in flag-letter order,
    /// without duplicates.
    pub flags: Vec<String>,
    /// Letters 'a'..='z' present in the name that dovecot-keywords does not name, or names
    /// with something that is not a keyword (`\\See`, a name with a space or a control
    /// character: [`check_keyword`] refuses it, and it could not be written back); the keyword
    /// is lost, as it is for Dovecot.
    pub unknown_keyword_letters: Vec<char>,
    /// Other letters in the flag field that mean nothing to IMAP (e.g. Maildir's 'P' "passed");
    /// Dovecot ignores them too. Reported so the caller can say so.
    pub ignored_letters: Vec<char>,
}

/// Splits a message file name into base name and flags, naming keyword letters from
/// `keywords` (as returned by [`parse_keywords_file`]).
pub fn parse_filename(file_name: &str, keywords: &[(u8, String)]) -> ParsedName {
    let basename = match file_name.split_once(':') {
        Some((base, _)) => base,
        None => file_name,
    };
    let letters = match file_name.rsplit_once(':') {
        Some((_, info)) => match info.strip_prefix("2,") {
            Some(flags) => flags.split(',').next().unwrap_or(""),
            None => "",
        },
        None => "",
    };
    // A set both sorts the letters (so flags come out in one canonical order) and drops
    // repeated letters.
    let letters: BTreeSet<char> = letters.chars().collect();
    let mut parsed = ParsedName {
        basename: basename.to_string(),
        flags: Vec::new(),
        unknown_keyword_letters: Vec::new(),
        ignored_letters: Vec::new(),
    };
    for c in letters {
        if let Some((_, flag)) = SYSTEM_FLAGS.iter().find(|(l, _)| *l == c) {
            parsed.flags.push((*flag).to_string());
        } else if c.is_ascii_lowercase() {
            let idx = (c as u8) - b'a';
            match keywords.iter().find(|(i, _)| *i == idx) {
                Some((_, name)) if check_keyword(name).is_ok() => parsed.flags.push(name.clone()),
                // The slot stays taken in dovecot-keywords (we never reuse its letter), but
                // what it holds is not a keyword: a `\\See` there would be read as a flag
                // that no file name can carry.
                Some(_) | None => parsed.unknown_keyword_letters.push(c),
            }
        } else {
            parsed.ignored_letters.push(c);
        }
    }
    parsed
}

/// The letter for a system flag, matched case-insensitively as IMAP does.
pub fn system_flag_letter(flag: &str) -> Option<char> {
    SYSTEM_FLAGS
        .iter()
        .find(|(_, name)| name.eq_ignore_ascii_case(flag))
        .map(|(l, _)| *l)
}

/// True when `flag` starts with '\\', i.e. claims to be a system flag.
pub fn is_system_flag_syntax(flag: &str) -> bool {
    flag.starts_with('\\')
}

/// Checks that a keyword can be written to dovecot-keywords and read back unchanged: the file
/// is "<index> <name>" lines, so whitespace and control characters would break it.
pub fn check_keyword(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty keyword".into());
    }
    if is_system_flag_syntax(name) {
        return Err("only the five system flags may start with '\\'".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("keyword contains {c:?}"));
    }
    Ok(())
}

/// Builds the info part "2,<letters>" for `flags`, with letters sorted as the Maildir
/// specification asks. Flags that have no letter (an unknown `\Something`, a keyword missing
/// from `keywords`) are returned with the reason, and left out of the name.
pub fn format_info(flags: &[String], keywords: &[(u8, String)]) -> (String, Vec<(String, String)>) {
    let mut letters = BTreeSet::new();
    let mut dropped = Vec::new();
    for flag in flags {
        if is_system_flag_syntax(flag) {
            match system_flag_letter(flag) {
                Some(l) => {
                    letters.insert(l);
                }
                None => dropped.push((flag.clone(), "not a storable system flag".to_string())),
            }
        } else {
            match keywords.iter().find(|(_, name)| name == flag) {
                Some((idx, _)) if usize::from(*idx) < MAX_KEYWORDS => {
                    letters.insert(char::from(b'a' + idx));
                }
                _ => dropped.push((
                    flag.clone(),
                    "keyword has no letter in this folder".to_string(),
                )),
            }
        }
    }
    let mut info = String::from("2,");
    info.extend(letters);
    (info, dropped)
}

/// Parses dovecot-keywords ("<index> <name>" per line, index 0..=25), as Dovecot does: lines
/// without a space, with a bad index or an empty name, and names already seen are skipped; for
/// a repeated index the later line wins. Sorted by index.
pub fn parse_keywords_file(text: &str) -> Vec<(u8, String)> {
    let mut by_index: BTreeMap<u8, String> = BTreeMap::new();
    for line in text.lines() {
        let Some((idx, name)) = line.split_once(' ') else {
            continue;
        };
        // A keyword is an IMAP atom: a control character (a '\r' left at the end of a file
        // with no final newline, say) makes no keyword, and would not survive a rewrite.
        if idx.is_empty()
            || !idx.bytes().all(|b| b.is_ascii_digit())
            || name.is_empty()
            || name.chars().any(char::is_control)
        {
            continue;
        }
        let Ok(idx) = idx.parse::<u8>() else {
            continue;
        };
        if usize::from(idx) >= MAX_KEYWORDS || by_index.values().any(|n| n == name) {
            continue;
        }
        by_index.insert(idx, name.to_string());
    }
    by_index.into_iter().collect()
}

/// Writes dovecot-keywords in the form Dovecot writes it.
pub fn format_keywords_file(keywords: &[(u8, String)]) -> String {
    let mut sorted: Vec<&(u8, String)> = keywords.iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    sorted
        .into_iter()
        .map(|(i, name)| format!("{i} {name}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kw() -> Vec<(u8, String)> {
        vec![
            (0, "$Label1".into()),
            (1, "Junk".into()),
            (25, "$Last".into()),
        ]
    }

    fn check(name: &str, base: &str, flags: &[&str], unknown: &[char], ignored: &[char]) {
        let p = parse_filename(name, &kw());
        assert_eq!(p.basename, base, "{name}");
        assert_eq!(p.flags, flags, "{name}");
        assert_eq!(p.unknown_keyword_letters, unknown, "{name}");
        assert_eq!(p.ignored_letters, ignored, "{name}");
    }

    #[test]
    fn filenames_parse_like_dovecot() {
        check(
            "1700000000.M1P2.host",
            "1700000000.M1P2.host",
            &[],
            &[],
            &[],
        );
        check(
            "1.M1P2.h,S=123,W=130:2,S",
            "1.M1P2.h,S=123,W=130",
            &["\\Seen"],
            &[],
            &[],
        );
        check(
            "x:2,DFRST",
            "x",
            &["\\Draft", "\\Flagged", "\\Answered", "\\Seen", "\\Deleted"],
            &[],
            &[],
        );
        // Letters out of order and repeated still give one canonical list.
        check(
            "x:2,TSSa",
            "x",
            &["\\Seen", "\\Deleted", "$Label1"],
            &[],
            &[],
        );
        check("x:2,abz", "x", &["$Label1", "Junk", "$Last"], &[], &[]);
        check("x:2,Sc", "x", &["\\Seen"], &['c'], &[]);
        check("x:2,PS", "x", &["\\Seen"], &[], &['P']);
        check("x:2,", "x", &[], &[], &[]);
        // Experimental "1," info carries no flags.
        check("x:1,S", "x", &[], &[], &[]);
        // Flags end at the next ','.
        check("x:2,S,extra", "x", &["\\Seen"], &[], &[]);
        // Base is up to the first ':', flags from the last.
        check("x:y:2,F", "x", &["\\Flagged"], &[], &[]);
        check("", "", &[], &[], &[]);
        check(":2,S", "", &["\\Seen"], &[], &[]);
        check("ünï:2,S", "ünï", &["\\Seen"], &[], &[]);
        check("x:2,é", "x", &[], &[], &['é']);
    }

    #[test]
    fn keywords_file_skips_bad_lines() {
        let text = "0 $Label1\n1 Junk\nnospace\nx Bad\n-1 Neg\n26 TooBig\n300 Huge\n2 \n3 Junk\n\
                    +4 Plus\n4 Two Words\r\n4 Later\n";
        assert_eq!(
            parse_keywords_file(text),
            vec![
                (0, "$Label1".into()),
                (1, "Junk".into()),
                (4, "Later".into())
            ]
        );
        assert_eq!(parse_keywords_file(""), vec![]);
    }

    #[test]
    fn keyword_checks() {
        assert!(check_keyword("$Label1").is_ok());
        assert!(check_keyword("Junk").is_ok());
        for bad in ["", "a b", "a\nb", "\\Seen", "\\Foo", "tab\t"] {
            assert!(check_keyword(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn format_info_sorts_and_drops() {
        let flags: Vec<String> = ["Junk", "\\seen", "\\Recent", "Nope", "\\Draft", "$Label1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (info, dropped) = format_info(&flags, &kw());
        assert_eq!(info, "2,DSab");
        let dropped: Vec<&str> = dropped.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(dropped, ["\\Recent", "Nope"]);
    }

    fn flag_strategy() -> impl Strategy<Value = Vec<String>> {
        let names = prop::sample::select(vec![
            "\\Seen",
            "\\Answered",
            "\\Flagged",
            "\\Deleted",
            "\\Draft",
            "$Label1",
            "Junk",
            "$Last",
            "NonJunk",
        ]);
        prop::collection::vec(names.prop_map(String::from), 0..10)
    }

    proptest! {
        #[test]
        fn flags_to_filename_to_flags(flags in flag_strategy(), base in "[0-9A-Za-z.,=_-]{1,30}") {
            let mut keywords = kw();
            keywords.push((7, "NonJunk".into()));
            let (info, dropped) = format_info(&flags, &keywords);
            prop_assert!(dropped.is_empty());
            let parsed = parse_filename(&format!("{base}:{info}"), &keywords);
            prop_assert_eq!(&parsed.basename, &base);
            let want: BTreeSet<&String> = flags.iter().collect();
            let got: BTreeSet<&String> = parsed.flags.iter().collect();
            prop_assert_eq!(got, want);
            prop_assert!(parsed.unknown_keyword_letters.is_empty());
        }

        #[test]
        fn parse_filename_never_panics(name in "\\PC{0,40}") {
            let _ = parse_filename(&name, &kw());
        }

        #[test]
        fn keywords_file_round_trips(names in prop::collection::btree_map(0u8..26, "[A-Za-z$][A-Za-z0-9_$]{0,12}", 0..26)) {
            // Names must be unique for a faithful round trip, as Dovecot skips repeats.
            let mut seen = BTreeSet::new();
            let list: Vec<(u8, String)> = names.into_iter().filter(|(_, n)| seen.insert(n.clone())).collect();
            prop_assert_eq!(parse_keywords_file(&format_keywords_file(&list)), list);
        }
    }
}
