//! The live Maildir beside `serve` (a store made with `init --maildir`): a first pass at
//! start, then a pass for a user whenever inotify says their Maildir changed or the index
//! owes it something, and a safety-net pass every `rescan_interval_s`. A pass driven by
//! inotify looks only at the files it named in the folders it has followed since index and
//! disk last agreed on them (maildir::watch); the safety net reads only the folders whose
//! directories changed since index and disk last agreed (the folder prints of
//! maildir::backend), so it costs a few stats per folder when all is quiet.

use super::node::Node;
use crate::maildir::backend::{self, PassReport, Template};
use crate::maildir::fault::{self, Fault};
use crate::maildir::inotify::DirWatcher;
use crate::maildir::watch::{News, Touched, Tracking, Watched};
use crate::status::MaildirView;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the index's owed mailboxes are looked at (replicated changes reach the disk
/// within this, plus the pass).
const OWED_POLL: Duration = Duration::from_millis(100);
/// How long a burst of file events is gathered before a pass (a delivery is several events).
const SETTLE: Duration = Duration::from_millis(30);

/// What inotify saw change since the last passes, by user.
#[derive(Default)]
struct Changed {
    news: Mutex<News>,
    wake: Notify,
}

/// Runs until shutdown. Errors of one pass are logged; the next pass retries what is owed.
pub async fn run(node: Arc<Node>, template: Template) {
    *super::node::lock(&node.maildir) = Some(MaildirView {
        template: template.as_str().to_string(),
        ..MaildirView::default()
    });
    // Subscribed before the first pass: a shutdown during it is seen by the loops after.
    let shutdown = node.shutdown.subscribe();
    let changed = Arc::new(Changed::default());
    let mut watcher = match watch(&template, Arc::clone(&changed)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, template = template.as_str(), "cannot watch the Maildirs; changes are seen by the periodic rescan only");
            None
        }
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let faults = Faults::from_env();
    // Folders followed only while the watcher runs.
    let tracking = Arc::new(Mutex::new(Tracking::default()));
    let started = Instant::now();
    let following = watcher.as_ref().map(|_| &tracking);
    let first = pass(&node, &template, None, &mut seen, following, &faults).await;
    // Sessions and the peers' journal wait for this pass (Node::disk_ready); a pass that
    // failed is retried below, and they wait no longer for it.
    node.set_disk_ready();
    watch_roots(watcher.as_mut(), &template, &seen);
    if let Some(r) = first {
        tracing::info!(
            users = r.users,
            folders = r.folders,
            imported = r.imported,
            delivered = r.delivered,
            ms = started.elapsed().as_millis() as u64,
            "first pass over the Maildirs done"
        );
    }
    match watcher {
        Some(watching) => {
            let mut watched = Loop {
                node: &node,
                template: &template,
                changed: &changed,
                tracking: &tracking,
                watching,
                seen,
                faults,
            };
            watched.run(shutdown).await;
        }
        None => unwatched(&node, &template, &mut seen, &faults, shutdown).await,
    }
}

/// Without a watcher: the owed users' passes as the index owes them (a replicated change
/// wakes it, and a poll every [`OWED_POLL`] as a safety net), one user at a time, and the
/// periodic rescan.
async fn unwatched(
    node: &Arc<Node>,
    template: &Template,
    seen: &mut BTreeSet<String>,
    faults: &Faults,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let rescan = node.config.rescan_interval();
    let mut next_rescan = Instant::now() + rescan;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = node.wake_mirror.notified() => {}
            _ = tokio::time::sleep(OWED_POLL) => {}
        }
        for user in owed_users(node).await {
            pass(node, template, Some(user), seen, None, faults).await;
        }
        if Instant::now() >= next_rescan {
            next_rescan = Instant::now() + rescan;
            pass(node, template, None, seen, None, faults).await;
        }
    }
}

/// The users whose Maildirs the index owes something (none, if the index cannot say now:
/// the next poll asks again).
async fn owed_users(node: &Arc<Node>) -> BTreeSet<String> {
    let store = Arc::clone(&node.store);
    tokio::task::spawn_blocking(move || store.owed_mailboxes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
        .into_iter()
        .map(|(u, _)| u)
        .collect()
}

/// The passes the watcher drives (maildir::watch): one per user at a time, up to
/// [`parallel_passes`] at once, each started as soon as its user is ready — the file events
/// reported for it have gathered for [`SETTLE`] since the first of them, or the index owes
/// its Maildir something — without waiting for other users' passes to end. A user reported
/// or owed while its pass runs is passed again when it ends. A full pass (the watcher lost
/// events, or the periodic rescan) waits for the running passes and runs alone.
struct Loop<'a> {
    node: &'a Arc<Node>,
    template: &'a Template,
    changed: &'a Arc<Changed>,
    tracking: &'a Arc<Mutex<Tracking>>,
    watching: Watching,
    seen: BTreeSet<String>,
    faults: Faults,
}

/// A user's pass on the blocking pool: the user, and what the pass did.
type PassDone = (String, Result<PassReport, backend::BackendError>);

impl Loop<'_> {
    async fn run(&mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let node = self.node;
        let limit = parallel_passes();
        let rescan = node.config.rescan_interval();
        let mut next_rescan = Instant::now() + rescan;
        let mut running: tokio::task::JoinSet<PassDone> = tokio::task::JoinSet::new();
        // Whose pass each task is (a task that panicked returns no user).
        let mut busy: std::collections::HashMap<tokio::task::Id, String> = Default::default();
        // The users the index owes something, since when they are known to be owed.
        let mut owed: BTreeMap<String, Instant> = BTreeMap::new();
        let mut check_owed = true;
        let mut next_owed_poll = Instant::now() + OWED_POLL;
        loop {
            let lost = news(self.changed).lost;
            let full_due = lost || Instant::now() >= next_rescan;
            if full_due && running.is_empty() {
                if lost {
                    news(self.changed).lost = false;
                    tracing::warn!(
                        "the Maildir watcher lost events; passing over every user in full"
                    );
                    followed(self.tracking).clear();
                } else {
                    next_rescan = Instant::now() + rescan;
                }
                let following = Some(self.tracking);
                pass(
                    node,
                    self.template,
                    None,
                    &mut self.seen,
                    following,
                    &self.faults,
                )
                .await;
                watch_roots(Some(&mut self.watching), self.template, &self.seen);
                check_owed = true;
                continue;
            }
            if check_owed {
                check_owed = false;
                let now = Instant::now();
                for user in owed_users(node).await {
                    owed.entry(user).or_insert(now);
                }
            }
            let mut wake_at = next_owed_poll;
            if !full_due {
                let mut news = news(self.changed);
                let running_users: BTreeSet<String> = busy.values().cloned().collect();
                let plan = plan_passes(
                    &news.since,
                    &owed,
                    &running_users,
                    limit.saturating_sub(running.len()),
                    Instant::now(),
                );
                for user in plan.start {
                    owed.remove(&user);
                    let touched = news.take(&user);
                    let id = self.spawn(&mut running, user.clone(), touched);
                    busy.insert(id, user);
                }
                if let Some(at) = plan.next_ready {
                    wake_at = wake_at.min(at);
                }
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    // The passes under way finish (each ends in a consistent state anyway).
                    while running.join_next().await.is_some() {}
                    return;
                }
                _ = self.changed.wake.notified() => {}
                // The journal or a peer's session applied changes: they are owed to the disk.
                _ = node.wake_mirror.notified() => check_owed = true,
                _ = tokio::time::sleep_until(wake_at.into()) => {
                    if Instant::now() >= next_owed_poll {
                        check_owed = true;
                        next_owed_poll = Instant::now() + OWED_POLL;
                    }
                }
                Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                    match joined {
                        Ok((id, (user, report))) => {
                            busy.remove(&id);
                            after_pass(node, Some(&user), report, vec![user.clone()], &mut self.seen);
                        }
                        Err(e) => {
                            busy.remove(&e.id());
                            tracing::warn!(error = %e, "the Maildir pass failed");
                        }
                    }
                    watch_roots(Some(&mut self.watching), self.template, &self.seen);
                }
            }
        }
    }

    /// Starts `user`'s pass over what was `touched`; it holds only its own user's followed
    /// folders meanwhile.
    fn spawn(
        &self,
        running: &mut tokio::task::JoinSet<PassDone>,
        user: String,
        touched: Touched,
    ) -> tokio::task::Id {
        let store = Arc::clone(&self.node.store);
        let t = self.template.clone();
        let tracking = Arc::clone(self.tracking);
        let faults = self.faults.clone();
        running
            .spawn_blocking(move || {
                let root = t.root(&user);
                let mut mine = followed(&tracking).take_under(&root);
                let watched = Watched {
                    tracking: &mut mine,
                    touched,
                    trust: true,
                };
                let report = faults.around(|| backend::pass_watched(&store, &t, &user, watched));
                followed(&tracking).put_back(mine);
                (user, report)
            })
            .id()
    }
}

/// Which users' passes to start now, and when the next one not started will be ready.
#[derive(Debug, PartialEq, Eq)]
struct PassPlan {
    start: Vec<String>,
    next_ready: Option<Instant>,
}

/// The passes to start: of the users whose reports came at least [`SETTLE`] ago (`since`:
/// the first of each user's reports) or whom the index owes something (`owed`: since when
/// that is known), those with no pass `running`, the one waiting longest first, at most
/// `free` of them. `next_ready` is when the first user left waiting for its reports to
/// gather will be ready, while a slot is free (a user whose pass runs, or who waits for a
/// slot, is looked at again when a pass ends: waking for it sooner would only spin).
fn plan_passes(
    since: &BTreeMap<String, Instant>,
    owed: &BTreeMap<String, Instant>,
    running: &BTreeSet<String>,
    free: usize,
    now: Instant,
) -> PassPlan {
    let mut ready: Vec<(Instant, &String)> = since
        .iter()
        .filter(|(_, first)| **first + SETTLE <= now)
        .map(|(user, first)| (*first, user))
        .chain(owed.iter().map(|(user, at)| (*at, user)))
        .filter(|(_, user)| !running.contains(*user))
        .collect();
    ready.sort();
    let mut start: Vec<String> = Vec::new();
    for (_, user) in ready {
        if start.len() == free {
            break;
        }
        // A user both reported and owed is in `ready` twice: started once.
        if !start.contains(user) {
            start.push(user.clone());
        }
    }
    let next_ready = if start.len() < free {
        since
            .iter()
            .filter(|(user, _)| !running.contains(*user) && !start.contains(*user))
            .map(|(_, first)| *first + SETTLE)
            .filter(|at| *at > now)
            .min()
    } else {
        None
    };
    PassPlan { start, next_ready }
}

/// What the watcher reported and no pass took yet. A lock poisoned by a panic in the
/// watcher's callback is taken as lost events (every user is read in full, once) and cleared.
fn news(changed: &Changed) -> std::sync::MutexGuard<'_, News> {
    match changed.news.lock() {
        Ok(news) => news,
        Err(poisoned) => {
            let mut news = poisoned.into_inner();
            news.lost = true;
            changed.news.clear_poison();
            news
        }
    }
}

/// Watches every user's Maildir root that has been passed over, once. A Maildir made while
/// the watch on the parent was being set up (a user that arrived from a peer: mkdir of the
/// root, then cur/ new/ tmp/ at once) can have directories the recursive watch missed.
fn watch_roots(watcher: Option<&mut Watching>, template: &Template, seen: &BTreeSet<String>) {
    let Some(w) = watcher else { return };
    for user in seen {
        if w.roots.contains(user) {
            continue;
        }
        let root = template.root(user);
        match w.watcher.watch(&root) {
            Ok(()) => {
                w.roots.insert(user.clone());
            }
            Err(e) => tracing::debug!(%user, error = %e, "cannot watch the Maildir yet"),
        }
    }
}

/// The inotify watcher and the user roots it watches explicitly.
struct Watching {
    watcher: DirWatcher,
    roots: BTreeSet<String>,
}

/// One pass (all users, or one) on the blocking pool; remembers the users it looked at, so
/// their Maildirs are watched.
async fn pass(
    node: &Arc<Node>,
    template: &Template,
    user: Option<String>,
    seen: &mut BTreeSet<String>,
    tracking: Option<&Arc<Mutex<Tracking>>>,
    faults: &Faults,
) -> Option<PassReport> {
    let store = Arc::clone(&node.store);
    let t = template.clone();
    let one = user.clone();
    let tracking = tracking.map(Arc::clone);
    let faults = faults.clone();
    let result = tokio::task::spawn_blocking(move || {
        let report = faults.around(|| match (&one, tracking) {
            // Every user, with the watcher running: folders left agreeing are followed.
            (None, Some(tracking)) => backend::pass_following(&store, &t, &mut followed(&tracking)),
            _ => backend::pass(&store, &t, one.as_deref()),
        });
        let users: Vec<String> = match &one {
            Some(u) => vec![u.clone()],
            None => backend::known_users(&store, &t)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        (report, users)
    })
    .await;
    let (report, users) = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "the Maildir pass failed");
            return None;
        }
    };
    after_pass(node, user.as_deref(), report, users, seen)
}

/// The folders followed; none, if a pass panicked while it held them (what it was doing to
/// them is unknown).
fn followed(tracking: &Mutex<Tracking>) -> std::sync::MutexGuard<'_, Tracking> {
    tracking.lock().unwrap_or_else(|poisoned| {
        let mut t = poisoned.into_inner();
        t.clear();
        t
    })
}

/// How many users' passes driven by the watcher run at once: one per core, at most four.
/// Users' Maildirs and index rows are disjoint, so their passes only meet at the store's
/// commits; a change round that touched every user waits for the slowest user's pass instead
/// of the sum of them all.
fn parallel_passes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Records a pass for /status, logs what it changed and wakes the journal's shipping.
fn after_pass(
    node: &Arc<Node>,
    user: Option<&str>,
    report: Result<PassReport, backend::BackendError>,
    users: Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<PassReport> {
    record(node, &report);
    match report {
        Ok(report) => {
            seen.extend(users);
            if report.changed() {
                tracing::info!(
                    user = user.unwrap_or("*"),
                    imported = report.imported,
                    flags_from_disk = report.flags_from_disk,
                    expunged_on_disk = report.expunged_on_disk,
                    delivered = report.delivered,
                    flags_to_disk = report.flags_to_disk,
                    unlinked = report.unlinked,
                    renumbered = report.renumbered,
                    folders_read = report.folders_read,
                    folders_named = report.folders_named,
                    folders_listed_for_expunges = report.folders_listed_for_expunges,
                    "Maildir pass"
                );
                // What the disk gave is journaled: ship it now.
                if report.journaled() {
                    for p in &node.peers {
                        p.wake_ship.notify_one();
                    }
                }
            }
            Some(report)
        }
        Err(e) => {
            tracing::warn!(user = user.unwrap_or("*"), error = %e, "Maildir pass failed; what it owes stays owed and is retried");
            None
        }
    }
}

/// A crash on purpose, for the crash tests: `MERKMAIL_FAULT=<point>[@<n>]` makes `serve`
/// SIGKILL itself the n-th time a pass reaches that point (maildir::fault), so a test can
/// crash exactly between two steps of a pass instead of after a delay.
#[derive(Clone, Default)]
struct Faults {
    armed: Option<(Fault, Arc<std::sync::atomic::AtomicU32>)>,
}

impl Faults {
    fn from_env() -> Faults {
        let Ok(text) = std::env::var("MERKMAIL_FAULT") else {
            return Faults::default();
        };
        match Fault::parse(&text) {
            Ok(f) => {
                tracing::warn!(
                    point = f.point.name(),
                    nth = f.nth,
                    "MERKMAIL_FAULT: this process kills itself when a Maildir pass gets there"
                );
                Faults {
                    armed: Some((f, Arc::default())),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "ignored");
                Faults::default()
            }
        }
    }

    /// Runs a pass, with the armed point (if any) watched on this thread.
    fn around<R>(&self, pass: impl FnOnce() -> R) -> R {
        let Some((f, count)) = self.armed.clone() else {
            return pass();
        };
        fault::with_hook(
            move |point| {
                let reached = count.fetch_add(
                    u32::from(point == f.point),
                    std::sync::atomic::Ordering::SeqCst,
                );
                if point == f.point && reached + 1 == f.nth {
                    tracing::warn!(point = point.name(), "MERKMAIL_FAULT reached: SIGKILL");
                    // SAFETY: kill(2) on our own pid has no memory effects; SIGKILL ends the
                    // process at once, as an operator's `kill -9` or the OOM killer would.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGKILL);
                    }
                }
            },
            pass,
        )
    }
}

/// Problems kept for /status, newest last.
const PROBLEMS_KEPT: usize = 20;

/// What /status shows of the passes.
fn record(node: &Node, report: &Result<PassReport, backend::BackendError>) {
    let mut view = super::node::lock(&node.maildir);
    let Some(v) = view.as_mut() else { return };
    v.passes_total += 1;
    v.last_pass_ms = Some(super::node::now_ms());
    match report {
        Ok(r) => {
            v.imported_total += r.imported;
            v.delivered_total += r.delivered;
            v.problems.extend(r.problems.iter().cloned());
        }
        Err(e) => {
            v.failed_passes_total += 1;
            v.problems.push(format!("pass failed: {e}"));
        }
    }
    // The same problem seen pass after pass is shown once.
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<String> = v
        .problems
        .iter()
        .rev()
        .filter(|p| seen.insert((*p).clone()))
        .take(PROBLEMS_KEPT)
        .cloned()
        .collect();
    kept.reverse();
    v.problems = kept;
}

/// Watches the directory that holds the users' Maildirs, recursively; each event names the
/// user whose Maildir it is in.
fn watch(template: &Template, changed: Arc<Changed>) -> std::io::Result<Watching> {
    let parent: PathBuf = template.parent().to_path_buf();
    let t = template.clone();
    let watcher = DirWatcher::new(move |event: notify::Result<notify::Event>| {
        let wanted = match changed.news.lock() {
            Ok(mut news) => news.note(&t, event),
            Err(_) => true,
        };
        if wanted {
            changed.wake.notify_one();
        }
    })?;
    std::fs::create_dir_all(&parent)?;
    watcher.watch(&parent)?;
    Ok(Watching {
        watcher,
        roots: BTreeSet::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(list: &[(&str, Instant)]) -> BTreeMap<String, Instant> {
        list.iter().map(|(u, at)| (u.to_string(), *at)).collect()
    }

    /// Reports gather for SETTLE from the first; owed users are ready at once; the user
    /// waiting longest goes first; a user is started once, never beside its own running
    /// pass, and no more than the free slots.
    #[test]
    fn passes_start_longest_waiting_first_within_the_free_slots() {
        let t0 = Instant::now();
        let now = t0 + SETTLE * 10;
        let since = users(&[
            ("ann", now - SETTLE * 2),
            ("bob", now - SETTLE / 2),
            ("cat", now - SETTLE * 5),
            ("dan", now - SETTLE * 3),
        ]);
        let owed = users(&[("eve", now - SETTLE), ("ann", now - SETTLE * 9)]);
        let running: BTreeSet<String> = ["dan".to_string()].into();
        let plan = plan_passes(&since, &owed, &running, 8, now);
        // ann (owed longest), cat, eve; dan runs; bob's reports are not 30 ms old yet.
        assert_eq!(plan.start, ["ann", "cat", "eve"]);
        assert_eq!(plan.next_ready, Some(now - SETTLE / 2 + SETTLE));

        let plan = plan_passes(&since, &owed, &running, 2, now);
        assert_eq!(plan.start, ["ann", "cat"]);
        assert_eq!(
            plan.next_ready, None,
            "no slot free: the next pass to end wakes the loop"
        );
    }

    /// A user whose pass runs, with reports that are long ready, never sets a wake-up in the
    /// past (the loop would spin until that pass ends).
    #[test]
    fn a_running_users_reports_do_not_wake_the_loop() {
        let now = Instant::now() + SETTLE * 10;
        let since = users(&[("ann", now - SETTLE * 4)]);
        let running: BTreeSet<String> = ["ann".to_string()].into();
        let plan = plan_passes(&since, &BTreeMap::new(), &running, 3, now);
        assert_eq!(
            plan,
            PassPlan {
                start: vec![],
                next_ready: None
            }
        );
        let plan = plan_passes(&since, &BTreeMap::new(), &BTreeSet::new(), 3, now);
        assert_eq!(plan.start, ["ann"]);
    }
}
