//! What a Maildir on disk tells the importer: message file names with the `dovecot-keywords`
//! file that names their letters, folder directory names (modified UTF-7), the `subscriptions`
//! file and `dovecot-uidlist`. Anything read from disk may be hostile; none of it may panic,
//! and what is accepted must survive being written back and read again.

use merkmail::maildir::name::{format_info, format_keywords_file};
use merkmail::maildir::{
    folder_dir_name, format_uidlist, mailbox_name_from_dir, parse_filename, parse_keywords_file,
    parse_uidlist, utf7,
};

/// The input as text; invalid UTF-8 is read lossily (names arrive as `OsStr`, which the scanner
/// converts the same way or skips).
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A message file name, a keywords file and a folder name, from one input: the keywords file
/// comes before the first blank line (`\n\n`), the file name after it; the file name doubles
/// as a folder directory name and as text for modified UTF-7.
pub fn names(data: &[u8]) {
    let input = text(data);
    let (keywords_text, file_name) = input.split_once("\n\n").unwrap_or(("", &input));

    let keywords = parse_keywords_file(keywords_text);
    let rewritten = parse_keywords_file(&format_keywords_file(&keywords));
    assert_eq!(
        rewritten, keywords,
        "keywords file does not survive a rewrite"
    );

    let parsed = parse_filename(file_name, &keywords);
    assert!(
        file_name.starts_with(&parsed.basename) && !parsed.basename.contains(':'),
        "base name {:?} is not the part of {file_name:?} before ':'",
        parsed.basename
    );
    let mut seen = std::collections::BTreeSet::new();
    for flag in &parsed.flags {
        assert!(seen.insert(flag), "flag {flag:?} listed twice: {parsed:?}");
    }
    // Written back with the same keywords, the flags read the same.
    let (info, dropped) = format_info(&parsed.flags, &keywords);
    assert!(
        dropped.is_empty(),
        "flags read from a name cannot be written: {dropped:?}"
    );
    let again = parse_filename(&format!("{}:{info}", parsed.basename), &keywords);
    assert_eq!(again.flags, parsed.flags, "flags do not survive a rename");

    // Folder directory names: what import accepts, export writes back as the same directory.
    if let Ok(mailbox) = mailbox_name_from_dir(file_name) {
        let dir = folder_dir_name(&mailbox).expect("an imported folder name exports");
        assert_eq!(dir, file_name, "folder {mailbox:?} exports elsewhere");
    }
    if let Ok(dir) = folder_dir_name(file_name) {
        let back = mailbox_name_from_dir(&dir).expect("an exported folder imports");
        assert_eq!(back, file_name, "directory {dir:?} imports as another name");
    }

    // Modified UTF-7: every text encodes and decodes back; a strict decode is canonical.
    let encoded = utf7::encode(file_name);
    assert_eq!(
        utf7::decode(&encoded).as_deref(),
        Ok(file_name),
        "utf7 round trip"
    );
    if let Ok(decoded) = utf7::decode(file_name) {
        assert_eq!(
            utf7::encode(&decoded),
            file_name,
            "utf7 decode is not canonical"
        );
    }

    let (subscribed, _errors) = merkmail::maildir::folder::parse_subscriptions(&input);
    if let Ok(rewritten) = merkmail::maildir::folder::format_subscriptions(&subscribed) {
        let (again, errors) = merkmail::maildir::folder::parse_subscriptions(&rewritten);
        assert!(
            errors.is_empty(),
            "our own subscriptions file has errors: {errors:?}"
        );
        assert_eq!(again, subscribed, "subscriptions do not survive a rewrite");
    }
}

/// `dovecot-uidlist`: a list that parses is well formed (UIDs ascending, base names unique and
/// usable), and reads back the same after we write it.
pub fn uidlist(data: &[u8]) {
    let Ok(list) = parse_uidlist(&text(data)) else {
        return;
    };
    assert!(list.uidvalidity != 0 && list.next_uid != 0, "{list:?}");
    let mut names = std::collections::BTreeSet::new();
    for pair in list.entries.windows(2) {
        assert!(pair[0].0 < pair[1].0, "UIDs not ascending: {list:?}");
    }
    for (uid, base) in &list.entries {
        assert!(*uid != 0 && *uid != u32::MAX, "UID {uid} out of range");
        assert!(
            !base.is_empty() && !base.contains('/') && !base.contains(':'),
            "base name {base:?}"
        );
        assert!(names.insert(base), "base name {base:?} listed twice");
    }
    assert!(list.effective_next_uid() >= list.next_uid);
    let written = format_uidlist(&list);
    let back = parse_uidlist(&written).expect("our own uidlist parses");
    assert_eq!(back, list, "uidlist does not survive a rewrite");
}
