//! A watcher of the Maildirs' directories on Linux's inotify, reporting what changed in them
//! as the notify crate's events (what maildir::watch reads).
//!
//! notify's own watcher did the job until session 11, at two costs the profiles showed: it
//! asks inotify for `IN_OPEN`, so every file anyone reads (Dovecot serving mail, merkmail's
//! own sessions reading bodies) woke its thread (15–19 % of a sender's time in an initial
//! copy), and its recursive watch `lstat`ed every file of the tree to find the directories
//! (10 % at start on 100 000 messages). This one asks only for what changes a name or a
//! file's bytes, and walks directories only (it does not descend into `cur/`, `new/` and
//! `tmp/`, which hold files only).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use notify::event::{CreateKind, DataChange, EventKind, Flag, ModifyKind, RemoveKind, RenameMode};

/// What each watched directory reports: names made, removed, renamed, files written.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// The watches and the directory each stands for.
struct Dirs {
    watches: Watches,
    paths: HashMap<WatchDescriptor, PathBuf>,
}

impl Dirs {
    /// Watches `dir` and every directory under it, except the insides of `cur/`, `new/` and
    /// `tmp/` (files only). A directory that vanishes meanwhile is skipped.
    fn add_tree(&mut self, dir: &Path) -> io::Result<()> {
        match self.watches.add(dir, mask()) {
            Ok(wd) => {
                self.paths.insert(wd, dir.to_path_buf());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        if matches!(
            dir.file_name().and_then(OsStr::to_str),
            Some("cur" | "new" | "tmp")
        ) {
            return Ok(());
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            // The kind readdir gives: no stat of each file.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.add_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// A running watcher; its thread stops when this is dropped.
pub struct DirWatcher {
    dirs: Arc<Mutex<Dirs>>,
    stop: Arc<AtomicBool>,
}

impl DirWatcher {
    /// Starts the watcher's thread; `handler` gets every report, in the order inotify gave
    /// them (an `Err`, or an event flagged `Rescan`, when reports were lost).
    pub fn new(
        mut handler: impl FnMut(notify::Result<notify::Event>) + Send + 'static,
    ) -> io::Result<DirWatcher> {
        let mut inotify = Inotify::init()?;
        let dirs = Arc::new(Mutex::new(Dirs {
            watches: inotify.watches(),
            paths: HashMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (Arc::clone(&dirs), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("maildir-inotify".into())
            .spawn(move || {
                let mut buffer = vec![0u8; 64 * 1024];
                while !s.load(Ordering::Relaxed) {
                    let events = match inotify.read_events_blocking(&mut buffer) {
                        Ok(events) => events,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            handler(Err(notify::Error::io(e)));
                            return;
                        }
                    };
                    for event in events {
                        if s.load(Ordering::Relaxed) {
                            return;
                        }
                        for report in reports(&d, &event) {
                            handler(report);
                        }
                    }
                }
            })?;
        Ok(DirWatcher { dirs, stop })
    }

    /// Watches `dir` and the directories under it (new ones are watched as they come).
    pub fn watch(&self, dir: &Path) -> io::Result<()> {
        lock(&self.dirs).add_tree(dir)
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Removing the watches makes inotify report each removal, which wakes the thread.
        let mut dirs = lock(&self.dirs);
        let wds: Vec<WatchDescriptor> = dirs.paths.keys().cloned().collect();
        for wd in wds {
            let _ = dirs.watches.remove(wd);
        }
    }
}

fn lock(dirs: &Mutex<Dirs>) -> std::sync::MutexGuard<'_, Dirs> {
    dirs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The notify events one inotify event stands for; a directory made or moved in is watched
/// (with what it holds) before they are reported.
fn reports(
    dirs: &Mutex<Dirs>,
    event: &inotify::Event<&OsStr>,
) -> Vec<notify::Result<notify::Event>> {
    let mask = event.mask;
    if mask.contains(EventMask::Q_OVERFLOW) {
        return vec![Ok(
            notify::Event::new(EventKind::Other).set_flag(Flag::Rescan)
        )];
    }
    let mut dirs = lock(dirs);
    let Some(dir) = dirs.paths.get(&event.wd).cloned() else {
        return Vec::new();
    };
    if mask.contains(EventMask::IGNORED) {
        dirs.paths.remove(&event.wd);
        return Vec::new();
    }
    let path = match event.name {
        Some(name) => dir.join(name),
        None => dir,
    };
    let is_dir = mask.contains(EventMask::ISDIR);
    if is_dir && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
        if let Err(e) = dirs.add_tree(&path) {
            return vec![Err(notify::Error::io(e))];
        }
    }
    drop(dirs);
    let kind = if mask.contains(EventMask::CREATE) {
        EventKind::Create(if is_dir {
            CreateKind::Folder
        } else {
            CreateKind::File
        })
    } else if mask.contains(EventMask::DELETE) {
        EventKind::Remove(if is_dir {
            RemoveKind::Folder
        } else {
            RemoveKind::File
        })
    } else if mask.contains(EventMask::MOVED_FROM) {
        EventKind::Modify(ModifyKind::Name(RenameMode::From))
    } else if mask.contains(EventMask::MOVED_TO) {
        EventKind::Modify(ModifyKind::Name(RenameMode::To))
    } else if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
        EventKind::Remove(RemoveKind::Folder)
    } else if mask.intersects(EventMask::MODIFY | EventMask::CLOSE_WRITE) {
        EventKind::Modify(ModifyKind::Data(DataChange::Any))
    } else {
        EventKind::Other
    };
    let mut report = notify::Event::new(kind).add_path(path);
    if mask.intersects(EventMask::MOVED_FROM | EventMask::MOVED_TO) {
        report = report.set_tracker(event.cookie as usize);
    }
    vec![Ok(report)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn next(rx: &mpsc::Receiver<notify::Event>, what: &str) -> notify::Event {
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no report of {what}"))
    }

    /// Each change to a name is reported with its kind and path, in order; a folder made
    /// later is watched (its cur/ too); reading a file reports nothing.
    #[test]
    fn names_made_renamed_and_removed_are_reported_and_reads_are_not() {
        let tmp = tempfile::tempdir().expect("dir");
        let root = tmp.path().join("Maildir");
        std::fs::create_dir_all(root.join("cur")).expect("cur");
        let (tx, rx) = mpsc::channel();
        let watcher = DirWatcher::new(move |e| {
            if let Ok(e) = e {
                let _ = tx.send(e);
            }
        })
        .expect("watcher");
        watcher.watch(tmp.path()).expect("watch");

        let file = root.join("cur/1.a:2,");
        std::fs::write(&file, b"x").expect("write");
        let made = next(&rx, "the file made");
        assert_eq!(made.kind, EventKind::Create(CreateKind::File));
        assert_eq!(made.paths, vec![file.clone()]);
        // Its write and close come next; then a read of it says nothing.
        while !matches!(
            next(&rx, "the write").kind,
            EventKind::Modify(ModifyKind::Data(_))
        ) {}
        let _ = std::fs::read(&file).expect("read");
        let renamed = root.join("cur/1.a:2,S");
        std::fs::rename(&file, &renamed).expect("rename");
        let mut seen = next(&rx, "the rename");
        while matches!(seen.kind, EventKind::Modify(ModifyKind::Data(_))) {
            seen = next(&rx, "the rename");
        }
        assert_eq!(
            seen.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::From))
        );
        assert_eq!(seen.paths, vec![file]);
        let to = next(&rx, "the new name");
        assert_eq!(to.kind, EventKind::Modify(ModifyKind::Name(RenameMode::To)));
        assert_eq!(to.paths, vec![renamed.clone()]);
        std::fs::remove_file(&renamed).expect("unlink");
        let gone = next(&rx, "the unlink");
        assert_eq!(gone.kind, EventKind::Remove(RemoveKind::File));

        // A folder made afterwards, and a file in its cur/.
        let folder = root.join(".Sent");
        std::fs::create_dir_all(folder.join("cur")).expect("folder");
        // Give the watcher a moment to add the new folder's watches.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let inner = folder.join("cur/2.b");
        loop {
            std::fs::write(&inner, b"y").expect("write");
            let mut found = false;
            while let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
                found |= e.paths.contains(&inner);
            }
            if found {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no report from the new folder"
            );
            std::fs::remove_file(&inner).expect("remove");
        }
    }
}
