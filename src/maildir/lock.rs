//! Dotlocks as Dovecot takes them (`dovecot-uidlist.lock`, `dovecot-keywords.lock`): a file
//! made by `link()` of a temporary file, holding `pid:hostname`, with Dovecot's stale rules.
//!
//! Rules, each because Dovecot applies the same one to us and we must be indistinguishable:
//! - the lock appears atomically with its content (link of a finished temporary file), so a
//!   waiter never reads a half-written `pid:hostname`;
//! - a lock whose pid is dead on this host is taken over at once (its holder crashed);
//! - otherwise a lock whose mtime has not moved for [`LockSettings::stale_after`] (120 s) is
//!   stale and taken over; a long holder therefore calls [`DotLock::touch`];
//! - a waiter gives up after [`LockSettings::give_up_after`] (about two minutes) with
//!   [`LockError::Timeout`] naming the holder;
//! - releasing (on drop) removes the lock only if it is still ours (same inode), so a holder
//!   that was declared stale never removes its successor's lock.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How long locks live and how long waiters wait. [`Default`] is Dovecot's uidlist setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockSettings {
    /// A lock whose mtime is older than this (and whose holder is not known dead) is stale.
    pub stale_after: Duration,
    /// A waiter gives up after this long.
    pub give_up_after: Duration,
    /// The longest sleep between two attempts; the first sleeps are shorter.
    pub max_poll: Duration,
}

impl Default for LockSettings {
    fn default() -> Self {
        // Dovecot: MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT is two minutes, and a waiter waits that
        // plus two seconds, so it never gives up on a lock that is about to turn stale.
        LockSettings {
            stale_after: Duration::from_secs(120),
            give_up_after: Duration::from_secs(122),
            max_poll: Duration::from_millis(200),
        }
    }
}

/// Why a lock could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else held the lock for the whole wait. Nothing was changed.
    #[error("{}: still locked by {holder:?} after {waited:?}; giving up", path.display())]
    Timeout {
        path: PathBuf,
        /// The lock's content (`pid:hostname`), when it could be read.
        holder: Option<String>,
        waited: Duration,
    },
    /// The lock file is no longer ours (another process took it over as stale).
    #[error("{}: lock was taken over by someone else", path.display())]
    Lost { path: PathBuf },
    /// A filesystem call failed. No lock is held.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> LockError {
    let path = path.to_path_buf();
    move |source| LockError::Io { path, op, source }
}

/// This host's name as `gethostname()` gives it (Dovecot's `my_hostname`).
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Whether a process with this pid exists on this host. A pid we cannot judge counts as alive,
/// so that only the stale timeout removes its lock.
fn pid_alive(pid: u32) -> bool {
    match fs::metadata(format!("/proc/{pid}")) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::NotFound,
    }
}

/// A held dotlock. Dropping it releases the lock if it is still ours.
#[derive(Debug)]
pub struct DotLock {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What a waiter found in someone else's lock.
enum Verdict {
    /// The holder is gone or the lock is stale: remove it and try again at once.
    TakeOver,
    /// Wait and retry; the content is kept for the timeout error.
    Wait(Option<String>),
}

fn judge(lock_path: &Path, settings: &LockSettings, host: &str) -> Verdict {
    let Ok(meta) = fs::symlink_metadata(lock_path) else {
        // Vanished between our link() and now: just try again.
        return Verdict::Wait(None);
    };
    let content = fs::read_to_string(lock_path).ok();
    if let Some((pid, lock_host)) = content.as_deref().and_then(|c| c.trim().split_once(':')) {
        if lock_host == host {
            if let Ok(pid) = pid.parse::<u32>() {
                if !pid_alive(pid) {
                    return Verdict::TakeOver;
                }
            }
        }
    }
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    if age > settings.stale_after {
        return Verdict::TakeOver;
    }
    Verdict::Wait(content)
}

impl DotLock {
    /// Takes `<target>.lock`, making the temporary file in `temp_dir` (same filesystem). The
    /// temporary file, and so the lock, gets `owner` (uid, gid) when given, so that Dovecot,
    /// running as the mail user, can read who holds it.
    pub fn acquire(
        target: &Path,
        temp_dir: &Path,
        owner: Option<(u32, u32)>,
        settings: &LockSettings,
    ) -> Result<DotLock, LockError> {
        let mut lock_name = target.file_name().unwrap_or_default().to_os_string();
        lock_name.push(".lock");
        let lock_path = target.with_file_name(lock_name);
        let host = hostname();
        let temp = temp_dir.join(format!(
            ".lock.{}.{}.{}",
            host.replace(['/', ':'], "_"),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&temp)
                .map_err(io(&temp, "create lock temporary"))?;
            file.write_all(format!("{}:{host}", std::process::id()).as_bytes())
                .map_err(io(&temp, "write lock temporary"))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(io(&temp, "chown lock temporary"))?;
            }
        }
        let result = Self::link_loop(&temp, &lock_path, settings, &host);
        // The temporary name is ours alone; it is removed whether or not we got the lock.
        let _ = fs::remove_file(&temp);
        result
    }

    fn link_loop(
        temp: &Path,
        lock_path: &Path,
        settings: &LockSettings,
        host: &str,
    ) -> Result<DotLock, LockError> {
        let start = Instant::now();
        let mut poll = Duration::from_millis(5);
        loop {
            match fs::hard_link(temp, lock_path) {
                Ok(()) => {
                    let meta =
                        fs::symlink_metadata(lock_path).map_err(io(lock_path, "stat lock"))?;
                    return Ok(DotLock {
                        path: lock_path.to_path_buf(),
                        dev: meta.dev(),
                        ino: meta.ino(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(lock_path, "link lock")(e)),
            }
            match judge(lock_path, settings, host) {
                Verdict::TakeOver => {
                    tracing::warn!(lock = %lock_path.display(), "taking over a stale or orphaned lock");
                    match fs::remove_file(lock_path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(io(lock_path, "remove stale lock")(e)),
                    }
                }
                Verdict::Wait(holder) => {
                    let waited = start.elapsed();
                    if waited >= settings.give_up_after {
                        return Err(LockError::Timeout {
                            path: lock_path.to_path_buf(),
                            holder,
                            waited,
                        });
                    }
                    std::thread::sleep(poll);
                    poll = (poll * 2).min(settings.max_poll);
                }
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the lock file on disk is still the one we made.
    pub fn is_ours(&self) -> bool {
        fs::symlink_metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    /// Moves the lock's mtime to now, so that waiters do not judge a long holder stale.
    pub fn touch(&self) -> Result<(), LockError> {
        if !self.is_ours() {
            return Err(LockError::Lost {
                path: self.path.clone(),
            });
        }
        let file = File::options()
            .write(true)
            .open(&self.path)
            .map_err(io(&self.path, "open lock"))?;
        file.set_modified(SystemTime::now())
            .map_err(io(&self.path, "touch lock"))
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        if self.is_ours() {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(lock = %self.path.display(), error = %e, "could not release lock");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};

    fn quick() -> LockSettings {
        LockSettings {
            stale_after: Duration::from_secs(120),
            give_up_after: Duration::from_millis(300),
            max_poll: Duration::from_millis(10),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("merkmail-lock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn lock_holds_pid_and_host_and_is_released_on_drop() {
        let dir = temp_dir("basic");
        let target = dir.join("dovecot-uidlist");
        let lock = DotLock::acquire(&target, &dir, None, &quick()).expect("lock");
        let content = fs::read_to_string(dir.join("dovecot-uidlist.lock")).expect("read");
        assert_eq!(content, format!("{}:{}", std::process::id(), hostname()));
        assert!(lock.is_ours());
        lock.touch().expect("touch");
        // Only the lock remains: the temporary file is gone.
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(names.len(), 1);
        drop(lock);
        assert!(!dir.join("dovecot-uidlist.lock").exists());
    }

    #[test]
    fn a_live_holder_makes_waiters_time_out_with_its_name() {
        let dir = temp_dir("timeout");
        let target = dir.join("dovecot-uidlist");
        let _held = DotLock::acquire(&target, &dir, None, &quick()).expect("lock");
        match DotLock::acquire(&target, &dir, None, &quick()) {
            Err(LockError::Timeout { holder, .. }) => {
                assert_eq!(
                    holder,
                    Some(format!("{}:{}", std::process::id(), hostname()))
                )
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn threads_take_the_lock_one_at_a_time() {
        let dir = temp_dir("threads");
        let target = dir.join("dovecot-uidlist");
        let inside = Arc::new(Mutex::new(0u32));
        let barrier = Arc::new(Barrier::new(4));
        let settings = LockSettings {
            give_up_after: Duration::from_secs(20),
            ..quick()
        };
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (dir, target, inside, barrier) =
                    (dir.clone(), target.clone(), inside.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..10 {
                        let lock = DotLock::acquire(&target, &dir, None, &settings).expect("lock");
                        {
                            let mut n = inside.lock().expect("mutex");
                            *n += 1;
                            assert_eq!(*n, 1, "two holders at once");
                        }
                        std::thread::sleep(Duration::from_millis(1));
                        *inside.lock().expect("mutex") -= 1;
                        drop(lock);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    }

    #[test]
    fn a_dead_pid_on_this_host_is_taken_over_at_once() {
        let dir = temp_dir("dead");
        let target = dir.join("dovecot-uidlist");
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait");
        fs::write(
            dir.join("dovecot-uidlist.lock"),
            format!("{dead}:{}", hostname()),
        )
        .expect("w");
        let start = Instant::now();
        let lock = DotLock::acquire(&target, &dir, None, &quick()).expect("take over");
        assert!(start.elapsed() < Duration::from_millis(200));
        assert!(lock.is_ours());
    }

    #[test]
    fn a_lock_of_another_host_waits_until_stale() {
        let dir = temp_dir("stale");
        let target = dir.join("dovecot-uidlist");
        let lock_path = dir.join("dovecot-uidlist.lock");
        // Another host's pid cannot be judged: only the age counts.
        fs::write(&lock_path, "1:some-other-host").expect("w");
        assert!(matches!(
            DotLock::acquire(&target, &dir, None, &quick()),
            Err(LockError::Timeout { .. })
        ));
        let old = SystemTime::now() - Duration::from_secs(121);
        File::options()
            .write(true)
            .open(&lock_path)
            .and_then(|f| f.set_modified(old))
            .expect("age the lock");
        let lock = DotLock::acquire(&target, &dir, None, &quick()).expect("stale takeover");
        // The old holder, had it come back, finds its lock gone: touching says so.
        assert!(lock.is_ours());
        let stolen = DotLock {
            path: lock_path.clone(),
            dev: 0,
            ino: 0,
        };
        assert!(matches!(stolen.touch(), Err(LockError::Lost { .. })));
        // Dropping a lock that is not ours leaves the real holder's lock alone.
        drop(stolen);
        assert!(lock_path.exists());
    }

    #[test]
    fn processes_contend_through_the_file_system() {
        // Another process (a shell, as Dovecot would be) holds the lock for a while; we wait
        // and get it after it lets go.
        let dir = temp_dir("procs");
        let lock_path = dir.join("dovecot-uidlist.lock");
        let script = format!(
            "echo \"$$:{}\" > {p}.t && ln {p}.t {p} && rm {p}.t && sleep 0.3 && rm {p}",
            hostname(),
            p = lock_path.display()
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .expect("sh");
        let start = Instant::now();
        while !lock_path.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let settings = LockSettings {
            give_up_after: Duration::from_secs(10),
            ..quick()
        };
        let lock = DotLock::acquire(&dir.join("dovecot-uidlist"), &dir, None, &settings)
            .expect("lock after the shell");
        assert!(start.elapsed() >= Duration::from_millis(250));
        assert!(child.wait().expect("wait").success());
        assert!(lock.is_ours());
    }
}
