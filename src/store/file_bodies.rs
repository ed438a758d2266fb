//! Bodies of a live-Maildir store (store/mirror.rs): the mail server's files hold them.
//!
//! Reference counts stay in BODY_REFS and each held body's size in MIRROR_BODY_SIZES, as for
//! any store. The bytes are read from a file that holds the message (MIRROR_HOMES names, per
//! digest, the messages whose file is on disk) through [`MailFiles`], which the Maildir side
//! provides. A body that no file holds yet (replicated, or appended through merkmail, and not
//! delivered into the Maildir yet) is kept as a file of its own in the spool directory
//! (`spool/` beside the store; MIRROR_SPOOL names it) until its delivery is settled: the
//! spool the mirror delivers from, by a hard link where it can, so that a replicated body is
//! written once. (Stores before session 12 spooled into the body tables, BODY_PIECES and
//! BODY_TAILS, which are still read, and still hold a repaired copy.) So after replication
//! settles, the redb file holds the index and not the mail.
//!
//! Crash safety: a spool file is written before the row that names it commits, and flushed
//! before the first durable commit after it ([`BodyStore::before_commit`]: a staging commit
//! does not wait for the disk, and becomes durable only with a later durable commit, which
//! flushes the spool first; until then the kernel writes the files back on its own); a
//! transaction that fails removes the files it wrote ([`BodyStore::after_transaction`]); a file no committed row names (an
//! aborted transaction, a crash before the commit, a body since delivered) is removed by
//! [`BodyStore::sweep`], in a write transaction of its own, so never while a writer that may
//! name it is half-way.

use super::body::{
    assemble, count_ref, counted_bodies, forget_unreferenced, has_bytes, put_bytes, remove_bytes,
    unmark_damaged, BodyStore, BodyVisitor, RedbBodies,
};
use super::error::StoreError;
use super::keys;
use super::tables::{
    BODY_PIECES, BODY_REFS, BODY_TAILS, MAILBOXES, MIRROR_BODY_SIZES, MIRROR_FILES, MIRROR_FOLDERS,
    MIRROR_HOMES, MIRROR_SPOOL,
};
use super::tx::decode;
use crate::model::{Digest, MailboxGuid, MailboxRecord};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Reads the mail server's files (implemented by src/maildir/backend.rs).
pub trait MailFiles: Send + Sync {
    /// The bytes of the file with base name `base` in `user`'s folder of `mailbox`, or `None`
    /// if there is no such file. `flags` are the flags its name showed when index and disk
    /// last agreed: where the file is can be told from them without listing the folder.
    fn read(
        &self,
        user: &str,
        mailbox: &str,
        base: &str,
        flags: &[String],
    ) -> std::io::Result<Option<Vec<u8>>>;
}

/// How the store reaches the files of a template (`/srv/vmail/%u/Maildir`).
pub type MailFilesFor = fn(&str) -> Result<Arc<dyn MailFiles>, String>;

static MAIL_FILES: std::sync::OnceLock<MailFilesFor> = std::sync::OnceLock::new();

/// Tells the store how to read a live Maildir's files; a store made with `init --maildir`
/// cannot be opened before this is called (the command line calls it at start).
pub fn install_mail_files(f: MailFilesFor) {
    let _ = MAIL_FILES.set(f);
}

pub(crate) fn mail_files_for(template: &str) -> Result<Arc<dyn MailFiles>, StoreError> {
    let f = MAIL_FILES.get().ok_or_else(|| {
        StoreError::Invalid(format!(
            "this store keeps its mail in the Maildirs at {template}; open it through merkmail's Maildir backend"
        ))
    })?;
    f(template).map_err(StoreError::Invalid)
}

/// The key of a home: digest, then the message key.
pub(crate) fn home_key(digest: &Digest, user: &str, guid: MailboxGuid, uid: u32) -> Vec<u8> {
    let mut k = digest.0.to_vec();
    k.extend_from_slice(&keys::message(user, guid, uid));
    k
}

/// The spool directory's name in the store's directory.
pub(crate) const SPOOL_DIR: &str = "spool";

pub struct FileBodies {
    inner: RedbBodies,
    files: Arc<dyn MailFiles>,
    /// The spool directory (made when the first body is spooled).
    spool: PathBuf,
    /// Spool files written and not yet flushed: flushed before the next durable commit.
    unflushed: Mutex<Vec<PathBuf>>,
    /// Spool files written by the transaction under way (write transactions take turns):
    /// removed if it does not commit.
    written: Mutex<Vec<PathBuf>>,
    /// Spool files whose row a transaction removed (digest, name): the next sweep removes
    /// each that no committed row names (the transaction may have been aborted).
    forgotten: Mutex<Vec<(Digest, String)>>,
    /// Makes spool file names unique within this process (with its id and the time).
    counter: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, StoreError> {
    m.lock()
        .map_err(|_| StoreError::Corrupt("the spool's lock is poisoned".into()))
}

fn spool_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::io(
        format!("cannot {what} the spool file {}", path.display()),
        e,
    )
}

impl FileBodies {
    /// Bodies in the Maildir files `files` reads, spooled in `spool` until delivered.
    pub fn new(files: Arc<dyn MailFiles>, spool: PathBuf) -> FileBodies {
        FileBodies {
            inner: RedbBodies::default(),
            files,
            spool,
            unflushed: Mutex::new(Vec::new()),
            written: Mutex::new(Vec::new()),
            forgotten: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        }
    }

    /// Writes `bytes` to a new spool file and names it as the body's spool copy (in place of
    /// any earlier one, which the next sweep removes).
    fn spool_put(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Unique without a look at the directory: a name is never reused, so a sweep can
        // never remove a file a later row names.
        let name = format!(
            "{digest}.{}.{}.{}",
            std::process::id(),
            now.as_nanos(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.spool.join(&name);
        // Mail: readable by the owner alone (the delivery gives the folder's owner and mode).
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        };
        let mut file = match create() {
            // The first body spooled (or the directory was removed): it is made, once.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.spool)
                    .map_err(|e| spool_err(&self.spool, "make the directory of", e))?;
                create()
            }
            other => other,
        }
        .map_err(|e| spool_err(&path, "create", e))?;
        if let Err(e) = file.write_all(bytes) {
            // A full disk, say: nothing of it stays.
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(spool_err(&path, "write", e));
        }
        lock(&self.written)?.push(path.clone());
        lock(&self.unflushed)?.push(path);
        let earlier = txn
            .open_table(MIRROR_SPOOL)?
            .insert(digest.0.as_slice(), name.as_str())?
            .map(|old| old.value().to_string());
        if let Some(old) = earlier {
            self.forget_file(digest, old)?;
        }
        self.inner.count_written(bytes.len() as u64);
        Ok(())
    }

    /// The body no longer needs its spool copy: the row goes now, the file at the next sweep.
    fn spool_forget(&self, txn: &WriteTransaction, digest: &Digest) -> Result<(), StoreError> {
        let removed = txn
            .open_table(MIRROR_SPOOL)?
            .remove(digest.0.as_slice())?
            .map(|old| old.value().to_string());
        if let Some(name) = removed {
            self.forget_file(digest, name)?;
        }
        Ok(())
    }

    fn forget_file(&self, digest: &Digest, name: String) -> Result<(), StoreError> {
        lock(&self.forgotten)?.push((*digest, name));
        Ok(())
    }

    /// The path of the body's spool copy, if a row names one.
    fn spool_path(
        &self,
        spool: &impl ReadableTable<&'static [u8], &'static str>,
        digest: &Digest,
    ) -> Result<Option<PathBuf>, StoreError> {
        Ok(spool
            .get(digest.0.as_slice())?
            .map(|name| self.spool.join(name.value())))
    }

    /// The bytes of the body's spool copy, if it has one and the file is there.
    fn spool_read(
        &self,
        spool: &impl ReadableTable<&'static [u8], &'static str>,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(path) = self.spool_path(spool, digest)? else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            // Gone (removed by hand, or lost with a disk): a file that holds it, if any, is
            // read instead; with none, the checker repairs the body from a peer.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(%digest, path = %path.display(), "a spooled body's file is missing");
                Ok(None)
            }
            Err(e) => Err(spool_err(&path, "read", e)),
        }
    }

    /// The bytes of `digest` from the first of its homes whose file can be read.
    fn read_from_files(
        &self,
        homes: &impl ReadableTable<&'static [u8], &'static [u8]>,
        files_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
        folders: &impl ReadableTable<&'static [u8], &'static [u8]>,
        mailboxes: &impl ReadableTable<&'static [u8], &'static [u8]>,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let start = digest.0.to_vec();
        let mut end = start.clone();
        end.push(0xff);
        for item in homes.range(start.as_slice()..=end.as_slice())? {
            let (k, _) = item?;
            let Some(message_key) = k.value().get(32..) else {
                continue;
            };
            let Some((user, guid, _)) = keys::split_message(message_key) else {
                continue;
            };
            let Some(row) = files_t.get(message_key)? else {
                continue;
            };
            let row = decode::<super::FileRow>(row.value(), "a Maildir file row")?;
            let (base, flags) = (row.base, row.disk_flags);
            let mkey = keys::mailbox(&user, guid);
            let name = match folders.get(mkey.as_slice())? {
                Some(v) => decode::<super::FolderRow>(v.value(), "a Maildir folder row")?.name,
                None => match mailboxes.get(mkey.as_slice())? {
                    Some(v) => decode::<MailboxRecord>(v.value(), "a mailbox")?.name,
                    None => continue,
                },
            };
            match self.files.read(&user, &name, &base, &flags) {
                Ok(Some(bytes)) => return Ok(Some(bytes)),
                Ok(None) => continue,
                Err(e) => {
                    return Err(StoreError::io(
                        format!("cannot read the file {base} of {user}'s {name}"),
                        e,
                    ))
                }
            }
        }
        Ok(None)
    }
}

fn has_home(txn: &WriteTransaction, digest: &Digest) -> Result<bool, StoreError> {
    let homes = txn.open_table(MIRROR_HOMES)?;
    let start = digest.0.to_vec();
    let mut end = start.clone();
    end.push(0xff);
    let found = homes
        .range(start.as_slice()..=end.as_slice())?
        .next()
        .is_some();
    Ok(found)
}

impl BodyStore for FileBodies {
    fn acquire(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        // Counted like a body found on disk; only its bytes differ: spooled until a file
        // holds them.
        let new = self.acquire_on_disk(txn, digest, bytes.len() as u64)?;
        if new && !has_home(txn, digest)? {
            // No file holds it yet: spooled until its delivery is settled.
            self.spool_put(txn, digest, bytes)?;
        } else if !new && unmark_damaged(txn, digest)? {
            put_bytes(txn, digest, bytes)?;
            self.inner.count_written(bytes.len() as u64);
        }
        Ok(new)
    }

    fn acquire_on_disk(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        size: u64,
    ) -> Result<bool, StoreError> {
        let current = count_ref(txn, digest)?;
        if current.is_none() {
            txn.open_table(MIRROR_BODY_SIZES)?
                .insert(digest.0.as_slice(), size)?;
        }
        Ok(current.is_none())
    }

    fn keep_from_file(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        (user, mailbox, base): (&str, &str, &str),
    ) -> Result<(), StoreError> {
        let referenced = txn
            .open_table(BODY_REFS)?
            .get(digest.0.as_slice())?
            .is_some_and(|v| v.value() > 0);
        if !referenced
            || has_home(txn, digest)?
            || has_bytes(&txn.open_table(BODY_TAILS)?, digest)?
            || txn
                .open_table(MIRROR_SPOOL)?
                .get(digest.0.as_slice())?
                .is_some()
        {
            return Ok(());
        }
        match self.files.read(user, mailbox, base, &[]) {
            Ok(Some(bytes)) if Digest::of(&bytes) == *digest => {
                put_bytes(txn, digest, &bytes)?;
                self.inner.count_written(bytes.len() as u64);
                // A good copy: an earlier mark (a move that found its file gone) no longer
                // holds.
                super::body::unmark_damaged(txn, digest)?;
            }
            found => {
                // The file is gone or changed: a peer has the body; the checker fetches it.
                tracing::warn!(%digest, user, mailbox, base, ?found, "a moved message's file could not be read; its body is marked for repair from a peer");
                let mark = super::body::DamagedMark {
                    found_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    actual: Digest::of(&[]),
                };
                super::body::mark_damaged(txn, digest, &mark)?;
            }
        }
        Ok(())
    }

    fn add_ref(&self, txn: &WriteTransaction, digest: &Digest) -> Result<(), StoreError> {
        self.inner.add_ref(txn, digest)
    }

    fn release(&self, txn: &WriteTransaction, digest: &Digest) -> Result<(), StoreError> {
        self.inner.release(txn, digest)
    }

    fn references_of(&self, txn: &WriteTransaction, digest: &Digest) -> Result<u64, StoreError> {
        self.inner.references_of(txn, digest)
    }

    fn collect(&self, txn: &WriteTransaction, digest: &Digest) -> Result<Option<u64>, StoreError> {
        if !forget_unreferenced(txn, digest)? {
            return Ok(None);
        }
        remove_bytes(txn, digest)?;
        self.spool_forget(txn, digest)?;
        let size = txn
            .open_table(MIRROR_BODY_SIZES)?
            .remove(digest.0.as_slice())?
            .map(|v| v.value());
        Ok(Some(size.unwrap_or(0)))
    }

    fn read(&self, txn: &ReadTransaction, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let spooled = assemble(
            &txn.open_table(BODY_PIECES)?,
            &txn.open_table(BODY_TAILS)?,
            digest,
        )?;
        if spooled.is_some() {
            return Ok(spooled);
        }
        if let Some(bytes) = self.spool_read(&txn.open_table(MIRROR_SPOOL)?, digest)? {
            return Ok(Some(bytes));
        }
        self.read_from_files(
            &txn.open_table(MIRROR_HOMES)?,
            &txn.open_table(MIRROR_FILES)?,
            &txn.open_table(MIRROR_FOLDERS)?,
            &txn.open_table(MAILBOXES)?,
            digest,
        )
    }

    fn holds(&self, txn: &ReadTransaction, digest: &Digest) -> Result<bool, StoreError> {
        self.inner.holds(txn, digest)
    }

    fn references(&self, txn: &ReadTransaction) -> Result<Vec<(Digest, u64)>, StoreError> {
        counted_bodies(txn, MIRROR_BODY_SIZES, "recorded size")
    }

    fn replace(
        &self,
        txn: &WriteTransaction,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        if txn
            .open_table(BODY_REFS)?
            .get(digest.0.as_slice())?
            .is_none()
        {
            return Ok(false);
        }
        // The good copy is spooled (in redb, which reads find first); the next delivery or
        // read uses it.
        put_bytes(txn, digest, bytes)?;
        self.spool_forget(txn, digest)?;
        self.inner.count_written(bytes.len() as u64);
        unmark_damaged(txn, digest)?;
        Ok(true)
    }

    fn count(&self, txn: &ReadTransaction) -> Result<u64, StoreError> {
        Ok(txn.open_table(MIRROR_BODY_SIZES)?.len()?)
    }

    fn for_each(&self, txn: &ReadTransaction, f: &mut BodyVisitor<'_>) -> Result<(), StoreError> {
        for (digest, _) in self.references(txn)? {
            match self.read(txn, &digest)? {
                Some(bytes) => f(digest, &bytes)?,
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "body {digest} is referenced but no file holds it"
                    )))
                }
            }
        }
        Ok(())
    }

    fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }

    fn housed(&self, txn: &WriteTransaction, digest: &Digest) -> Result<(), StoreError> {
        remove_bytes(txn, digest)?;
        self.spool_forget(txn, digest)
    }

    fn after_transaction(&self, committed: bool) {
        let Ok(mut written) = lock(&self.written) else {
            return;
        };
        let written = std::mem::take(&mut *written);
        if committed {
            return;
        }
        // Named by no row: the transaction that wrote them did not commit.
        for path in written {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the spool file of a transaction that did not commit; the store's next opening does");
                }
            }
        }
    }

    fn before_commit(&self) -> Result<(), StoreError> {
        let written = std::mem::take(&mut *lock(&self.unflushed)?);
        if written.is_empty() {
            return Ok(());
        }
        flush(&self.spool, &written)
    }

    fn spooled_file(
        &self,
        txn: &ReadTransaction,
        digest: &Digest,
    ) -> Result<Option<PathBuf>, StoreError> {
        self.spool_path(&txn.open_table(MIRROR_SPOOL)?, digest)
    }

    fn sweep(&self, txn: &WriteTransaction, everything: bool) -> Result<u64, StoreError> {
        let spool = txn.open_table(MIRROR_SPOOL)?;
        let forgotten = std::mem::take(&mut *lock(&self.forgotten)?);
        let mut doomed = Vec::new();
        if everything {
            // A listing: also what a crash or an aborted transaction left. (Only when the
            // store opens: a directory that once held an initial copy's 100 000 files lists
            // slowly even when empty, since ext4 does not shrink directories.)
            let entries = match std::fs::read_dir(&self.spool) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(spool_err(&self.spool, "list", e)),
            };
            let named: std::collections::HashSet<String> = spool
                .iter()?
                .map(|item| item.map(|(_, name)| name.value().to_string()))
                .collect::<Result<_, _>>()?;
            for entry in entries {
                let entry = entry.map_err(|e| spool_err(&self.spool, "list", e))?;
                if !named.contains(entry.file_name().to_string_lossy().as_ref()) {
                    doomed.push(entry.path());
                }
            }
        } else {
            for (digest, name) in forgotten {
                // Still named: the transaction that let it go was aborted.
                let named = spool
                    .get(digest.0.as_slice())?
                    .is_some_and(|now| now.value() == name);
                if !named {
                    doomed.push(self.spool.join(name));
                }
            }
        }
        let mut removed = 0;
        for path in doomed {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(spool_err(&path, "remove", e)),
            }
        }
        Ok(removed)
    }
}

/// Spool files fewer than this are flushed one by one: `syncfs` writes back every dirty page
/// of the file system, which on a busy server (or beside a change round's other writers)
/// costs more than a few `fsync`s.
const SYNCFS_FROM: usize = 16;

/// Puts freshly written spool files on disk: a `fsync` of each (and of the directory) for a
/// few; for more, one `syncfs` of their file system (one journal commit for all of them), or,
/// where that is refused, a `fsync` of each.
fn flush(dir: &Path, files: &[PathBuf]) -> Result<(), StoreError> {
    #[cfg(target_os = "linux")]
    if files.len() >= SYNCFS_FROM {
        use std::os::fd::AsRawFd;
        let handle = std::fs::File::open(dir).map_err(|e| spool_err(dir, "open", e))?;
        // SAFETY: syncfs only reads the descriptor, which `handle` keeps open for the call.
        if unsafe { libc::syncfs(handle.as_raw_fd()) } == 0 {
            return Ok(());
        }
    }
    for path in files {
        match std::fs::File::open(path).and_then(|f| f.sync_all()) {
            Ok(()) => {}
            // Written by a transaction that did not commit, and swept since.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(spool_err(path, "flush", e)),
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| spool_err(dir, "flush", e))
}
