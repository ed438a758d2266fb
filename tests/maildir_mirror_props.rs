//! Property test of the live Maildir mirror (src/maildir/backend.rs, src/store/mirror.rs), in
//! process, with no Dovecot: a store made with `Store::init_maildir` over a plain temporary
//! Maildir tree. Random changes on the index side (appends, flag changes, expunges, mailboxes
//! created, renamed and deleted through the Store API, as replicated changes arrive) are
//! interleaved with changes a mail server makes on disk (files dropped into `new/` or `cur/`,
//! flag renames of the `:2,` part, unlinks), with passes, and with the store dropped and
//! opened again at random moments (what a restart after a crash between a commit and the
//! pass's disk work looks like). After passes that settle, the Maildir equals the index:
//! every message's file exists once, at the index's UID in `dovecot-uidlist`, with its flags
//! in the name and its bytes; no file, folder or UID the index lacks; each folder's
//! UIDVALIDITY is its mailbox's; and `verify` is ok.
//!
//! The same property holds for passes driven by a real inotify watcher, as `serve` runs them
//! (src/maildir/watch.rs): a folder followed since index and disk last agreed is looked at
//! only in the files the watcher named.
//!
//! `PROPTEST_CASES=500 cargo test --test maildir_mirror_props` runs more cases.

mod common;

use merkmail::maildir::backend::{pass, pass_following, pass_watched, PassReport, Template};
use merkmail::maildir::scan;
use merkmail::maildir::watch::{News, Tracking, Watched};
use merkmail::model::{Digest, FlagName, FlagOp};
use merkmail::store::{NewMessage, Store};
use notify::Watcher;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const USER: &str = "carol";
const NAMES: [&str; 4] = ["INBOX", "Lists", "Work", "Lists/Sub"];
/// System flags only: keywords would need dovecot-keywords, which the scanner reads but this
/// test's disk-side renames do not write.
const FLAGS: [(&str, char); 4] = [
    ("\\Seen", 'S'),
    ("\\Flagged", 'F'),
    ("\\Answered", 'R'),
    ("\\Draft", 'D'),
];

#[derive(Clone, Debug)]
enum Op {
    /// A replicated-like append to a mailbox of the index.
    Append {
        mailbox: usize,
        body: u16,
        flags: u8,
    },
    /// A flag set or cleared on the `pick`-th message of the index.
    Flag {
        pick: usize,
        flag: usize,
        add: bool,
    },
    /// The `pick`-th message of the index expunged.
    Expunge {
        pick: usize,
    },
    Create {
        name: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Delete {
        name: usize,
    },
    /// A file the mail server (or an MDA) drops into a folder on disk: `new/` with no flags,
    /// or `cur/` with some.
    Drop {
        folder: usize,
        body: u16,
        flags: Option<u8>,
    },
    /// The `pick`-th file on disk renamed into `cur/` with these flags.
    DiskFlags {
        pick: usize,
        flags: u8,
    },
    /// The `pick`-th file on disk unlinked (an expunge by the server).
    Unlink {
        pick: usize,
    },
    Pass,
    /// Time passes: every folder's directories and files look changed 10 s before now, so a
    /// pass may trust their prints and leave an unchanged folder unread.
    Age,
    /// The store dropped and opened again (a restart) before the next pass.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NAMES.len(), any::<u16>(), any::<u8>())
            .prop_map(|(mailbox, body, flags)| Op::Append { mailbox, body, flags }),
        2 => (any::<usize>(), 0..FLAGS.len(), any::<bool>())
            .prop_map(|(pick, flag, add)| Op::Flag { pick, flag, add }),
        1 => any::<usize>().prop_map(|pick| Op::Expunge { pick }),
        1 => (1..NAMES.len()).prop_map(|name| Op::Create { name }),
        1 => (1..NAMES.len(), 1..NAMES.len()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (1..NAMES.len()).prop_map(|name| Op::Delete { name }),
        3 => (any::<usize>(), any::<u16>(), proptest::option::of(any::<u8>()))
            .prop_map(|(folder, body, flags)| Op::Drop { folder, body, flags }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(pick, flags)| Op::DiskFlags { pick, flags }),
        1 => any::<usize>().prop_map(|pick| Op::Unlink { pick }),
        3 => Just(Op::Pass),
        3 => Just(Op::Age),
        2 => Just(Op::Reopen),
    ]
}

fn flag_names(bits: u8) -> Vec<FlagName> {
    FLAGS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, (name, _))| FlagName::parse(name).expect("a system flag"))
        .collect()
}

/// The `:2,` suffix of a Maildir name for these flags (letters in ASCII order).
fn info(bits: u8) -> String {
    let mut letters: Vec<char> = FLAGS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, (_, c))| *c)
        .collect();
    letters.sort_unstable();
    format!(":2,{}", letters.into_iter().collect::<String>())
}

fn message(tag: &str, body: u16) -> Vec<u8> {
    format!("Subject: {tag} {body}\r\n\r\nbody {tag} {body}\r\n").into_bytes()
}

/// Every message file under the Maildir root (cur/ and new/ of every folder), sorted.
fn disk_files(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = common::files_below(root)
        .into_iter()
        .filter(|p| {
            p.parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == "cur" || d == "new")
        })
        .collect();
    out.sort();
    out
}

/// The folder directories on disk: the root and each `.Name` below it that is a folder.
fn disk_folders(root: &Path) -> Vec<PathBuf> {
    merkmail::maildir::backend::folder_dirs(root)
        .into_iter()
        .filter(|d| d == root || d.join("cur").is_dir())
        .collect()
}

struct World {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    root: PathBuf,
    template: Template,
    store: Option<Store>,
    dropped: usize,
    /// Passes driven by an inotify watcher, as `serve` runs them, when set.
    watch: Option<Watch>,
}

/// A real inotify watcher on the Maildirs' parent, gathering reports as `serve` does, and
/// the folders it has followed. A barrier file (`barrier-N` in the parent) lets a pass wait
/// until every report of what happened before it has arrived: one watcher's reports come
/// in order.
struct Watch {
    _watcher: notify::RecommendedWatcher,
    news: Arc<Mutex<News>>,
    barrier: Arc<AtomicU64>,
    sent: u64,
    tracking: Mutex<Tracking>,
    parent: PathBuf,
    /// Folders looked at only in the files the watcher named, over the whole run.
    named: AtomicU64,
    /// The next pass is the first after a restart: over every user, by the prints, as
    /// `serve`'s first pass is.
    restarted: bool,
}

impl Watch {
    fn new(template: &Template) -> Watch {
        let parent = template.parent().to_path_buf();
        std::fs::create_dir_all(&parent).expect("the Maildirs' parent");
        let news = Arc::new(Mutex::new(News::default()));
        let barrier = Arc::new(AtomicU64::new(0));
        let (n, b, t) = (Arc::clone(&news), Arc::clone(&barrier), template.clone());
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(e) = &event {
                    let mark = e.paths.iter().find_map(|p| {
                        p.file_name()?
                            .to_str()?
                            .strip_prefix("barrier-")?
                            .parse::<u64>()
                            .ok()
                    });
                    if let Some(mark) = mark {
                        b.fetch_max(mark, Ordering::SeqCst);
                        return;
                    }
                }
                n.lock().expect("news").note(&t, event);
            })
            .expect("a watcher");
        watcher
            .watch(&parent, notify::RecursiveMode::Recursive)
            .expect("watch the parent");
        Watch {
            _watcher: watcher,
            news,
            barrier,
            sent: 0,
            tracking: Mutex::new(Tracking::default()),
            parent,
            named: AtomicU64::new(0),
            restarted: false,
        }
    }

    /// Waits until the watcher has reported everything done before now.
    fn catch_up(&mut self) {
        self.sent += 1;
        let path = self.parent.join(format!("barrier-{}", self.sent));
        std::fs::write(&path, b"").expect("barrier");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.barrier.load(Ordering::SeqCst) < self.sent {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher did not report the barrier"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::fs::remove_file(&path).expect("remove the barrier");
    }
}

impl World {
    fn new() -> World {
        let tmp = common::scratch_dir();
        let data = tmp.path().join("data");
        let text = format!("{}/mail/%u/Maildir", tmp.path().display());
        let template = Template::parse(&text).expect("template");
        // The store reads a live Maildir's bodies from its files.
        merkmail::maildir::backend::install();
        let store = Store::init_maildir(&data, "n1", &text).expect("init_maildir");
        store
            .append(USER, "INBOX", vec![new_message(message("first", 0), 0)])
            .expect("first append");
        let root = template.root(USER);
        let world = World {
            _tmp: tmp,
            data,
            root,
            template,
            store: Some(store),
            dropped: 0,
            watch: None,
        };
        world.pass_all();
        world
    }

    /// A world whose passes a real inotify watcher drives, as `serve`'s do.
    fn watched() -> World {
        let mut world = World::new();
        world.watch = Some(Watch::new(&world.template));
        world
    }

    /// A pass over every user with no watcher (the CLI's `scan`, the safety net).
    fn pass_all(&self) -> PassReport {
        pass(self.store(), &self.template, None).expect("a pass")
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open")
    }

    /// A pass: with a watcher, driven by what it reported (once it has caught up), as
    /// `serve` passes over a user; without, a plain pass.
    fn pass(&mut self) -> PassReport {
        self.pass_hiding("\u{0}")
    }

    /// A pass as [`World::pass`], with the watcher's reports of files whose names contain
    /// `hide` left out, as if they had not arrived yet.
    fn pass_hiding(&mut self, hide: &str) -> PassReport {
        let Some(watch) = self.watch.as_mut() else {
            return self.pass_all();
        };
        watch.catch_up();
        let news = std::mem::take(&mut *watch.news.lock().expect("news"));
        let mut tracking = watch.tracking.lock().expect("tracking");
        if news.lost {
            tracking.clear();
        }
        let mut touched = news.users.get(USER).cloned().unwrap_or_default();
        touched.leave_out(|name| name.contains(hide));
        let store = self.store.as_ref().expect("the store is open");
        if std::mem::take(&mut watch.restarted) {
            return pass_following(store, &self.template, &mut tracking).expect("a first pass");
        }
        let report = pass_watched(
            store,
            &self.template,
            USER,
            Watched {
                tracking: &mut tracking,
                touched,
                trust: true,
            },
        )
        .expect("a watched pass");
        watch
            .named
            .fetch_add(report.folders_named, Ordering::SeqCst);
        report
    }

    /// An MDA's drop (body 0, no flags) into the folder whose directory ends with `suffix`.
    fn drop_into(&mut self, suffix: &str) {
        let folders = disk_folders(&self.root);
        let folder = folders
            .iter()
            .position(|d| d.ends_with(suffix))
            .unwrap_or_else(|| panic!("no folder {suffix} on disk: {folders:?}"));
        self.apply(&Op::Drop {
            folder,
            body: 0,
            flags: None,
        });
    }

    /// The index's messages, in a stable order: (mailbox, uid).
    fn indexed(&self) -> Vec<(String, u32)> {
        match self.store().list_messages(USER, None) {
            Ok(all) => all.into_iter().map(|m| (m.mailbox, m.uid)).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn apply(&mut self, op: &Op) {
        // Index-side changes may name what is not there (a mailbox deleted, a name taken):
        // then the store refuses with a client error, which is fine; any other error is not.
        let ok = |r: Result<(), merkmail::store::StoreError>| {
            if let Err(e) = r {
                assert!(e.is_client_error(), "{op:?}: {e}");
            }
        };
        match op {
            Op::Append {
                mailbox,
                body,
                flags,
            } => ok(self
                .store()
                .append(
                    USER,
                    NAMES[*mailbox],
                    vec![NewMessage {
                        flags: flag_names(*flags),
                        ..new_message(message("idx", *body), *body)
                    }],
                )
                .map(drop)),
            Op::Flag { pick, flag, add } => {
                let all = self.indexed();
                if let Some((mailbox, uid)) = all.get(pick % all.len().max(1)) {
                    let op = if *add { FlagOp::Add } else { FlagOp::Remove };
                    ok(self
                        .store()
                        .set_flags(USER, mailbox, *uid, op, &flag_names(1 << flag))
                        .map(drop));
                }
            }
            Op::Expunge { pick } => {
                let all = self.indexed();
                if let Some((mailbox, uid)) = all.get(pick % all.len().max(1)) {
                    ok(self.store().expunge(USER, mailbox, &[*uid]).map(drop));
                }
            }
            Op::Create { name } => ok(self.store().create_mailbox(USER, NAMES[*name]).map(drop)),
            Op::Rename { from, to } => {
                ok(self.store().rename_mailbox(USER, NAMES[*from], NAMES[*to]))
            }
            Op::Delete { name } => ok(self.store().delete_mailbox(USER, NAMES[*name])),
            Op::Drop {
                folder,
                body,
                flags,
            } => {
                let folders = disk_folders(&self.root);
                let dir = &folders[folder % folders.len()];
                self.dropped += 1;
                let base = format!("{}.M{body}P{}.prop", 1_700_000_000, self.dropped);
                let tmp = dir.join("tmp").join(&base);
                std::fs::write(&tmp, message("disk", *body)).expect("write into tmp/");
                let to = match flags {
                    None => dir.join("new").join(&base),
                    Some(bits) => dir.join("cur").join(format!("{base}{}", info(*bits))),
                };
                std::fs::rename(&tmp, to).expect("rename into the folder");
            }
            Op::DiskFlags { pick, flags } => {
                let files = disk_files(&self.root);
                if let Some(path) = files.get(pick % files.len().max(1)) {
                    let name = path.file_name().expect("a name").to_string_lossy();
                    let base = name.split(':').next().unwrap_or_default().to_string();
                    let cur = path
                        .parent()
                        .and_then(Path::parent)
                        .expect("a folder")
                        .join("cur");
                    std::fs::rename(path, cur.join(format!("{base}{}", info(*flags))))
                        .expect("rename the flags");
                }
            }
            Op::Unlink { pick } => {
                let files = disk_files(&self.root);
                if let Some(path) = files.get(pick % files.len().max(1)) {
                    std::fs::remove_file(path).expect("unlink");
                }
            }
            Op::Pass => {
                self.pass();
            }
            Op::Age => age(&self.root),
            Op::Reopen => {
                drop(self.store.take());
                self.store = Some(Store::open(&self.data).expect("reopen"));
                // A restart follows no folder: its watcher starts anew.
                if let Some(watch) = &mut self.watch {
                    watch.tracking.lock().expect("tracking").clear();
                    watch.restarted = true;
                }
            }
        }
    }

    /// Passes until one changes nothing and nothing is owed (bounded: a renumbered message is
    /// delivered on the pass after the one that moved it).
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..8 {
            let report = self.pass();
            let owed = self.store().owed_mailboxes().expect("owed");
            if !report.changed() && owed.is_empty() {
                prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
                return Ok(());
            }
        }
        Err(TestCaseError::fail(format!(
            "passes did not settle: still owed {:?}",
            self.store().owed_mailboxes()
        )))
    }

    /// The Maildir equals the index.
    fn check(&self) -> Result<(), TestCaseError> {
        let store = self.store();
        let mailboxes: BTreeMap<String, u32> = store
            .list_mailboxes(USER)
            .expect("mailboxes")
            .into_iter()
            .map(|m| (m.name, m.uidvalidity))
            .collect();
        let folders = scan(&self.root).expect("scan");
        let on_disk: BTreeSet<String> = folders.iter().map(|f| f.mailbox.clone()).collect();
        prop_assert_eq!(
            &on_disk,
            &mailboxes.keys().cloned().collect::<BTreeSet<_>>(),
            "folders on disk and mailboxes in the index"
        );
        for folder in &folders {
            prop_assert!(
                folder.skipped.is_empty(),
                "{}: skipped {:?}",
                folder.mailbox,
                folder.skipped
            );
            let list = folder.uidlist.as_ref();
            prop_assert_eq!(
                list.map(|l| l.uidvalidity),
                mailboxes.get(&folder.mailbox).copied(),
                "UIDVALIDITY of {}",
                folder.mailbox
            );
            let uids: Vec<u32> =
                list.map_or(Vec::new(), |l| l.entries.iter().map(|(u, _)| *u).collect());
            prop_assert!(
                uids.windows(2).all(|w| w[0] < w[1]),
                "{}: uidlist not ascending: {:?}",
                folder.mailbox,
                uids
            );
            let mut disk: BTreeMap<u32, (Digest, Vec<String>)> = BTreeMap::new();
            for m in &folder.messages {
                let uid = m.uid.ok_or_else(|| {
                    TestCaseError::fail(format!("{}: a file with no UID", m.path.display()))
                })?;
                let bytes = std::fs::read(&m.path).expect("read a message file");
                let mut flags = m.flags.clone();
                flags.sort();
                let had = disk.insert(uid, (Digest::of(&bytes), flags));
                prop_assert!(
                    had.is_none(),
                    "{}: two files at UID {}",
                    folder.mailbox,
                    uid
                );
            }
            let index: BTreeMap<u32, (Digest, Vec<String>)> = store
                .list_messages(USER, Some(&folder.mailbox))
                .expect("list")
                .into_iter()
                .map(|m| {
                    let flags = merkmail::maildir::backend::flags_of(&m.record);
                    (m.uid, (m.record.digest, flags))
                })
                .collect();
            prop_assert_eq!(&disk, &index, "{}: disk and index", folder.mailbox);
        }
        let report = store.verify().expect("verify");
        prop_assert!(report.is_ok(), "verify: {:?}", report.problems);
        Ok(())
    }
}

/// Sets the mtime of every folder's cur/, new/, uidlist and keywords file to 10 s before
/// now: what they look like once the last change is no longer recent.
fn age(root: &Path) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
    for dir in disk_folders(root) {
        for name in ["cur", "new", "dovecot-uidlist", "dovecot-keywords"] {
            if let Ok(file) = std::fs::File::open(dir.join(name)) {
                file.set_modified(then).expect("set mtime");
            }
        }
    }
}

fn new_message(bytes: Vec<u8>, n: u16) -> NewMessage {
    NewMessage {
        bytes,
        internal_date: 1_700_000_000 + i64::from(n),
        ..NewMessage::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn after_random_changes_restarts_and_passes_the_maildir_equals_the_index(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
        }
        world.settle()?;
        world.check()?;
        // A restart changes nothing once settled.
        world.apply(&Op::Reopen);
        let report = world.pass();
        prop_assert!(!report.changed(), "a pass after a restart changed {:?}", report);
        world.check()?;
        // Once nothing changed for a while, a pass reads no folder: the first one after the
        // quiet keeps the prints, the next leaves every folder unread.
        world.apply(&Op::Age);
        world.pass();
        let idle = world.pass();
        prop_assert!(!idle.changed(), "an idle pass changed {:?}", idle);
        prop_assert_eq!(idle.folders_read, 0, "an idle pass read folders: {:?}", idle);
        prop_assert!(idle.folders > 0);
        world.check()?;
    }

    #[test]
    fn with_a_watcher_after_random_changes_and_passes_the_maildir_equals_the_index(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let mut world = World::watched();
        for op in &ops {
            world.apply(op);
        }
        world.settle()?;
        world.check()?;
        // Settled, every folder is followed: a pass with nothing reported looks at none.
        let idle = world.pass();
        prop_assert!(!idle.changed(), "an idle pass changed {:?}", idle);
        prop_assert_eq!(
            idle.folders_read + idle.folders_named,
            0,
            "an idle watched pass looked at folders: {:?}",
            idle
        );
        world.check()?;
    }
}

/// With a watcher, a followed folder is looked at only in the files it named: a file
/// dropped by an MDA, a flag renamed by the server and a flag changed in the index each
/// cost a look at one folder and no full read, and our own renames come back as names that
/// change nothing.
#[test]
fn a_watched_pass_looks_only_at_the_files_the_watcher_named() {
    let mut world = World::watched();
    world.settle().expect("settles");
    let first = world.pass();
    assert_eq!(first.folders_read + first.folders_named, 0, "{first:?}");

    world.apply(&Op::Drop {
        folder: 0,
        body: 7,
        flags: None,
    });
    let r = world.pass();
    assert_eq!(
        (r.imported, r.folders_named, r.folders_read),
        (1, 1, 0),
        "{r:?}"
    );
    world.settle().expect("settles");

    let files = disk_files(&world.root);
    let dropped = files
        .iter()
        .position(|p| p.to_string_lossy().contains(".prop"))
        .expect("the dropped file");
    world.apply(&Op::DiskFlags {
        pick: dropped,
        flags: 0b10,
    });
    let r = world.pass();
    assert_eq!(
        (r.flags_from_disk, r.folders_named, r.folders_read),
        (1, 1, 0),
        "{r:?}"
    );
    world.settle().expect("settles");

    world.apply(&Op::Flag {
        pick: 0,
        flag: 0,
        add: true,
    });
    let r = world.pass();
    assert_eq!(
        (r.flags_to_disk, r.folders_named, r.folders_read),
        (1, 1, 0),
        "{r:?}"
    );
    let echo = world.pass();
    assert!(
        !echo.changed(),
        "our own rename changed something: {echo:?}"
    );
    assert_eq!(echo.folders_read, 0, "{echo:?}");
    let idle = world.pass();
    assert_eq!(idle.folders_read + idle.folders_named, 0, "{idle:?}");
    world.check().expect("the Maildir equals the index");
    let named = world
        .watch
        .as_ref()
        .map_or(0, |w| w.named.load(Ordering::SeqCst));
    assert!(named >= 3, "{named}");
}

/// A followed folder's file unlinked by the server: the watcher's report of the unlink is
/// proof enough, and the expunge costs no listing of the folder. A file renamed away whose
/// new name has not been reported yet is not taken for an expunge: the folder is listed,
/// the file found, and the next pass takes its new name.
#[test]
fn an_unlink_the_watcher_saw_is_an_expunge_without_a_listing() {
    let mut world = World::watched();
    for body in [21, 22] {
        world.apply(&Op::Drop {
            folder: 0,
            body,
            flags: None,
        });
    }
    world.settle().expect("settles");
    let before = world.indexed().len();
    assert_eq!(before, 3);
    world.apply(&Op::Unlink { pick: 0 });
    let r = world.pass();
    assert_eq!(
        (
            r.expunged_on_disk,
            r.expunges_seen_unlinked,
            r.folders_listed_for_expunges,
            r.folders_read
        ),
        (1, 1, 0, 0),
        "{r:?}"
    );
    assert_eq!(world.indexed().len(), before - 1);
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");

    // Renamed (a flag set by the server), the report of the new name held back.
    let files = disk_files(&world.root);
    let victim = files[0].clone();
    let file = victim.file_name().and_then(|n| n.to_str()).expect("a name");
    let base = file.split(':').next().expect("a base").to_string();
    let renamed = victim
        .parent()
        .and_then(Path::parent)
        .expect("a folder")
        .join("cur")
        .join(format!("{base}:2,DF"));
    std::fs::rename(&victim, &renamed).expect("rename");
    let r = world.pass_hiding(":2,DF");
    assert_eq!(
        (r.expunged_on_disk, r.folders_listed_for_expunges),
        (0, 1),
        "a rename taken for an expunge: {r:?}"
    );
    // The held-back report is gone with that pass; a later one names the file again.
    let renamed = PathBuf::from(format!("{}S", renamed.display()));
    std::fs::rename(renamed.with_file_name(format!("{base}:2,DF")), &renamed)
        .expect("rename again");
    let r = world.pass();
    assert_eq!((r.flags_from_disk, r.expunged_on_disk), (1, 0), "{r:?}");
    assert_eq!(world.indexed().len(), before - 1);
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");

    // A second name of the file (a hard link, as Dovecot unlinks when it finds one): the
    // index follows the new name; the old one unlinked proves nothing, and no mail is lost.
    let linked = renamed.with_file_name(format!("{base}:2,F"));
    std::fs::hard_link(&renamed, &linked).expect("link");
    world.pass();
    std::fs::remove_file(&renamed).expect("unlink the first name");
    let r = world.pass();
    assert_eq!(
        (r.expunged_on_disk, r.folders_listed_for_expunges),
        (0, 1),
        "a second name's unlink taken for an expunge: {r:?}"
    );
    assert_eq!(world.indexed().len(), before - 1);
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");
}

/// A watched world that agrees with its disk, then two files (bodies 11 and 12) dropped
/// into its first folder, M11 first; and how many messages the index held before.
fn two_files_dropped() -> (World, usize) {
    let mut world = World::watched();
    world.settle().expect("settles");
    let before = world.indexed().len();
    for body in [11, 12] {
        world.apply(&Op::Drop {
            folder: 0,
            body,
            flags: None,
        });
    }
    (world, before)
}

/// Two files dropped into a followed folder, the watcher's report of the first not arrived
/// yet when a pass runs: the pass numbers both (as Dovecot numbers every file it finds), and
/// takes both, so the index takes their UIDs in order. Taking only the named one would give
/// a replica the later UID first, and the earlier one, arriving after, would have to move up
/// there (RFC 9051: no new message below a UIDNEXT clients may have seen).
#[test]
fn a_watched_pass_takes_every_file_numbered_past_the_index_named_or_not() {
    let (mut world, before) = two_files_dropped();
    // The server numbers both (a client looked), M11 (dropped first) at the lower UID.
    let dir = disk_folders(&world.root)[0].clone();
    let live = merkmail::maildir::live::LiveFolder::open(&dir).expect("open");
    let numbered = live
        .lock()
        .expect("lock")
        .number_unlisted()
        .expect("number")
        .numbered;
    assert_eq!(numbered.len(), 2);
    // The watcher has named only M12 so far: both are taken, in UID order.
    let r = world.pass_hiding(".M11P");
    assert_eq!(
        (r.imported, r.folders_named, r.folders_read),
        (2, 1, 0),
        "{r:?}"
    );
    assert_eq!(world.indexed().len(), before + 2);
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");
}

/// Files no one has numbered yet: a watched pass numbers only the ones the watcher named (it
/// does not list the folder, which at 10 000 files costs more than the rest of the pass); a
/// file not named yet is numbered when it is, above every UID the index took meanwhile. No
/// UID is taken below the index's UIDNEXT either way.
#[test]
fn a_watched_pass_numbers_only_the_files_named() {
    let (mut world, before) = two_files_dropped();
    let r = world.pass_hiding(".M11P");
    assert_eq!(
        (r.imported, r.folders_named, r.folders_read),
        (1, 1, 0),
        "{r:?}"
    );
    let first: BTreeSet<(String, u32)> = world.indexed().into_iter().collect();
    assert_eq!(first.len(), before + 1);
    let top = first.iter().map(|(_, uid)| *uid).max().unwrap_or(0);
    // M11's report arrives now (`pass_hiding` dropped the first): it is moved into cur/, as a
    // server's first look at it does.
    let dir = disk_folders(&world.root)[0].clone();
    let m11 = std::fs::read_dir(dir.join("new"))
        .expect("new/")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.contains(".M11P"))
        .expect("M11 in new/");
    std::fs::rename(
        dir.join("new").join(&m11),
        dir.join("cur").join(format!("{m11}:2,")),
    )
    .expect("rename");
    let r = world.pass();
    assert_eq!((r.imported, r.folders_read), (1, 0), "{r:?}");
    let later: Vec<u32> = world
        .indexed()
        .into_iter()
        .filter(|m| !first.contains(m))
        .map(|(_, uid)| uid)
        .collect();
    assert_eq!(later.len(), 1);
    assert!(later[0] > top, "M11 at {later:?}, below the index's {top}");
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");
}

/// A batch of deliveries cut short after its files were renamed into cur/ but before their
/// uidlist lines were written (a crash): the next pass numbers the files as Dovecot would,
/// which can put one at another UID than the index's when the index's UIDs have a gap. The
/// file is still ours, found by its digest: adopted and re-delivered at the index's UID,
/// never imported as a second message.
#[test]
fn a_batch_cut_short_before_its_uidlist_lines_is_adopted_not_imported_twice() {
    let mut world = World::new();
    let store = world.store();
    let bodies: Vec<Vec<u8>> = ["a", "b", "c"].iter().map(|t| message(t, 1)).collect();
    let outcomes = store
        .append(
            USER,
            "INBOX",
            bodies
                .iter()
                .enumerate()
                .map(|(n, b)| new_message(b.clone(), n as u16))
                .collect(),
        )
        .expect("append");
    let uids: Vec<u32> = outcomes.iter().map(|o| o.uid).collect();
    assert_eq!(uids, [2, 3, 4]);
    // "b" is expunged before any delivery: the index waits to deliver UIDs 2 and 4.
    store.expunge(USER, "INBOX", &[3]).expect("expunge");
    // What the crash left: "a" and "c" in cur/ under names we give, with no uidlist line.
    for (n, body) in [(1, &bodies[0]), (3, &bodies[2])] {
        let name = format!("1700000100.M{n}P4242Q{n}.testhost,S={}:2,", body.len());
        std::fs::write(world.root.join("cur").join(name), body).expect("write");
    }
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");
    let live: Vec<(String, u32)> = world.indexed();
    assert_eq!(
        live,
        [
            ("INBOX".to_string(), 1),
            ("INBOX".to_string(), 2),
            ("INBOX".to_string(), 4)
        ],
        "each message once, at the index's UIDs"
    );
}

/// Two servers that both held mail in INBOX before they were replicated, under their own
/// UIDVALIDITYs: the side with more messages wins, and the other side's folder is rebuilt
/// under the winner's UIDVALIDITY, every message once on both, at the same UIDs.
#[test]
fn a_folder_whose_uidvalidity_lost_is_rebuilt_under_the_winners() {
    use merkmail::sync::responder::answer;
    use merkmail::sync::wire::{decode_request, encode};
    merkmail::maildir::backend::install();
    let tmp = common::scratch_dir();
    let make = |side: &str, uidvalidity: u32, subjects: &[&str]| {
        let text = format!("{}/{side}/%u/Maildir", tmp.path().display());
        let template = Template::parse(&text).expect("template");
        let root = template.root(USER);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        let mut uidlist = format!(
            "3 V{uidvalidity} N{} G{:032x}\n",
            subjects.len() + 1,
            uidvalidity
        );
        for (i, subject) in subjects.iter().enumerate() {
            let base = format!("17000000{i:02}.{side}{i}.host");
            let body = message(subject, i as u16);
            std::fs::write(root.join("cur").join(format!("{base}:2,S")), body).expect("w");
            uidlist.push_str(&format!("{} :{base}\n", i + 1));
        }
        std::fs::write(root.join("dovecot-uidlist"), uidlist).expect("uidlist");
        let data = tmp.path().join(format!("{side}-data"));
        let store = Store::init_maildir(&data, side, &text).expect("init");
        pass(&store, &template, None).expect("first pass");
        (store, template, root)
    };
    let (a, ta, ra) = make("a", 100, &["a1", "a2", "a3"]);
    let (b, tb, rb) = make("b", 200, &["b1"]);
    let mut rebuilt = 0;
    for _ in 0..4 {
        merkmail::sync::run(&a, 4, false, |bytes| {
            let round = decode_request(&bytes).map_err(|e| e.to_string())?;
            answer(&b, &round)
                .map(|reply| encode(&reply))
                .map_err(|e| e.to_string())
        })
        .expect("a session");
        for (store, template) in [(&a, &ta), (&b, &tb)] {
            rebuilt += pass(store, template, None).expect("pass").folders_rebuilt;
        }
    }
    assert_eq!(rebuilt, 1, "B's INBOX rebuilt once");
    let mut views = Vec::new();
    for (store, template, root) in [(&a, &ta, &ra), (&b, &tb, &rb)] {
        let text = std::fs::read_to_string(root.join("dovecot-uidlist")).expect("uidlist");
        let list = merkmail::maildir::parse_uidlist(&text).expect("parses");
        assert_eq!(
            list.uidvalidity, 100,
            "the side with more messages wins: {text}"
        );
        let folders = scan(root).expect("scan");
        let on_disk: BTreeMap<u32, Digest> = folders[0]
            .messages
            .iter()
            .map(|m| {
                let bytes = std::fs::read(&m.path).expect("read");
                (m.uid.expect("listed"), Digest::of(&bytes))
            })
            .collect();
        let index: BTreeMap<u32, Digest> = store
            .list_messages(USER, Some("INBOX"))
            .expect("list")
            .into_iter()
            .map(|m| (m.uid, m.record.digest))
            .collect();
        assert_eq!(on_disk, index, "the Maildir is the index");
        assert_eq!(index.len(), 4, "every message once: {index:?}");
        let disk = merkmail::maildir::backend::verify(store, template).expect("verify");
        assert!(disk.mismatches.is_empty(), "{:?}", disk.mismatches);
        views.push(index);
    }
    assert_eq!(views[0], views[1], "the same UIDs on both sides");
}

/// An INBOX with no mail says nothing: Dovecot makes one at a user's first login (with a
/// uidlist of its own UIDVALIDITY and GUID), and a pass makes one with the Maildir of a user
/// arriving from a peer, whose INBOX may reach the index a transaction after their other
/// mailboxes (an initial copy applies a user in several). Taken as a mailbox of this side's
/// own, it would clash with the peer's INBOX by name and be merged with it, renumbering the
/// peer's mail. It is left alone, and pairs with the index's INBOX when that comes.
#[test]
fn an_empty_inbox_on_disk_waits_for_the_index_inbox() {
    let tmp = common::scratch_dir();
    let text = format!("{}/mail/%u/Maildir", tmp.path().display());
    let template = Template::parse(&text).expect("template");
    merkmail::maildir::backend::install();
    let store = Store::init_maildir(&tmp.path().join("data"), "n1", &text).expect("init");
    let root = template.root("erin");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).expect("an empty Maildir");
    }
    std::fs::write(
        root.join("dovecot-uidlist"),
        "3 V1234 N1 G0123456789abcdef0123456789abcdef\n",
    )
    .expect("the login's uidlist");
    let head = store.journal_head().expect("journal");
    for _ in 0..2 {
        let r = pass(&store, &template, None).expect("a pass");
        assert_eq!(r.folders_found, 0, "{r:?}");
    }
    assert!(
        store.list_mailboxes("erin").map_or(true, |m| m.is_empty()),
        "an empty INBOX became a mailbox"
    );
    assert_eq!(
        store.journal_head().expect("journal"),
        head,
        "a pass journaled a write"
    );

    store
        .append("erin", "INBOX", vec![new_message(message("peer", 1), 1)])
        .expect("the index's INBOX");
    let r = pass(&store, &template, None).expect("a pass");
    assert_eq!((r.delivered, r.folders_found), (1, 0), "{r:?}");
    let inbox = store
        .list_mailboxes("erin")
        .expect("mailboxes")
        .into_iter()
        .find(|m| m.name == "INBOX")
        .expect("INBOX");
    let folder = scan::scan_folder("INBOX".into(), root, false).expect("scan INBOX");
    let list = folder.uidlist.expect("a uidlist");
    assert_eq!(
        (list.uidvalidity, list.guid.clone()),
        (inbox.uidvalidity, Some(inbox.guid.to_hex())),
        "the INBOX folder took the index's identity"
    );
    assert_eq!(folder.messages.len(), 1);
}

/// Found racing IMAP APPENDs in tests/dovecot_crash.rs: a file the server numbered at a UID
/// the index had meanwhile given to replicated mail is imported at a new UID, and a pass then
/// re-delivers a copy there and removes the server's file. While the pass works on the disk,
/// another thread of the daemon (a journal apply, a Merkle session's clash rules) may move
/// that message again. The pass used to record the copy at the UID it was made for whatever
/// the index then held, leaving a file row at a UID with no message: the copy stayed on disk,
/// listed at that UID, the message was delivered once more at its new UID, and the mail server
/// showed it twice. The copy must be owed a removal instead, like any delivery the index moved
/// meanwhile.
#[test]
fn a_redelivered_copy_whose_message_moved_during_the_pass_is_removed_not_kept() {
    use merkmail::maildir::fault::{with_hook, PassPoint};
    use std::cell::Cell;
    use std::io::Write;
    use std::rc::Rc;

    let mut world = World::new();
    // The server's mail, numbered by the server at UID 2 (a file in cur/ and its uidlist line).
    let server_mail = message("server", 9);
    let base = "1700000300.M1P77.imap";
    std::fs::write(
        world.root.join("cur").join(format!("{base}:2,")),
        &server_mail,
    )
    .expect("write");
    std::fs::OpenOptions::new()
        .append(true)
        .open(world.root.join("dovecot-uidlist"))
        .and_then(|mut f| f.write_all(format!("2 :{base}\n").as_bytes()))
        .expect("list it at UID 2");
    // The index took it at UID 4, as an import does when UID 2 went to other mail meanwhile:
    // its file row names the file the server lists at 2.
    world
        .store()
        .append(
            USER,
            "INBOX",
            vec![NewMessage {
                uid: Some(4),
                exact_uid: true,
                source: Some(base.to_string()),
                ..new_message(server_mail.clone(), 9)
            }],
        )
        .expect("import at 4");

    let guid = world
        .store()
        .list_mailboxes(USER)
        .expect("mailboxes")
        .into_iter()
        .find(|m| m.name == "INBOX")
        .expect("INBOX")
        .guid;
    let store = Rc::new(world.store.take().expect("open"));
    let moved_to = Rc::new(Cell::new(None));
    let report = {
        let (store_in_hook, moved) = (Rc::clone(&store), Rc::clone(&moved_to));
        let digest = Digest::of(&server_mail);
        with_hook(
            move |point| {
                if point != PassPoint::Placed || moved.get().is_some() {
                    return;
                }
                // The disk work is done and the pass has not settled it: a peer's write moves
                // the server's message up, as a clash rule would.
                let at = store_in_hook
                    .list_messages(USER, Some("INBOX"))
                    .expect("list")
                    .into_iter()
                    .find(|m| m.record.digest == digest)
                    .expect("the server's mail is indexed")
                    .uid;
                let to = store_in_hook
                    .renumber_message(USER, guid, at, 0)
                    .expect("move");
                moved.set(Some((at, to)));
            },
            || pass(&store, &world.template, None).expect("the pass"),
        )
    };
    world.store = Some(
        Rc::try_unwrap(store)
            .ok()
            .expect("the hook let go of the store"),
    );
    assert_eq!(
        moved_to.get(),
        Some((4, Some(5))),
        "the server's mail was re-delivered at 4 and moved to 5 before the pass settled: {report:?}"
    );
    assert_eq!(report.delivered, 1, "the copy at 4: {report:?}");
    world.settle().expect("settles");
    world
        .check()
        .expect("the Maildir equals the index: the copy at 4 is gone");
    assert_eq!(
        world.indexed(),
        [("INBOX".to_string(), 1), ("INBOX".to_string(), 5)]
    );
    let disk = merkmail::maildir::backend::verify(world.store(), &world.template).expect("verify");
    assert!(disk.mismatches.is_empty(), "{:?}", disk.mismatches);
}

/// Found in tests/dovecot_crash.rs under load: Dovecot makes a folder as `cur/`, `new/`,
/// `tmp/`, then `maildirfolder`. A pass that came in between (woken by the first `mkdir`) made
/// the missing directories itself, Dovecot's own `mkdir` then failed, and its IMAP client's
/// CREATE answered "Mailbox already exists". A folder the index has never seen that is not
/// whole yet and changed in the last 2 s is left alone until it is whole.
#[test]
fn a_folder_the_server_is_making_is_left_alone_until_it_is_whole() {
    let mut world = World::new();
    let dir = world.root.join(".Lists");
    std::fs::create_dir_all(dir.join("cur")).expect("mkdir");
    let report = world.pass();
    assert_eq!(report.folders_being_made, 1, "{report:?}");
    for made in ["new", "tmp", "dovecot-uidlist"] {
        assert!(!dir.join(made).exists(), "the pass made {made}");
    }
    let names = |world: &World| -> Vec<String> {
        let mailboxes = world.store().list_mailboxes(USER).expect("mailboxes");
        let mut names: Vec<String> = mailboxes.into_iter().map(|m| m.name).collect();
        names.sort();
        names
    };
    assert_eq!(names(&world), ["INBOX"]);
    for sub in ["new", "tmp"] {
        std::fs::create_dir(dir.join(sub)).expect("mkdir");
    }
    std::fs::write(dir.join("maildirfolder"), "").expect("maildirfolder");
    world.settle().expect("settles");
    assert_eq!(names(&world), ["INBOX", "Lists"]);
    world.check().expect("the Maildir equals the index");
}

/// A pass reads a mailbox's owed mark, a peer's change is applied (no local stamp issued,
/// the clock standing still), then the pass settles from what it read: the change's mark
/// stays, so the next pass brings it to the disk.
#[test]
fn a_settle_from_an_older_read_leaves_the_mark_of_an_applied_change() {
    merkmail::maildir::backend::install();
    let dir = tempfile::tempdir().expect("dir");
    let template = format!("{}/%u/Maildir", dir.path().display());
    let mut store = Store::init_maildir(&dir.path().join("data"), "a", &template).expect("init");
    store.simulate_environment(Arc::new(AtomicU64::new(1_800_000_000_000)), 1);
    store
        .append(
            "u",
            "INBOX",
            vec![NewMessage {
                bytes: b"Subject: one\r\n\r\nhere\r\n".to_vec(),
                ..NewMessage::default()
            }],
        )
        .expect("append");
    let mut inbox = store.mailbox("u", "INBOX").expect("inbox");
    let guid = inbox.guid;
    let read = store.mailbox_mirror("u", guid).expect("mirror");
    assert!(read.owed.is_some());

    // A peer's message, stamped before this node's clock: applying it issues no stamp.
    let bytes = b"Subject: two\r\n\r\nfrom the peer\r\n".to_vec();
    let stamp = merkmail::model::Stamp {
        ms: 1_800_000_000_000 - 1_000,
        counter: 0,
        node: 7,
    };
    let record = merkmail::model::MessageRecord {
        md5: merkmail::model::Md5::of(&bytes),
        digest: Digest::of(&bytes),
        size: bytes.len() as u64,
        internal_date: 0,
        flags: merkmail::model::FlagSet::initial(&[], stamp),
        appended: stamp,
    };
    store
        .apply(&[
            merkmail::model::Change::Mailbox {
                user: "u".into(),
                record: {
                    inbox.uidnext = 3;
                    inbox
                },
            },
            merkmail::model::Change::Message {
                user: "u".into(),
                guid,
                uid: 2,
                record,
                body: Some(bytes),
            },
        ])
        .expect("apply");

    store
        .mirror_settle("u", guid, &[], read.owed)
        .expect("settle");
    assert_eq!(
        store.owed_mailboxes().expect("owed"),
        vec![("u".to_string(), guid)],
        "the applied change is still owed to the disk"
    );
    let again = store.mailbox_mirror("u", guid).expect("mirror");
    store
        .mirror_settle("u", guid, &[], again.owed)
        .expect("settle");
    assert!(store.owed_mailboxes().expect("owed").is_empty());
}

/// A mailbox renamed in the index while a file is dropped into its folder: the pass that
/// renames the folder read it before the file came, and must read it again where it now is,
/// or the file stays unimported behind a print that shows no change (found by the property
/// tests above: the index lacked the message, the disk held it at UID 1).
#[test]
fn a_file_dropped_into_a_folder_before_its_rename_is_imported() {
    let mut world = World::new();
    world.apply(&Op::Create { name: 3 });
    world.pass();
    world.apply(&Op::Rename { from: 3, to: 2 });
    world.drop_into(".Lists.Sub");
    let r = world.pass();
    assert_eq!((r.imported, r.folders_renamed), (1, 1), "{r:?}");
    assert!(world.indexed().contains(&("Work".to_string(), 1)));
    world.apply(&Op::Age);
    world.apply(&Op::Rename { from: 2, to: 3 });
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");
}

/// A mailbox deleted in the index while mail lands in its folder, and another renamed onto
/// its name: the folder is kept for that mail, moved aside to `Lists-<hex>` so the rename
/// can happen, and imported as a mailbox of its own; nothing is lost and the passes settle
/// (found by the property tests: the rename failed on every pass).
#[test]
fn a_kept_folder_makes_way_for_a_rename_onto_its_name() {
    let mut world = World::new();
    world.apply(&Op::Create { name: 2 });
    world.apply(&Op::Create { name: 1 });
    world.pass();
    world.apply(&Op::Delete { name: 1 });
    world.apply(&Op::Rename { from: 2, to: 1 });
    world.drop_into(".Lists");
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");
    let names: Vec<String> = world
        .store()
        .list_mailboxes(USER)
        .expect("mailboxes")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(names.contains(&"Lists".to_string()), "{names:?}");
    let aside = names
        .iter()
        .find(|n| n.starts_with("Lists-"))
        .expect("the kept folder, moved aside");
    assert!(
        world.indexed().contains(&(aside.clone(), 1)),
        "the dropped mail is in {aside}: {:?}",
        world.indexed()
    );
}

/// A chain of renames between passes: Lists → Work (its child Lists/Sub → Work/Sub), then
/// Work → Lists/Sub (the child → Lists/Sub/Sub). The parent's folder must wait until the
/// child's folder has left the name `.Lists.Sub`; the passes settle (found by the property
/// tests at 5 000 cases: the rename failed on every pass).
#[test]
fn a_rename_onto_a_folder_renamed_away_in_the_same_pass_waits_for_it() {
    let mut world = World::new();
    world.apply(&Op::Create { name: 3 });
    world.apply(&Op::Create { name: 1 });
    world.pass();
    world.apply(&Op::Rename { from: 1, to: 2 });
    world.apply(&Op::Rename { from: 2, to: 3 });
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");
}

/// A folder kept for mail that landed in it as its mailbox was deleted, found again by a
/// later pass after another mailbox was renamed onto its name: it is moved aside and taken
/// as a mailbox of its own, not merged into the renamed one by name (found by the property
/// tests at 5 000 cases: the pass failed on a folder it had renamed away).
#[test]
fn a_kept_folder_found_after_a_rename_onto_its_name_is_moved_aside() {
    let mut world = World::new();
    world.apply(&Op::Create { name: 1 });
    world.pass();
    world.apply(&Op::Delete { name: 1 });
    world.drop_into(".Lists");
    world.apply(&Op::Create { name: 2 });
    world.pass();
    world.apply(&Op::Rename { from: 2, to: 1 });
    world.settle().expect("settles");
    world.check().expect("the Maildir equals the index");
    assert_eq!(
        world
            .indexed()
            .iter()
            .filter(|(m, _)| m.starts_with("Lists-"))
            .count(),
        1,
        "the dropped mail, moved aside: {:?}",
        world.indexed()
    );
}

/// Settles what `read` (a mirror of u's INBOX) named as owed, as a pass that brought all of
/// it to disk does.
fn settle_owed_uids(
    store: &Store,
    guid: merkmail::model::MailboxGuid,
    read: &merkmail::store::MailboxMirror,
) {
    store
        .mirror_settle(
            "u",
            guid,
            &[merkmail::store::MirrorEdit::OwedUids(
                read.owed_uids.clone(),
            )],
            read.owed,
        )
        .expect("settle");
}

/// A live-Maildir store for the store-level tests below, with `u`'s INBOX settled (nothing
/// owed).
fn settled_store(dir: &Path) -> (Store, merkmail::model::MailboxGuid) {
    merkmail::maildir::backend::install();
    let template = format!("{}/%u/Maildir", dir.display());
    let store = Store::init_maildir(&dir.join("data"), "a", &template).expect("init");
    store
        .append("u", "INBOX", vec![new_message(message("first", 0), 0)])
        .expect("append");
    let guid = store.mailbox("u", "INBOX").expect("inbox").guid;
    let read = store.mailbox_mirror("u", guid).expect("mirror");
    settle_owed_uids(&store, guid, &read);
    assert!(store.owed_mailboxes().expect("owed").is_empty());
    (store, guid)
}

/// A write marks the messages it changed, by UID; the index → disk half can look at those
/// only, and settles each unless a write changed it again after it was read.
#[test]
fn the_owed_uids_name_what_writes_changed_and_settle_one_by_one() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, guid) = settled_store(dir.path());
    let uids: Vec<u32> = store
        .append(
            "u",
            "INBOX",
            vec![
                new_message(message("a", 1), 1),
                new_message(message("b", 2), 2),
            ],
        )
        .expect("append")
        .iter()
        .map(|o| o.uid)
        .collect();
    let read = store
        .mailbox_mirror_at("u", guid, &BTreeSet::new())
        .expect("mirror");
    assert!(!read.whole);
    assert!(read.owed.is_some_and(|t| t.complete()));
    let owed: Vec<u32> = read.owed_uids.iter().map(|(uid, _)| *uid).collect();
    assert_eq!(owed, uids, "the appended UIDs, and only them");
    let listed: Vec<u32> = read.messages.iter().map(|(uid, _)| *uid).collect();
    assert_eq!(listed, uids, "the rows read are the owed ones");

    // The second message changes again before the first read is settled.
    store
        .set_flags("u", "INBOX", uids[1], FlagOp::Add, &[flag("\\Seen")])
        .expect("flags");
    settle_owed_uids(&store, guid, &read);
    let again = store.mailbox_mirror("u", guid).expect("mirror");
    let still: Vec<u32> = again.owed_uids.iter().map(|(uid, _)| *uid).collect();
    assert_eq!(
        still,
        vec![uids[1]],
        "the first is settled, the second changed since"
    );
    assert!(again.owed.is_some(), "and the mailbox stays owed");
}

/// A message a pass found in file `1700000000.M<n>P1.host`, which the uidlist lists at `uid`.
fn found(n: u16, uid: u32) -> NewMessage {
    NewMessage {
        uid: Some(uid),
        exact_uid: true,
        source: Some(format!("1700000000.M{n}P1.host")),
        ..new_message(message("found", n), n)
    }
}

/// What a pass found on disk goes into the index without marking the mailbox owed: the disk
/// shows it already. A message that must take another UID than its file's does mark it.
#[test]
fn a_change_found_on_disk_leaves_its_mailbox_unowed() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, guid) = settled_store(dir.path());
    let outcomes = store
        .append_found("u", "INBOX", vec![found(1, 5), found(2, 6)])
        .expect("append_found");
    assert!(outcomes.iter().all(|o| !o.renumbered && !o.skipped));
    assert!(
        store.owed_mailboxes().expect("owed").is_empty(),
        "imported at their own UIDs: nothing owed"
    );
    let gone = store.disk_expunged("u", guid, &[5]).expect("expunged");
    assert_eq!(gone, 1);
    assert!(store.owed_mailboxes().expect("owed").is_empty());

    // UID 6 is taken: the file's message goes elsewhere, and a file must be written there.
    let outcomes = store
        .append_found("u", "INBOX", vec![found(3, 6)])
        .expect("append_found");
    assert!(outcomes[0].renumbered);
    assert_eq!(
        store.owed_mailboxes().expect("owed"),
        vec![("u".to_string(), guid)]
    );
}

/// What a pass found in one folder goes in with one commit; a part that the disk settles
/// (flags, expunges) does not settle what another part of the same commit owes the disk (a
/// message that had to take another UID than its file's).
#[test]
fn what_one_folder_showed_is_one_commit_and_settles_only_itself() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, guid) = settled_store(dir.path());
    store
        .append_found("u", "INBOX", vec![found(1, 5), found(2, 6), found(4, 7)])
        .expect("append_found");
    let seen = |base: &str, uid: u32| merkmail::store::DiskFlags {
        uid,
        added: vec![flag("\\Seen")],
        removed: vec![],
        row: merkmail::store::FileRow {
            base: base.to_string(),
            disk_flags: vec!["\\Seen".to_string()],
        },
    };
    let (durable, _) = store.commits();
    let out = store
        .disk_found(
            "u",
            guid,
            merkmail::store::FoundOnDisk {
                mailbox: "INBOX".into(),
                new: vec![found(3, 6)],
                flags: vec![seen("1700000000.M1P1.host", 5)],
                expunged: vec![7],
            },
        )
        .expect("disk_found");
    assert_eq!(store.commits().0, durable + 1, "one commit");
    assert!(out.appended[0].renumbered, "{out:?}");
    assert_eq!(out.expunged, 1);
    let inbox = store.list_messages("u", Some("INBOX")).expect("messages");
    assert!(inbox.iter().all(|m| m.uid != 7), "{inbox:?}");
    assert!(
        inbox
            .iter()
            .any(|m| m.uid == 5 && m.record.flags.live().any(|f| f.as_str() == "\\Seen")),
        "{inbox:?}"
    );
    assert_eq!(
        store.owed_mailboxes().expect("owed"),
        vec![("u".to_string(), guid)],
        "the renumbered message is owed to the disk, whatever the flags and expunge settled"
    );

    // Flags and expunges alone leave the mailbox as unowed as they found it.
    let read = store.mailbox_mirror("u", guid).expect("mirror");
    settle_owed_uids(&store, guid, &read);
    store
        .disk_found(
            "u",
            guid,
            merkmail::store::FoundOnDisk {
                mailbox: "INBOX".into(),
                new: vec![],
                flags: vec![seen("1700000000.M2P1.host", 6)],
                expunged: vec![5],
            },
        )
        .expect("disk_found");
    assert!(store.owed_mailboxes().expect("owed").is_empty());
}

fn flag(name: &str) -> FlagName {
    FlagName::parse(name).expect("flag")
}

/// A store of format 3 recorded no owed UIDs: its marks are taken as not naming every change
/// when it is opened (format 4), so the next pass looks at every message of such a mailbox,
/// once; the marks written after that name their UIDs again.
#[test]
fn a_format_3_mark_is_taken_as_not_naming_every_change() {
    use redb::{ReadableDatabase, ReadableTable};
    let dir = tempfile::tempdir().expect("dir");
    let (store, guid) = settled_store(dir.path());
    store
        .append("u", "INBOX", vec![new_message(message("late", 3), 3)])
        .expect("append");
    drop(store);
    let file = dir.path().join("data").join(merkmail::store::DB_FILE);
    {
        let owed: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("mirror_owed");
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        let db = redb::Database::open(&file).expect("open redb");
        let marks: Vec<(Vec<u8>, Vec<u8>)> = db
            .begin_read()
            .expect("read")
            .open_table(owed)
            .expect("owed")
            .iter()
            .expect("iter")
            .map(|i| {
                let (k, v) = i.expect("item");
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect();
        assert_eq!(marks.len(), 1);
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn.open_table(owed).expect("owed");
            for (k, v) in &marks {
                assert_eq!(v.len(), 13, "a format 4 mark: a stamp and a byte");
                table.insert(k.as_slice(), &v[..12]).expect("insert");
            }
            txn.open_table(meta)
                .expect("meta")
                .insert("format", 3u32.to_be_bytes().as_slice())
                .expect("format");
        }
        txn.commit().expect("commit");
    }
    let store = Store::open(&dir.path().join("data")).expect("open");
    let read = store.mailbox_mirror("u", guid).expect("mirror");
    assert!(read.owed.is_some_and(|t| !t.complete()), "{:?}", read.owed);
    store
        .append("u", "INBOX", vec![new_message(message("later", 4), 4)])
        .expect("append");
    let again = store.mailbox_mirror("u", guid).expect("mirror");
    assert!(
        again.owed.is_some_and(|t| !t.complete()),
        "a later write keeps the mark incomplete until it is settled"
    );
    store
        .mirror_settle("u", guid, &[], again.owed)
        .expect("settle");
    store
        .append("u", "INBOX", vec![new_message(message("last", 5), 5)])
        .expect("append");
    let last = store.mailbox_mirror("u", guid).expect("mirror");
    assert!(last.owed.is_some_and(|t| t.complete()));
}

/// A body replicated into a live-Maildir store is written once: the session's staging puts
/// it in a spool file of its own beside the store (not into the redb file), the pass links
/// that file into the folder (the delivered file is the spool's inode), and once the pass has
/// settled the spool is empty and every delivered file has one name. A spool file that no row
/// names (a crash between writing it and the commit) is removed when the store is opened; a
/// named one stays and is delivered.
#[test]
fn a_replicated_body_is_spooled_as_a_file_and_linked_into_the_folder() {
    use merkmail::sync::responder::answer;
    use merkmail::sync::wire::{decode_request, encode};
    use std::os::unix::fs::MetadataExt;
    merkmail::maildir::backend::install();
    let tmp = common::scratch_dir();
    let side = |name: &str| {
        let text = format!("{}/{name}/%u/Maildir", tmp.path().display());
        let template = Template::parse(&text).expect("template");
        let root = template.root(USER);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        let data = tmp.path().join(format!("{name}-data"));
        let store = Store::init_maildir(&data, name, &text).expect("init");
        (store, template, root, data)
    };
    let (a, ta, ra, _) = side("a");
    let (b, tb, rb, b_data) = side("b");
    let spool = b_data.join("spool");
    let names = |dir: &Path| -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(d) => d.map(|e| e.expect("entry").path()).collect(),
            Err(_) => Vec::new(),
        }
    };
    for i in 0..12u16 {
        let body = message(&format!("m{i}"), i);
        std::fs::write(ra.join(format!("new/17000000{i:02}.mda{i}.host")), body).expect("w");
    }
    pass(&a, &ta, None).expect("A takes in its Maildir");
    let sync = |a: &Store, b: &Store| {
        merkmail::sync::run(a, 4, false, |bytes| {
            let round = decode_request(&bytes).map_err(|e| e.to_string())?;
            answer(b, &round)
                .map(|reply| encode(&reply))
                .map_err(|e| e.to_string())
        })
        .expect("a session")
    };
    assert!(sync(&a, &b).equal_after);

    // Staged and applied, not delivered yet: one spool file per body, holding its bytes.
    let spooled = names(&spool);
    assert_eq!(spooled.len(), 12, "one spool file per body: {spooled:?}");
    let inodes: BTreeSet<u64> = spooled
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").ino())
        .collect();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o777;
    assert_eq!(
        mode(&spool),
        0o700,
        "mail waits where only merkmail reads it"
    );
    for path in &spooled {
        assert_eq!(mode(path), 0o600, "{}", path.display());
        let bytes = std::fs::read(path).expect("read");
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(&Digest::of(&bytes).to_string()), "{name}");
    }

    let report = pass(&b, &tb, None).expect("B delivers");
    assert_eq!(report.delivered, 12);
    assert!(names(&spool).is_empty(), "the spool empties once delivered");
    let folders = scan(&rb).expect("scan");
    assert_eq!(folders[0].messages.len(), 12);
    for m in &folders[0].messages {
        let meta = std::fs::metadata(&m.path).expect("stat");
        assert!(
            inodes.contains(&meta.ino()),
            "{} was written again rather than linked",
            m.path.display()
        );
        assert_eq!(meta.nlink(), 1, "{} keeps a second name", m.path.display());
    }
    let disk = merkmail::maildir::backend::verify(&b, &tb).expect("verify");
    assert!(disk.mismatches.is_empty(), "{:?}", disk.mismatches);
    assert!(b.verify().expect("verify").is_ok());

    // A new body staged and applied, then the process "dies" before the pass, with an
    // orphan spool file beside it (written, never named by a committed row).
    std::fs::write(ra.join("new/1700000099.mda99.host"), message("late", 99)).expect("w");
    pass(&a, &ta, None).expect("A takes it in");
    assert!(sync(&a, &b).equal_after);
    std::fs::write(spool.join("orphan.1.2.3"), b"never named").expect("orphan");
    assert_eq!(names(&spool).len(), 2);
    drop(b);
    let b = Store::open(&b_data).expect("reopen");
    let left = names(&spool);
    assert_eq!(
        left.len(),
        1,
        "the orphan goes, the named file stays: {left:?}"
    );
    assert_eq!(pass(&b, &tb, None).expect("pass").delivered, 1);
    assert!(names(&spool).is_empty());
    assert_eq!(scan(&rb).expect("scan")[0].messages.len(), 13);
    let disk = merkmail::maildir::backend::verify(&b, &tb).expect("verify");
    assert!(disk.mismatches.is_empty(), "{:?}", disk.mismatches);
}

/// A transaction that wrote spool files and then failed leaves none behind: a replicated
/// apply whose first message brought its body (spooled) and whose second message's body does
/// not match its record is refused whole, and the spool holds nothing afterwards.
#[test]
fn a_refused_apply_leaves_no_spool_file() {
    use merkmail::model::{Change, FlagSet, Md5, MessageRecord, Stamp};
    merkmail::maildir::backend::install();
    let tmp = common::scratch_dir();
    let text = format!("{}/mail/%u/Maildir", tmp.path().display());
    let template = Template::parse(&text).expect("template");
    let root = template.root(USER);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    let data = tmp.path().join("data");
    let store = Store::init_maildir(&data, "n1", &text).expect("init");
    store.create_mailbox(USER, "Work").expect("a mailbox");
    let mut inbox = store.mailbox(USER, "Work").expect("Work");
    inbox.uidnext = 10;
    let root_before = store.root().expect("root");
    let message = |uid: u32, said: &[u8], sent: &[u8]| Change::Message {
        user: USER.into(),
        guid: inbox.guid,
        uid,
        record: MessageRecord {
            md5: Md5::of(said),
            digest: Digest::of(said),
            size: said.len() as u64,
            internal_date: 1_700_000_000,
            flags: FlagSet::default(),
            appended: Stamp {
                ms: 1_700_000_000_000,
                counter: uid as u16,
                node: 9,
            },
        },
        body: Some(sent.to_vec()),
    };
    let good = message(
        3,
        b"Subject: good\r\n\r\n1\r\n",
        b"Subject: good\r\n\r\n1\r\n",
    );
    let bad = message(
        4,
        b"Subject: said\r\n\r\n2\r\n",
        b"Subject: sent\r\n\r\n2\r\n",
    );
    let changes = vec![
        Change::Mailbox {
            user: USER.into(),
            record: inbox.clone(),
        },
        good.clone(),
        bad,
    ];
    assert!(
        store.apply(&changes).is_err(),
        "a body that is not its record's"
    );
    assert_eq!(store.root().expect("root"), root_before, "nothing applied");
    let spool: Vec<_> = match std::fs::read_dir(data.join("spool")) {
        Ok(d) => d.collect(),
        Err(_) => Vec::new(),
    };
    assert!(spool.is_empty(), "the refused apply left {spool:?}");
    // The good half alone applies, and its body waits in the spool.
    store
        .apply(&[
            Change::Mailbox {
                user: USER.into(),
                record: inbox,
            },
            good,
        ])
        .expect("applies");
    assert_eq!(
        std::fs::read_dir(data.join("spool"))
            .expect("spool")
            .count(),
        1
    );
}
