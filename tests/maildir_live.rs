//! A live-Maildir store (`init --maildir`) driven through the command line, with no mail
//! server: the template's checks, `scan` taking in what an MDA left, local commands writing
//! into the Maildir, `verify` holding the index against the Maildir, and the bodies living in
//! the Maildir files rather than in the store's file. (Real Dovecot on both sides:
//! tests/dovecot_replica.rs.)

mod common;

use common::Store;
use std::fs;
use std::path::{Path, PathBuf};

/// A store beside an empty Maildir tree `mail/%u/Maildir` with carol's Maildir made.
fn live() -> (Store, PathBuf, String) {
    let store = Store::uninitialised();
    let users = store.tmp.path().join("mail");
    let root = users.join("carol/Maildir");
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    let template = format!("{}/%u/Maildir", users.display());
    store
        .run(&["init"], &["--node-id", "a", "--maildir", &template])
        .ok();
    (store, root, template)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_template_must_name_the_user_once_as_a_whole_component() {
    for (template, needle) in [
        ("relative/%u/Maildir", "absolute"),
        ("/srv/vmail/Maildir", "%u"),
        ("/srv/%u/%u", "%u"),
        ("/srv/vmail/x%u/Maildir", "whole path component"),
        ("/srv/%d/%u/Maildir", "only %u"),
    ] {
        let store = Store::uninitialised();
        store
            .run(&["init"], &["--node-id", "a", "--maildir", template])
            .error(&[needle]);
        assert!(
            !store.data.join("merkmail.redb").exists(),
            "{template}: nothing made"
        );
    }
}

#[test]
fn scan_takes_in_an_mdas_files_and_local_writes_reach_the_maildir() {
    let (store, root, _) = live();
    fs::write(
        root.join("new/1700000000.mda.host"),
        "Subject: one\r\n\r\nhi\r\n",
    )
    .expect("w");
    fs::write(
        root.join("cur/1700000001.mda.host:2,FS"),
        "Subject: two\r\n\r\nho\r\n",
    )
    .expect("w");
    let report = store.run(&["scan"], &["--json"]).ok().json();
    assert_eq!(report["imported"], 2, "{report}");
    assert_eq!(report["users"], 1);
    // Numbered as Dovecot would: by the time in the name.
    let uidlist = fs::read_to_string(root.join("dovecot-uidlist")).expect("uidlist");
    assert!(
        uidlist.contains("1 ") && uidlist.contains(":1700000000.mda.host"),
        "{uidlist}"
    );
    let list = store
        .run(&["list"], &["carol", "INBOX", "--json"])
        .ok()
        .json();
    let flags: Vec<&str> = list[1]["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert_eq!(flags, ["\\Flagged", "\\Seen"], "{list}");
    // A second pass finds nothing to do.
    let again = store.run(&["scan"], &["--json"]).ok().json();
    assert_eq!(
        (again["imported"].as_u64(), again["delivered"].as_u64()),
        (Some(0), Some(0))
    );

    // A local append is delivered into cur/ with its flags and the next UID.
    let msg = store.file("three.eml", b"Subject: three\r\n\r\nfrom the CLI\r\n");
    let uid = store
        .run(
            &["append"],
            &["carol", "INBOX", &msg, "--flags", "\\Answered,$Work"],
        )
        .ok()
        .stdout_str();
    assert_eq!(uid.trim(), "3");
    let cur = files_in(&root.join("cur"));
    assert!(cur.iter().any(|n| n.ends_with(":2,Ra")), "{cur:?}");
    let keywords = fs::read_to_string(root.join("dovecot-keywords")).expect("keywords");
    assert_eq!(keywords.trim(), "0 $Work");
    // A flag change is a rename, an expunge an unlink.
    store
        .run(&["flags"], &["carol", "INBOX", "1", "--add", "\\Seen"])
        .ok();
    store.run(&["expunge"], &["carol", "INBOX", "2"]).ok();
    let cur = files_in(&root.join("cur"));
    assert_eq!(cur.len() + files_in(&root.join("new")).len(), 2, "{cur:?}");
    assert!(
        cur.iter().any(|n| n.starts_with("1700000000.mda.host:2,S")),
        "{cur:?}"
    );
    assert!(!cur.iter().any(|n| n.starts_with("1700000001")), "{cur:?}");
    store.run(&["verify"], &[]).ok();
    // The fetched bytes are the file's.
    let fetched = store.run(&["fetch"], &["carol", "INBOX", "3"]).ok();
    assert_eq!(fetched.stdout, b"Subject: three\r\n\r\nfrom the CLI\r\n");
}

#[test]
fn verify_names_what_differs_between_the_index_and_the_maildir() {
    let (store, root, _) = live();
    for name in ["a", "b", "c"] {
        let msg = store.file(
            &format!("{name}.eml"),
            format!("Subject: {name}\r\n\r\n.\r\n").as_bytes(),
        );
        store.run(&["append"], &["carol", "INBOX", &msg]).ok();
    }
    let verdict = store.run(&["verify"], &[]).ok().stdout_str();
    assert!(
        verdict.contains("ok: the Maildirs show what the index holds (1 folders, 3 files)"),
        "{verdict}"
    );
    let cur = root.join("cur");
    let names = files_in(&cur);
    // One file removed behind merkmail's back, one renamed with other flags, one stranger.
    fs::remove_file(cur.join(&names[0])).expect("rm");
    let base = names[1].split(':').next().expect("base").to_string();
    fs::rename(cur.join(&names[1]), cur.join(format!("{base}:2,T"))).expect("mv");
    fs::write(
        cur.join("1700000009.stranger.host:2,"),
        "Subject: ?\r\n\r\n",
    )
    .expect("w");
    let out = store.run(&["verify"], &[]);
    assert_eq!(out.code, Some(1), "{}", out.stdout_str());
    let text = out.stdout_str();
    assert!(
        text.contains("FAILED: the Maildirs and the index differ in 3 place(s)"),
        "{text}"
    );
    assert!(text.contains("is missing"), "{text}");
    assert!(
        text.contains("flags [\"\\\\Deleted\"] on disk, [] in the index"),
        "{text}"
    );
    assert!(text.contains("a file the index does not know"), "{text}");
    // A pass takes the server's side of each (expunge, flag, new mail), and they agree again.
    let report = store.run(&["scan"], &["--json"]).ok().json();
    assert_eq!(
        (
            report["expunged_on_disk"].as_u64(),
            report["flags_from_disk"].as_u64(),
            report["imported"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{report}"
    );
    store.run(&["verify"], &[]).ok();
}

#[test]
fn the_store_file_holds_no_body_the_maildir_holds() {
    let (store, root, _) = live();
    // 200 messages of 20 KB dropped by an MDA: 4 MB of mail.
    let filler = "x".repeat(20_000);
    for i in 0..200 {
        fs::write(
            root.join(format!("new/17000{i:05}.mda.host")),
            format!("Subject: {i}\r\n\r\n{filler}\r\n"),
        )
        .expect("w");
    }
    store.run(&["scan"], &[]).ok();
    let stats = store.run(&["stats"], &["--json"]).ok().json();
    let mail = stats["bytes"].as_u64().expect("bytes");
    let file = fs::metadata(store.data.join("merkmail.redb"))
        .expect("stat")
        .len();
    assert!(mail > 4_000_000, "{stats}");
    assert!(
        file < mail / 2,
        "the store file ({file} B) holds the bodies ({mail} B of mail)"
    );
    store.run(&["verify", "--bodies"], &[]).ok();
}

#[test]
fn a_27th_keyword_keeps_the_mail_and_says_so() {
    let (store, root, _) = live();
    for i in 0..27 {
        let msg = store.file(
            &format!("{i}.eml"),
            format!("Subject: {i}\r\n\r\n.\r\n").as_bytes(),
        );
        store
            .run(
                &["append"],
                &["carol", "INBOX", &msg, "--flags", &format!("$k{i}")],
            )
            .ok();
    }
    // Every message is in the index; the Maildir holds the 26 that have a letter.
    let list = store
        .run(&["list"], &["carol", "INBOX", "--json"])
        .ok()
        .json();
    assert_eq!(list.as_array().map(Vec::len), Some(27));
    assert_eq!(files_in(&root.join("cur")).len(), 26);
    let report = store.run(&["scan"], &["--json"]).ok().json();
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("UID 27 not delivered") && problems.contains("$k26"),
        "{report}"
    );
    // verify names it too, and exits 1.
    let out = store.run(&["verify"], &[]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout_str().contains("UID 27: no file holds it"),
        "{}",
        out.stdout_str()
    );
}

/// Sets the mtimes of a folder's directories and index files to a minute ago: the folder
/// has been quiet for a while.
fn age(dir: &Path) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for name in ["cur", "new", "dovecot-uidlist", "dovecot-keywords"] {
        if let Ok(file) = fs::File::open(dir.join(name)) {
            file.set_modified(then).expect("set mtime");
        }
    }
}

#[test]
fn a_scan_reads_only_the_folders_that_changed() {
    let (store, root, _) = live();
    let folders: Vec<PathBuf> = ["INBOX", ".Lists", ".Archive"]
        .iter()
        .map(|name| {
            if *name == "INBOX" {
                root.clone()
            } else {
                root.join(name)
            }
        })
        .collect();
    for (n, dir) in folders.iter().enumerate() {
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        // A whole folder, as Dovecot makes one (a half-made one is left for a later pass).
        if *dir != root {
            fs::write(dir.join("maildirfolder"), "").expect("maildirfolder");
        }
        for i in 0..3 {
            fs::write(
                dir.join(format!("new/17000000{n}{i}.mda.host")),
                format!("Subject: {n}.{i}\r\n\r\nbody\r\n"),
            )
            .expect("w");
        }
    }
    let first = store.run(&["scan"], &["--json"]).ok().json();
    assert_eq!(
        (first["imported"].as_u64(), first["folders_read"].as_u64()),
        (Some(9), Some(3)),
        "{first}"
    );
    // Changed a moment ago: not trusted yet, so each folder is read once more and its print
    // is kept only once the change is old enough.
    folders.iter().for_each(|d| age(d));
    let kept = store.run(&["scan"], &["--json"]).ok().json();
    assert_eq!(kept["folders_read"], 3, "{kept}");
    let idle = store.run(&["scan"], &["--json"]).ok().json();
    assert_eq!(
        (idle["folders"].as_u64(), idle["folders_read"].as_u64()),
        (Some(3), Some(0)),
        "an idle scan reads no folder: {idle}"
    );

    // The server marks a message in Lists seen (new/ → cur/ with the flag): only Lists is
    // read, and the flag is taken in.
    let lists = root.join(".Lists");
    let name = files_in(&lists.join("new"))
        .into_iter()
        .next()
        .expect("a file in Lists");
    fs::rename(
        lists.join("new").join(&name),
        lists.join("cur").join(format!("{name}:2,S")),
    )
    .expect("rename");
    let one = store.run(&["scan"], &["--json"]).ok().json();
    assert_eq!(
        (
            one["folders_read"].as_u64(),
            one["flags_from_disk"].as_u64()
        ),
        (Some(1), Some(1)),
        "{one}"
    );
    // A local change owes the disk its folder: that folder alone is read.
    age(&root.join(".Lists"));
    store.run(&["scan"], &[]).ok();
    store
        .run(&["flags"], &["carol", "Archive", "1", "--add", "\\Flagged"])
        .ok();
    let archive = files_in(&root.join(".Archive/cur"));
    assert!(archive.iter().any(|n| n.ends_with(":2,F")), "{archive:?}");
    // The command brought the folder in step itself, a moment ago: the next scan reads that
    // folder (its change is too recent to trust its print) and no other.
    let after = store.run(&["scan"], &["--json"]).ok().json();
    assert_eq!(
        (
            after["folders_read"].as_u64(),
            after["flags_to_disk"].as_u64()
        ),
        (Some(1), Some(0)),
        "{after}"
    );
    store.run(&["verify"], &[]).ok();
}

/// `sync --data` on a live store: the Maildir's own new mail is taken in before the session
/// (so it travels to the peer in that session), and what the peer had is written into the
/// Maildir before the command returns; `verify` then holds, and the peer lists both.
#[test]
fn cli_sync_takes_in_the_maildir_first_and_writes_what_it_brought() {
    let (store, root, _) = live();
    fs::write(
        root.join("new/1700000000.mda.host"),
        "Subject: here\r\n\r\nleft by an MDA\r\n",
    )
    .expect("w");
    let dir = common::scratch_dir();
    let setup = common::node::Setup::http("peer-secret", "admin-secret");
    let mut b = common::node::Node::new(dir.path(), "b", common::free_port(), &[], &setup, "");
    b.init();
    b.start();
    let file = dir.path().join("there.eml");
    fs::write(&file, "Subject: there\r\n\r\nfrom b\r\n").expect("w");
    b.append("carol", "INBOX", &file);
    let report = store
        .run(
            &["sync"],
            &[
                "--peer",
                &b.url(),
                "--peer-token",
                "peer-secret",
                "--json",
                "-q",
            ],
        )
        .ok()
        .json();
    assert_eq!(report["equal_after"], true, "{report}");
    let files = files_in(&root.join("cur")).len() + files_in(&root.join("new")).len();
    assert_eq!(files, 2, "the peer's message is in the Maildir too");
    store.run(&["verify"], &[]).ok();
    let listed = b.list("carol");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    b.stop();
}
