//! What a file watcher's reports say about the Maildirs, for passes that read only what
//! changed (docs/MAILDIR.md, "Passes driven by the watcher").
//!
//! A folder is *tracked* once a pass has left index and disk agreeing on it while the watcher
//! was running: from then on every change to it reaches the watcher, so the next pass needs
//! to look only at the files the watcher named, not at the whole folder. A folder stops being
//! tracked when its pass did not settle it, when anything but its files changed (its
//! keywords, a folder made, renamed or removed, the subscriptions), and for every folder when
//! the watcher lost events (its queue overflowed). The periodic safety-net pass does not rely
//! on any of this: it compares each folder's print, as a pass without a watcher does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use super::backend::Template;

/// What one reported path means for the Maildirs of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Touch {
    /// A file in a folder's cur/ or new/: `name` is `cur/FILE` or `new/FILE`.
    File { folder: PathBuf, name: String },
    /// The folder's uidlist: UIDs given out (by the server, or by a pass).
    Uidlist { folder: PathBuf },
    /// Something of the folder that is not one file (its keywords, cur/ or new/ themselves):
    /// the folder is read in full.
    Folder { folder: PathBuf },
    /// Something of the user's tree that is not inside one folder (a folder made, renamed or
    /// removed, the subscriptions, the Maildir itself): the user's folders are read as a pass
    /// without a watcher would.
    Tree,
}

/// The user and the meaning of a path a watcher reported, or `None` when the path means
/// nothing to a pass (tmp/, lock files, Dovecot's own index files, paths outside a user's
/// Maildir).
pub fn touch_of(template: &Template, path: &Path) -> Option<(String, Touch)> {
    let rest = path.strip_prefix(template.parent()).ok()?;
    let user = match rest.components().next()? {
        Component::Normal(u) => u.to_str()?.to_string(),
        _ => return None,
    };
    crate::model::validate_user(&user).ok()?;
    let root = template.root(&user);
    let Ok(inside) = path.strip_prefix(&root) else {
        // Above the Maildir (the user's directory itself): the Maildir may have been made or
        // removed with it.
        return root.starts_with(path).then_some((user, Touch::Tree));
    };
    let parts: Vec<&str> = inside
        .components()
        .map(|c| match c {
            Component::Normal(p) => p.to_str(),
            _ => None,
        })
        .collect::<Option<Vec<&str>>>()?;
    let touch = match parts.as_slice() {
        [] | [".." | "."] => Touch::Tree,
        [folder] if folder.starts_with('.') => Touch::Tree,
        [folder, rest @ ..] if folder.starts_with('.') && *folder != ".." => {
            in_folder(root.join(folder), rest)?
        }
        rest => in_folder(root.clone(), rest)?,
    };
    Some((user, touch))
}

/// Within one folder's directory; `None` for what says nothing about the mail.
fn in_folder(folder: PathBuf, rest: &[&str]) -> Option<Touch> {
    Some(match rest {
        ["tmp", ..] => return None,
        [sub @ ("cur" | "new"), name] => Touch::File {
            name: format!("{sub}/{name}"),
            folder,
        },
        ["cur" | "new", ..] => Touch::Folder { folder },
        ["dovecot-uidlist"] => Touch::Uidlist { folder },
        ["dovecot-keywords"] => Touch::Folder { folder },
        [name] if is_ignored(name) => return None,
        // The subscriptions, or anything unknown: the tree's business.
        _ => Touch::Tree,
    })
}

/// Files that come and go without saying anything about the mail: lock files, Dovecot's
/// index and cache files, its UIDVALIDITY file. (A folder's `maildirfolder` mark is the last
/// thing Dovecot makes of a new folder: the tree's business, so that the pass that left the
/// half-made folder alone looks again.)
fn is_ignored(name: &str) -> bool {
    name.ends_with(".lock")
        || name.starts_with("dovecot.")
        || name.starts_with("dovecot-uidvalidity")
}

/// What a report says happened to a file's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The name was made (a delivery, a rename's new name), or something else happened to
    /// it: it may be there.
    Appeared,
    /// The name was renamed away (to where, a later report may say).
    RenamedAway,
    /// The name was unlinked.
    Unlinked,
}

impl Seen {
    /// What an event of this kind says of the names it reports; `None` for a rename reported
    /// with both its names, whose two halves were reported before it one by one.
    pub fn of(kind: &notify::EventKind) -> Option<Seen> {
        use notify::event::{ModifyKind, RenameMode};
        match kind {
            notify::EventKind::Remove(_) => Some(Seen::Unlinked),
            notify::EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                Some(Seen::RenamedAway)
            }
            notify::EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
            // Made, renamed here, written, or a kind that says less: the name may be there.
            _ => Some(Seen::Appeared),
        }
    }
}

/// What the reports since a folder's last pass said of the files of one base name: each
/// name and what happened to it, in the order they came (one watcher reports in the order
/// the kernel saw).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseNews {
    seen: Vec<(String, Seen)>,
}

impl BaseNews {
    /// Whether the reports prove that no file of the base is left: a name they did not see
    /// appear went away (the file index and disk last agreed on: a base has one file in a
    /// folder, and Dovecot renames a second one to a new base), every name that appeared
    /// since went too, and the last report was an unlink (a name renamed away may arrive
    /// under its new name in a report not taken yet; an unlinked one cannot).
    pub fn proves_gone(&self) -> bool {
        !self.gone_before().is_empty()
    }

    /// When the reports prove that no file of the base is left ([`BaseNews::proves_gone`]),
    /// the names they saw go that they had not seen appear: the names the base had before
    /// (the caller checks that one of them is the file index and disk agreed on, and not a
    /// second name of it: Dovecot unlinks a hard-linked duplicate). Empty otherwise.
    pub fn gone_before(&self) -> Vec<&str> {
        let mut appeared: BTreeSet<&str> = BTreeSet::new();
        let mut before: Vec<&str> = Vec::new();
        for (name, seen) in &self.seen {
            match seen {
                Seen::Appeared => {
                    appeared.insert(name);
                }
                Seen::RenamedAway | Seen::Unlinked => {
                    if !appeared.remove(name.as_str()) {
                        before.push(name);
                    }
                }
            }
        }
        let last_unlinked = self
            .seen
            .last()
            .is_some_and(|(_, seen)| *seen == Seen::Unlinked);
        if appeared.is_empty() && last_unlinked {
            before
        } else {
            Vec::new()
        }
    }
}

/// What the watcher reported for one user since their last pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Per folder directory, the files named (`cur/FILE`, `new/FILE`); a folder present with
    /// no name had its uidlist change.
    pub files: HashMap<PathBuf, BTreeSet<String>>,
    /// Per folder directory and base name, what the reports said happened to its files.
    pub bases: HashMap<PathBuf, HashMap<String, BaseNews>>,
    /// Folders to read in full.
    pub whole: HashSet<PathBuf>,
    /// The user's tree changed outside any folder's files.
    pub tree: bool,
}

impl Touched {
    /// Takes in a report whose kind says nothing of a name's fate (it may be there).
    pub fn add(&mut self, touch: Touch) {
        self.saw(touch, Some(Seen::Appeared));
    }

    /// The base names of `folder` that the reports prove have no file left (see
    /// [`BaseNews::proves_gone`]), each with the names it had before the reports
    /// ([`BaseNews::gone_before`]).
    pub fn gone_bases(&self, folder: &Path) -> HashMap<String, Vec<String>> {
        self.bases
            .get(folder)
            .into_iter()
            .flatten()
            .filter_map(|(base, news)| {
                let before = news.gone_before();
                (!before.is_empty()).then(|| {
                    (
                        base.clone(),
                        before.into_iter().map(str::to_string).collect(),
                    )
                })
            })
            .collect()
    }

    /// Leaves out every report of a file whose name `hide` picks, as if it had not come yet.
    pub fn leave_out(&mut self, hide: impl Fn(&str) -> bool) {
        for names in self.files.values_mut() {
            names.retain(|name| !hide(name));
        }
        for bases in self.bases.values_mut() {
            for news in bases.values_mut() {
                news.seen.retain(|(name, _)| !hide(name));
            }
        }
    }

    /// Takes in a report of `touch`; `seen` says what happened to a file's name (`None`:
    /// the report names the file but says nothing new of it).
    pub fn saw(&mut self, touch: Touch, seen: Option<Seen>) {
        match touch {
            Touch::File { folder, name } => {
                if let Some(seen) = seen {
                    let file = name.split_once('/').map_or(name.as_str(), |(_, f)| f);
                    let base = file.split(':').next().unwrap_or(file).to_string();
                    self.bases
                        .entry(folder.clone())
                        .or_default()
                        .entry(base)
                        .or_default()
                        .seen
                        .push((name.clone(), seen));
                }
                self.files.entry(folder).or_default().insert(name);
            }
            Touch::Uidlist { folder } => {
                self.files.entry(folder).or_default();
            }
            Touch::Folder { folder } => {
                self.whole.insert(folder);
            }
            Touch::Tree => self.tree = true,
        }
    }
}

/// What the watcher reported since the passes last took it.
#[derive(Debug, Default)]
pub struct News {
    pub users: BTreeMap<String, Touched>,
    /// When the first report now in `users` came, per user: its pass waits for the reports
    /// that follow (a delivery is several) for a moment counted from then.
    pub since: BTreeMap<String, std::time::Instant>,
    /// The watcher lost events (its queue overflowed, or it failed): no folder may be taken
    /// as followed any more, and every user is passed over as without a watcher.
    pub lost: bool,
}

impl News {
    /// Takes in one report of the watcher; returns whether a pass is wanted.
    pub fn note(&mut self, template: &Template, event: notify::Result<notify::Event>) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "the Maildir watcher failed");
                self.lost = true;
                return true;
            }
        };
        if event.need_rescan() {
            self.lost = true;
            return true;
        }
        // Reads, and changes of owner, mode or times, change no mail (a `chown -R` of the
        // tree would otherwise name every file).
        if matches!(
            event.kind,
            notify::EventKind::Access(_)
                | notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_))
        ) {
            return false;
        }
        let seen = Seen::of(&event.kind);
        let mut any = false;
        for path in &event.paths {
            if let Some((user, touch)) = touch_of(template, path) {
                self.since
                    .entry(user.clone())
                    .or_insert_with(std::time::Instant::now);
                self.users.entry(user).or_default().saw(touch, seen);
                any = true;
            }
        }
        any
    }

    /// Takes what was reported for `user` (nothing, if nothing was).
    pub fn take(&mut self, user: &str) -> Touched {
        self.since.remove(user);
        self.users.remove(user).unwrap_or_default()
    }
}

/// A uidlist file as it stood when index and disk last agreed on its folder: its inode and
/// size. Dovecot (and merkmail) only ever append to a uidlist in place; any other change
/// (a rebuild, a renumbering) writes a new file and renames it over the old one. So a uidlist
/// with the same inode and at least the same size lists every file it listed then at the
/// same UID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidlistMark {
    pub inode: u64,
    pub size: u64,
}

impl UidlistMark {
    /// Whether `now` is this uidlist with lines appended at most.
    pub fn appended_to(&self, now: &UidlistMark) -> bool {
        self.inode == now.inode && now.size >= self.size
    }
}

/// The folders a watcher has followed since index and disk last agreed on them, each with its
/// uidlist as it stood then (if it had one).
#[derive(Debug, Default)]
pub struct Tracking {
    tracked: HashMap<PathBuf, Option<UidlistMark>>,
}

impl Tracking {
    pub fn is_tracked(&self, folder: &Path) -> bool {
        self.tracked.contains_key(folder)
    }

    /// The uidlist of a followed folder as it stood when index and disk last agreed on it.
    pub fn uidlist(&self, folder: &Path) -> Option<UidlistMark> {
        self.tracked.get(folder).copied().flatten()
    }

    /// Follows `folder` from here on; `uidlist` is its uidlist when index and disk agreed.
    pub fn track(&mut self, folder: &Path, uidlist: Option<UidlistMark>) {
        self.tracked.insert(folder.to_path_buf(), uidlist);
    }

    pub fn forget(&mut self, folder: &Path) {
        self.tracked.remove(folder);
    }

    /// Forgets every folder under `root` (one user's tree changed shape).
    pub fn forget_under(&mut self, root: &Path) {
        self.tracked.retain(|f, _| !f.starts_with(root));
    }

    /// Forgets every folder (the watcher lost events).
    pub fn clear(&mut self) {
        self.tracked.clear();
    }

    /// Takes the folders under `root` out (one user's, for a pass that runs beside other
    /// users' passes); [`Tracking::put_back`] returns them. Folders not put back (a pass that
    /// panicked) are no longer followed: their next pass goes by their prints.
    pub fn take_under(&mut self, root: &Path) -> Tracking {
        let (mine, rest) = std::mem::take(&mut self.tracked)
            .into_iter()
            .partition(|(f, _)| f.starts_with(root));
        self.tracked = rest;
        Tracking { tracked: mine }
    }

    /// Returns what [`Tracking::take_under`] took, as the pass left it.
    pub fn put_back(&mut self, taken: Tracking) {
        self.tracked.extend(taken.tracked);
    }
}

/// What a pass driven by the watcher gets: the folders followed, and what changed for the
/// user it passes over.
pub struct Watched<'a> {
    pub tracking: &'a mut Tracking,
    pub touched: Touched,
    /// Whether folders followed may go unread (a pass the watcher drives); `false` for the
    /// first pass and the safety net, which go by the prints and only start following.
    pub trust: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Template {
        Template::parse("/srv/vmail/%u/Maildir").expect("template")
    }

    fn touch(path: &str) -> Option<(String, Touch)> {
        touch_of(&t(), Path::new(path))
    }

    /// A user's followed folders go out with their pass and come back as it left them; no
    /// other user's (not even one whose name starts the same) goes with them.
    #[test]
    fn one_users_followed_folders_are_taken_out_and_put_back() {
        let mark = Some(UidlistMark { inode: 7, size: 70 });
        let mut all = Tracking::default();
        for f in [
            "/srv/vmail/ann/Maildir",
            "/srv/vmail/ann/Maildir/.Sent",
            "/srv/vmail/anna/Maildir",
        ] {
            all.track(Path::new(f), mark);
        }
        let mut ann = all.take_under(&t().root("ann"));
        assert!(ann.is_tracked(Path::new("/srv/vmail/ann/Maildir/.Sent")));
        assert!(!ann.is_tracked(Path::new("/srv/vmail/anna/Maildir")));
        assert!(!all.is_tracked(Path::new("/srv/vmail/ann/Maildir")));
        assert!(all.is_tracked(Path::new("/srv/vmail/anna/Maildir")));
        ann.forget(Path::new("/srv/vmail/ann/Maildir/.Sent"));
        ann.track(Path::new("/srv/vmail/ann/Maildir/.Trash"), None);
        all.put_back(ann);
        assert!(all.is_tracked(Path::new("/srv/vmail/ann/Maildir")));
        assert!(all.is_tracked(Path::new("/srv/vmail/ann/Maildir/.Trash")));
        assert!(!all.is_tracked(Path::new("/srv/vmail/ann/Maildir/.Sent")));
        assert_eq!(all.uidlist(Path::new("/srv/vmail/anna/Maildir")), mark);
    }

    #[test]
    fn each_kind_of_path_is_told_apart() {
        let root = PathBuf::from("/srv/vmail/ann/Maildir");
        let ann = |t: Touch| Some(("ann".to_string(), t));
        assert_eq!(
            touch("/srv/vmail/ann/Maildir/cur/1.M1.h:2,S"),
            ann(Touch::File {
                folder: root.clone(),
                name: "cur/1.M1.h:2,S".into()
            })
        );
        assert_eq!(
            touch("/srv/vmail/ann/Maildir/.Sent/new/2.M2.h"),
            ann(Touch::File {
                folder: root.join(".Sent"),
                name: "new/2.M2.h".into()
            })
        );
        assert_eq!(
            touch("/srv/vmail/ann/Maildir/.Sent/dovecot-uidlist"),
            ann(Touch::Uidlist {
                folder: root.join(".Sent")
            })
        );
        assert_eq!(
            touch("/srv/vmail/ann/Maildir/dovecot-keywords"),
            ann(Touch::Folder {
                folder: root.clone()
            })
        );
        assert_eq!(
            touch("/srv/vmail/ann/Maildir/.Sent/cur"),
            ann(Touch::Folder {
                folder: root.join(".Sent")
            })
        );
        assert_eq!(touch("/srv/vmail/ann/Maildir/.Sent"), ann(Touch::Tree));
        assert_eq!(
            touch("/srv/vmail/ann/Maildir/subscriptions"),
            ann(Touch::Tree)
        );
        assert_eq!(touch("/srv/vmail/ann/Maildir"), ann(Touch::Tree));
        assert_eq!(touch("/srv/vmail/ann"), ann(Touch::Tree));
        assert_eq!(touch("/srv/vmail/ann/Maildir/.a.b/cur"), {
            ann(Touch::Folder {
                folder: root.join(".a.b"),
            })
        });
    }

    #[test]
    fn what_says_nothing_about_mail_is_left_out() {
        for path in [
            "/srv/vmail/ann/Maildir/tmp/1.M1.h",
            "/srv/vmail/ann/Maildir/.Sent/tmp/1.M1.h",
            "/srv/vmail/ann/Maildir/dovecot-uidlist.lock",
            "/srv/vmail/ann/Maildir/.Sent/dovecot-uidlist.lock",
            "/srv/vmail/ann/Maildir/dovecot.index.log",
            "/srv/vmail/ann/Maildir/.Sent/dovecot.index.cache",
            "/srv/vmail/ann/Maildir/dovecot.list.index.log",
            "/srv/vmail/ann/Maildir/dovecot-uidvalidity.5f3a",
            "/srv/vmail/ann/other/file",
            "/srv/elsewhere/x",
        ] {
            assert_eq!(touch(path), None, "{path}");
        }
    }

    /// The reports' word on a base: gone only when the agreed file went, every name seen
    /// since went too, and the last report was an unlink.
    #[test]
    fn only_an_unlink_last_proves_a_file_gone() {
        use Seen::{Appeared as A, RenamedAway as R, Unlinked as U};
        let news = |seen: &[(&str, Seen)]| BaseNews {
            seen: seen.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        };
        for (case, seen, gone) in [
            ("an expunge", vec![("cur/b:2,S", U)], true),
            (
                "a flag set, then an expunge",
                vec![("cur/b:2,", R), ("cur/b:2,T", A), ("cur/b:2,T", U)],
                true,
            ),
            (
                "new/ to cur/, then an expunge",
                vec![("new/b", R), ("cur/b:2,", A), ("cur/b:2,", U)],
                true,
            ),
            (
                "renamed away, new name not reported yet",
                vec![("cur/b:2,", R)],
                false,
            ),
            (
                "renamed, new name reported",
                vec![("cur/b:2,", R), ("cur/b:2,S", A)],
                false,
            ),
            (
                "delivered and expunged since the agreement (not the agreed file)",
                vec![("new/b", A), ("new/b", U)],
                false,
            ),
            (
                "unlinked, then a file of the base again",
                vec![("cur/b:2,", U), ("cur/b:2,", A)],
                false,
            ),
            (
                "a name written to, then unlinked",
                vec![("cur/b:2,", A), ("cur/b:2,", U)],
                false,
            ),
            (
                "renamed away last, after an unlink",
                vec![("cur/b:2,", U), ("new/b", R)],
                false,
            ),
            ("nothing reported", vec![], false),
        ] {
            assert_eq!(news(&seen).proves_gone(), gone, "{case}");
        }
    }

    /// Each kind of report says what it should of a name, and a report left out (not come
    /// yet) proves nothing.
    #[test]
    fn reports_say_what_happened_to_a_name() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        use notify::{Event, EventKind};
        let folder = PathBuf::from("/srv/vmail/ann/Maildir");
        let mut news = News::default();
        let event = |kind: EventKind, paths: &[&str]| {
            let mut e = Event::new(kind);
            for p in paths {
                e = e.add_path(folder.join(p));
            }
            Ok(e)
        };
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        for e in [
            event(from, &["cur/a:2,"]),
            event(to, &["cur/a:2,S"]),
            event(both, &["cur/a:2,", "cur/a:2,S"]),
            event(EventKind::Remove(RemoveKind::File), &["cur/a:2,S"]),
            event(EventKind::Create(CreateKind::File), &["new/b"]),
            event(EventKind::Remove(RemoveKind::File), &["cur/c:2,"]),
            event(from, &["cur/d:2,"]),
        ] {
            assert!(news.note(&t(), e));
        }
        let touched = &news.users["ann"];
        let gone = touched.gone_bases(&folder);
        assert_eq!(
            gone,
            HashMap::from([
                ("a".to_string(), vec!["cur/a:2,".to_string()]),
                ("c".to_string(), vec!["cur/c:2,".to_string()]),
            ]),
            "{touched:?}"
        );
        let mut held_back = touched.clone();
        held_back.leave_out(|name| name.ends_with(":2,S"));
        assert_eq!(
            held_back
                .gone_bases(&folder)
                .into_keys()
                .collect::<Vec<_>>(),
            vec!["c".to_string()]
        );
        assert!(!held_back.files[&folder].contains("cur/a:2,S"));
    }

    #[test]
    fn touched_gathers_names_by_folder() {
        let mut t = Touched::default();
        let f = PathBuf::from("/m/.A");
        t.add(Touch::File {
            folder: f.clone(),
            name: "cur/x".into(),
        });
        t.add(Touch::File {
            folder: f.clone(),
            name: "new/y".into(),
        });
        t.add(Touch::Uidlist {
            folder: PathBuf::from("/m"),
        });
        assert_eq!(t.files[&f].len(), 2);
        assert!(t.files[Path::new("/m")].is_empty());
        assert!(!t.tree && t.whole.is_empty());
        t.add(Touch::Tree);
        assert!(t.tree);
    }

    #[test]
    fn forgetting_a_tree_forgets_only_its_folders() {
        let mut tr = Tracking::default();
        tr.track(Path::new("/v/ann/Maildir"), None);
        tr.track(Path::new("/v/ann/Maildir/.Sent"), None);
        tr.track(Path::new("/v/bob/Maildir"), None);
        tr.forget_under(Path::new("/v/ann/Maildir"));
        assert!(!tr.is_tracked(Path::new("/v/ann/Maildir/.Sent")));
        assert!(tr.is_tracked(Path::new("/v/bob/Maildir")));
        tr.clear();
        assert!(!tr.is_tracked(Path::new("/v/bob/Maildir")));
    }
}
