//! The mail store on redb: the only module that imports redb.
//!
//! Every mutation is one write transaction that changes the records and the Merkle tree
//! together (see [`Store::write`]), so a crash between operations never leaves them apart.

mod batch;
mod body;
mod error;
mod file_bodies;
mod identity;
mod journal;
mod keys;
mod mirror;
mod ops;
mod purge;
mod read;
mod replica;
mod space;
mod tables;
mod tx;
mod verify;

pub use body::DamagedMark;
pub use body::{BodyStore, RedbBodies, PIECE};
pub use error::StoreError;
pub use file_bodies::{install_mail_files, MailFiles, MailFilesFor};
pub use identity::IdentityFixes;
pub use journal::{
    InboundApplied, InboundStats, JournalRecord, PeerJournal, SenderJournal, APPLY_GROUP,
    DEFAULT_JOURNAL_BOUND,
};
pub use mirror::{
    file_flags, DiskFlags, FileRow, FolderRow, FolderState, FoundOnDisk, FoundOutcome,
    MailboxMirror, MirrorEdit, MirrorSettle, OwedToken, UidToken,
};
pub use ops::{
    inbox_uidvalidity, AppendOutcome, Counters, MailboxInfo, MessageInfo, NewMessage,
    PreparedMailbox,
};
pub use purge::{AgedTombstone, Purged, TombstoneKey};
pub use read::uid_ranges;
pub use space::{Space, TableSpace};
pub use verify::sound_body_of;
pub use verify::{BodyProgress, BodyReport, BodyUse, DamagedBody, VerifyReport};

use crate::merkle::{NodeKey, NodeValue};
use crate::model::{Hlc, Stamp};
use rand::{Rng, SeedableRng};
use redb::{Database, ReadableDatabase};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tables::{META, TREE};
use tx::Tx;

/// The file inside the data directory that holds everything.
pub const DB_FILE: &str = "merkmail.redb";
/// Bumped whenever the on-disk layout changes incompatibly.
/// Format 2 (merkmail 0.4): tombstones name the identity a writer expunged, and the table
/// IDENTITIES indexes message identities; a format 1 store is upgraded when it is opened.
/// Format 3 (merkmail 0.5): bodies are kept in page-sized pieces (BODY_PIECES, BODY_TAILS)
/// instead of whole in BODIES, and staging marks carry the MD5 and size checked at staging;
/// a format 2 store's bodies are moved when it is opened ([`upgrade_bodies`]).
/// Format 4 (merkmail 0.6): a live-Maildir store records, per mailbox owed to the disk, the
/// UIDs changed since its folder last agreed with the index (MIRROR_OWED_UIDS), and its owed
/// mark says whether those name every change; a format 3 store's marks are taken as not
/// ([`upgrade_owed_marks`]), so their folders are looked at in full once.
/// Format 5 (merkmail 0.7): a live-Maildir store spools a body no Maildir file holds yet as a
/// file of its own (`spool/`, named by MIRROR_SPOOL) rather than in the body tables, which an
/// older merkmail would not read; a format 4 store gets the (empty) table and goes on reading
/// what it spooled in the body tables ([`upgrade_to_spool_files`]).
pub const FORMAT_VERSION: u32 = 5;

/// Format 4 → 5: the table MIRROR_SPOOL exists (made with the others when the store opens);
/// what a format 4 store spooled in the body tables is still read from there, and goes as its
/// delivery settles. Only the format number changes, so an older merkmail no longer opens it.
fn upgrade_to_spool_files(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(tables::MIRROR_SPOOL)?;
    txn.open_table(META)?
        .insert("format", 5u32.to_be_bytes().as_slice())?;
    txn.commit()?;
    Ok(())
}

/// Format 3 → 4: every owed mark (a stamp) gets the byte 0, "the owed UIDs may not name every
/// change" (none were recorded before format 4): the next pass over such a folder looks at
/// every message, as before, and the marks written after it say 1.
fn upgrade_owed_marks(db: &Database) -> Result<(), StoreError> {
    use redb::ReadableTable;
    let txn = db.begin_write()?;
    {
        let mut owed = txn.open_table(tables::MIRROR_OWED)?;
        let old: Vec<(Vec<u8>, Vec<u8>)> = owed
            .iter()?
            .filter_map(|item| match item {
                Ok((k, v)) if v.value().len() == 12 => {
                    Some(Ok((k.value().to_vec(), v.value().to_vec())))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        for (k, mut v) in old {
            v.push(0);
            owed.insert(k.as_slice(), v.as_slice())?;
        }
        txn.open_table(META)?
            .insert("format", 4u32.to_be_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

/// What [`Store::compact`] did: the file's size in bytes before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    pub before: u64,
    pub after: u64,
}

/// A state of the store to return to ([`Store::mark`], [`Store::rewind`]); fuzzing only.
#[doc(hidden)]
pub struct Mark {
    savepoint: redb::Savepoint,
    hlc: Hlc,
}

/// An open store. One process at a time may hold a store open (redb locks the file).
pub struct Store {
    /// `None` only while a reopen after an I/O failure has not succeeded yet.
    db: RwLock<Option<Database>>,
    /// The redb file (`None` for an in-memory store): what a reopen opens.
    file: Option<PathBuf>,
    /// A write failed on I/O (a full disk, say): redb then refuses every access, reads too,
    /// until the database is opened again, which the next access does ([`Store::heal`]).
    broken: AtomicBool,
    dir: PathBuf,
    node_id: String,
    hlc: Mutex<Hlc>,
    bodies: Box<dyn BodyStore>,
    tree_enabled: bool,
    /// redb's quick-repair on every write ([`Store::set_quick_repair`]).
    quick_repair: AtomicBool,
    /// How far ahead of this node's clock a peer's stamp may be ([`Store::set_max_clock_skew`]).
    max_clock_skew_ms: AtomicU64,
    /// The Maildir template of a live-Maildir store (store/mirror.rs), from META.
    maildir: Option<String>,
    /// Commits made by this handle: durable ones, and those made durable by a later one
    /// ([`Store::write_replicated_soon`]): what the tests hold the staging path to.
    durable_commits: AtomicU64,
    soon_commits: AtomicU64,
    /// Set only by [`Store::simulate_environment`]: the clock and the source of fresh mailbox
    /// GUIDs a simulation drives (otherwise the system clock and the thread's RNG).
    simulated: Option<Box<Simulated>>,
}

struct Simulated {
    clock: Arc<AtomicU64>,
    guids: Mutex<rand::rngs::StdRng>,
}

/// A node id names a server in logs and status pages, and seeds its stamps' node tag.
pub fn validate_node_id(id: &str) -> Result<(), StoreError> {
    if crate::model::is_node_id(id) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "node id {id:?} is invalid: use 1 to 64 characters from A-Z a-z 0-9 . _ -"
        )))
    }
}

/// The 32-bit tag a node's stamps carry: derived from its id, so it survives reinstalls.
pub fn node_tag(node_id: &str) -> u32 {
    let h = blake3::hash(node_id.as_bytes());
    let b = h.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// redb's page cache: 1 GiB by redb's default, which an import fills with the pages it
/// writes (peak memory grew with the data imported); 128 MiB made a serving process peak at
/// 300–370 MB during an initial copy (cached bodies, and the allocator's share). 32 MiB keeps
/// the tree's hot pages and the recent records (docs/PERFORMANCE.md, "Memory of `serve` and
/// `sync`"). The config key `cache_mb` ([`set_cache_mb`]) and MERKMAIL_CACHE_MB, which wins,
/// override it.
pub const DEFAULT_CACHE_MB: usize = 32;

/// The cache size a configuration chose (0: none), for the stores this process opens next.
static CONFIGURED_CACHE_MB: AtomicUsize = AtomicUsize::new(0);

/// Sets redb's page cache, in MiB, for the stores this process opens from now on (and the
/// reopening after an I/O failure); MERKMAIL_CACHE_MB still wins. 0 restores the default.
pub fn set_cache_mb(mb: usize) {
    CONFIGURED_CACHE_MB.store(mb, Ordering::Relaxed);
}

/// The page cache a store opened now gets, in MiB: MERKMAIL_CACHE_MB, else the configured
/// size, else [`DEFAULT_CACHE_MB`].
pub fn cache_mb() -> usize {
    std::env::var("MERKMAIL_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|mb| *mb > 0)
        .or(Some(CONFIGURED_CACHE_MB.load(Ordering::Relaxed)).filter(|mb| *mb > 0))
        .unwrap_or(DEFAULT_CACHE_MB)
}

fn builder() -> redb::Builder {
    let mb = cache_mb();
    let mut b = Database::builder();
    b.set_cache_size(mb << 20);
    // Called only when the file was not closed cleanly: say so, and how far the repair got,
    // so that a slow start after a crash is not a mystery.
    let last_tenth = std::cell::Cell::new(-1i32);
    b.set_repair_callback(move |session| {
        let tenth = (session.progress() * 10.0) as i32;
        if tenth != last_tenth.get() {
            last_tenth.set(tenth);
            tracing::info!(
                progress = format!("{}%", tenth * 10),
                "repairing the store after an unclean shutdown"
            );
        }
    });
    b
}

/// Format 2 → 3: moves every body from BODIES into pieces (store/body.rs), in transactions
/// of about 64 MiB, and drops staging marks that carry their body inline (an older
/// merkmail's: they hold no reference, and a later session sends the body again). The format
/// is written with the last transaction, so a crash part-way leaves format 2 with some bodies
/// moved, and the next open moves the rest. Records, reference counts and the tree are
/// untouched.
fn upgrade_bodies(db: &Database, dir: &Path) -> Result<(), StoreError> {
    use redb::{ReadableTable, ReadableTableMetadata};
    const MOVE_BYTES: u64 = 64 << 20;
    let started = std::time::Instant::now();
    let total = db.begin_read()?.open_table(tables::BODIES)?.len()?;
    if total > 0 {
        tracing::info!(store = %dir.display(), bodies = total, "upgrading the store to format 3: moving bodies into pieces");
    }
    loop {
        let txn = db.begin_write()?;
        let done = {
            let mut bodies = txn.open_table(tables::BODIES)?;
            let mut moved = 0u64;
            let mut keys = Vec::new();
            for item in bodies.iter()? {
                let (k, v) = item?;
                let digest = <[u8; 32]>::try_from(k.value())
                    .map_err(|_| StoreError::Corrupt("malformed body key".into()))?;
                body::put_bytes(&txn, &crate::model::Digest(digest), v.value())?;
                moved += v.value().len() as u64;
                keys.push(k.value().to_vec());
                if moved >= MOVE_BYTES {
                    break;
                }
            }
            for k in &keys {
                bodies.remove(k.as_slice())?;
            }
            bodies.is_empty()?
        };
        if done {
            let mut staged = txn.open_table(tables::STAGED)?;
            let inline: Vec<Vec<u8>> = staged
                .iter()?
                .filter_map(|item| match item {
                    Ok((k, v)) if v.value().len() != 8 => Some(Ok(k.value().to_vec())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()?;
            for k in inline {
                staged.remove(k.as_slice())?;
            }
            drop(staged);
            txn.open_table(META)?
                .insert("format", 3u32.to_be_bytes().as_slice())?;
        }
        txn.commit()?;
        if done {
            break;
        }
    }
    if total > 0 {
        tracing::info!(store = %dir.display(), bodies = total, ms = started.elapsed().as_millis() as u64, "store upgraded to format 3");
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Drop for Store {
    /// A store closed with staging commits that no durable commit followed: redb may make
    /// them durable as it closes, so the spool files they name are flushed first.
    fn drop(&mut self) {
        if let Err(e) = self.bodies.before_commit() {
            tracing::warn!(store = %self.dir.display(), error = %e, "cannot flush the spool as the store closes");
        }
    }
}

impl Store {
    /// Creates a new, empty store in `dir` (created if missing).
    pub fn init(dir: &Path, node_id: &str) -> Result<Store, StoreError> {
        validate_node_id(node_id)?;
        let file = dir.join(DB_FILE);
        if file.exists() {
            return Err(StoreError::AlreadyInitialised(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), e))?;
        let db = builder()
            .create(&file)
            .map_err(|e| StoreError::from_open(e, dir))?;
        Self::write_new(&db, node_id)?;
        Self::from_db(db, dir, Some(file))
    }

    /// Opens an existing store. Fails with a clear error when `dir` holds no store, when the
    /// format is not ours, or when another process has it open.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let file = dir.join(DB_FILE);
        if !file.is_file() {
            return Err(StoreError::NotAStore(dir.to_path_buf()));
        }
        let db = builder()
            .open(&file)
            .map_err(|e| StoreError::from_open(e, dir))?;
        Self::from_db(db, dir, Some(file))
    }

    /// A store held entirely in memory (tests and benchmarks).
    pub fn in_memory(node_id: &str) -> Result<Store, StoreError> {
        validate_node_id(node_id)?;
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::from_open(e, Path::new(":memory:")))?;
        Self::write_new(&db, node_id)?;
        Self::from_db(db, Path::new(":memory:"), None)
    }

    /// A new store's first transaction: its format, its node id and every table.
    fn write_new(db: &Database, node_id: &str) -> Result<(), StoreError> {
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("format", FORMAT_VERSION.to_be_bytes().as_slice())?;
            meta.insert("node_id", node_id.as_bytes())?;
            tables::create_all(&txn)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn from_db(db: Database, dir: &Path, file: Option<PathBuf>) -> Result<Store, StoreError> {
        let upgrade;
        let (node_id, last, maildir) = {
            let txn = db.begin_read()?;
            let meta = txn
                .open_table(META)
                .map_err(|_| StoreError::NotAStore(dir.to_path_buf()))?;
            let format = meta
                .get("format")?
                .and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| StoreError::NotAStore(dir.to_path_buf()))?;
            if !(1..=FORMAT_VERSION).contains(&format) {
                return Err(StoreError::Format {
                    dir: dir.to_path_buf(),
                    found: format,
                });
            }
            upgrade = format;
            let node_id = meta
                .get("node_id")?
                .and_then(|v| String::from_utf8(v.value().to_vec()).ok())
                .ok_or_else(|| StoreError::Corrupt("the store has no node id".into()))?;
            let last = meta
                .get("hlc")?
                .and_then(|v| <[u8; 12]>::try_from(v.value()).ok())
                .map(Stamp::from_bytes)
                .unwrap_or(Stamp::ZERO);
            let maildir = meta
                .get(mirror::MAILDIR_KEY)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            (node_id, last, maildir)
        };
        // Stores made before the journal existed lack its tables: add them (empty), so that
        // read transactions find every table.
        // Stores made before the journal (or before the per-user expunge index) lack tables:
        // add them, empty.
        let has_journal = db.begin_read()?.open_table(tables::JOURNAL_SENDERS).is_ok()
            && db.begin_read()?.open_table(tables::BODY_TAILS).is_ok()
            && db.begin_read()?.open_table(tables::USER_KILLS).is_ok()
            && db
                .begin_read()?
                .open_table(tables::MIRROR_BODY_SIZES)
                .is_ok()
            && db
                .begin_read()?
                .open_table(tables::MIRROR_OWED_UIDS)
                .is_ok()
            && db.begin_read()?.open_table(tables::MIRROR_SPOOL).is_ok();
        if !has_journal {
            let txn = db.begin_write()?;
            tables::create_all(&txn)?;
            txn.commit()?;
        }
        if upgrade == 1 {
            tracing::info!(store = %dir.display(), "upgrading the store from format 1 to 2: indexing message identities");
            let started = std::time::Instant::now();
            let txn = db.begin_write()?;
            tables::create_all(&txn)?;
            let indexed = identity::rebuild(&txn)?;
            txn.open_table(META)?
                .insert("format", 2u32.to_be_bytes().as_slice())?;
            txn.commit()?;
            tracing::info!(store = %dir.display(), messages = indexed, ms = started.elapsed().as_millis() as u64, "store upgraded to format 2");
        }
        if upgrade < 3 {
            upgrade_bodies(&db, dir)?;
        }
        if upgrade < 4 {
            upgrade_owed_marks(&db)?;
        }
        if upgrade < 5 {
            upgrade_to_spool_files(&db)?;
        }
        let tag = node_tag(&node_id);
        let bodies: Box<dyn BodyStore> = match &maildir {
            Some(template) => Box::new(file_bodies::FileBodies::new(
                file_bodies::mail_files_for(template)?,
                dir.join(file_bodies::SPOOL_DIR),
            )),
            None => Box::<RedbBodies>::default(),
        };
        let store = Store {
            db: RwLock::new(Some(db)),
            file,
            broken: AtomicBool::new(false),
            dir: dir.to_path_buf(),
            hlc: Mutex::new(Hlc::new(tag, last)),
            node_id,
            bodies,
            tree_enabled: true,
            quick_repair: AtomicBool::new(false),
            max_clock_skew_ms: AtomicU64::new(crate::model::DEFAULT_MAX_CLOCK_SKEW_MS),
            durable_commits: AtomicU64::new(0),
            soon_commits: AtomicU64::new(0),
            maildir,
            simulated: None,
        };
        if store.maildir.is_some() {
            match store.sweep_spool(true) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(store = %dir.display(), files = n, "removed spool files no row names (left by a crash or by delivered bodies)")
                }
                Err(e) => {
                    tracing::warn!(store = %dir.display(), error = %e, "cannot sweep the spool; the next pass tries again")
                }
            }
        }
        Ok(store)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Flushes what the body store keeps outside redb before a durable commit (see
    /// [`BodyStore::before_commit`]); every durable commit outside [`Store::write_txn`] calls
    /// it first.
    pub(crate) fn before_durable_commit(&self) -> Result<(), StoreError> {
        self.bodies.before_commit()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deterministic simulation only (tests/simulate.rs): from now on the store reads the time
    /// (stamps, UIDVALIDITY, journal times) from `clock` (ms since the epoch) and draws new
    /// mailbox GUIDs from a generator seeded with `guid_seed`, so that one seed replays one
    /// run exactly. Never use it in a server.
    #[doc(hidden)]
    pub fn simulate_environment(&mut self, clock: Arc<AtomicU64>, guid_seed: u64) {
        self.simulated = Some(Box::new(Simulated {
            clock,
            guids: Mutex::new(rand::rngs::StdRng::seed_from_u64(guid_seed)),
        }));
    }

    /// The time a transaction works with.
    fn now_ms(&self) -> u64 {
        match &self.simulated {
            Some(sim) => sim.clock.load(Ordering::SeqCst),
            None => now_ms(),
        }
    }

    /// A fresh mailbox GUID in Dovecot's layout: the time it was made, then 8 random bytes
    /// (and random nanoseconds below the clock's millisecond), so that the same-name rule can
    /// tell which of two mailboxes was made first (`MailboxGuid::from_time`).
    pub(crate) fn new_guid(&self) -> crate::model::MailboxGuid {
        let bytes: [u8; 12] = match &self.simulated {
            Some(sim) => match sim.guids.lock() {
                Ok(mut rng) => rng.random(),
                Err(poisoned) => poisoned.into_inner().random(),
            },
            None => rand::random(),
        };
        let mut unique = [0u8; 8];
        unique.copy_from_slice(&bytes[..8]);
        let below_ms = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) % 1_000_000;
        let ms = self.now_ms();
        let secs = u32::try_from(ms / 1000).unwrap_or(u32::MAX);
        let nanos = (ms % 1000) as u32 * 1_000_000 + below_ms;
        crate::model::MailboxGuid::from_time(secs, nanos, unique)
    }

    /// Fuzzing and tests only: remembers the store as it is now, for [`Store::rewind`]. While
    /// a [`Mark`] lives, pages freed by later writes are kept (redb's ephemeral savepoint), so
    /// rewind often: a rewind frees them. Never use it in a server.
    #[doc(hidden)]
    pub fn mark(&self) -> Result<Mark, StoreError> {
        let hlc = *self
            .hlc
            .lock()
            .map_err(|_| StoreError::Corrupt("clock lock poisoned".into()))?;
        let txn = self.begin_write()?;
        let savepoint = txn.ephemeral_savepoint()?;
        txn.abort()?;
        Ok(Mark { savepoint, hlc })
    }

    /// Fuzzing and tests only: puts the store back as it was at `mark` (every table, the
    /// clock), so that a fuzz target can start each input from the same store without building
    /// it again (docs/RELIABILITY.md §3). Never use it in a server.
    ///
    /// The mark is then taken anew, on the same state: the pages that writes since the old
    /// one freed (the restoring commit's too) can be reused only once no savepoint older than
    /// them is left, and without this the freed-page list grew with every rewind, and with it
    /// the time and memory of the next.
    #[doc(hidden)]
    pub fn rewind(&self, mark: &mut Mark) -> Result<(), StoreError> {
        let mut hlc = self
            .hlc
            .lock()
            .map_err(|_| StoreError::Corrupt("clock lock poisoned".into()))?;
        let mut txn = self.begin_write()?;
        txn.restore_savepoint(&mark.savepoint)?;
        txn.commit()?;
        *hlc = mark.hlc;
        let txn = self.begin_write()?;
        mark.savepoint = txn.ephemeral_savepoint()?;
        txn.abort()?;
        Ok(())
    }

    /// Benchmarks only: switch tree maintenance off to measure what it costs. A store
    /// written with it off has a stale tree (`verify` says so); never use it otherwise.
    #[doc(hidden)]
    pub fn set_tree_maintenance_for_bench(&mut self, enabled: bool) {
        self.tree_enabled = enabled;
    }

    /// Benchmarks only: inside a write transaction that is then aborted (the store is left as
    /// it was), rewrites one message so its pages are dirty as in a real flag change, then times
    /// the tree's update for it in stretches, each ending after a rank of `merkle::Dirty`
    /// (`u8::MAX`: up to the root). Returns the time of each stretch.
    #[doc(hidden)]
    pub fn time_tree_update_for_bench(
        &self,
        user: &str,
        guid: crate::model::MailboxGuid,
        uid: u32,
        stops: &[u8],
    ) -> Result<Vec<std::time::Duration>, StoreError> {
        let hlc = *self
            .hlc
            .lock()
            .map_err(|_| StoreError::Corrupt("clock lock poisoned".into()))?;
        let txn = self.begin_write()?;
        let mut times = Vec::with_capacity(stops.len());
        {
            let mut tx = Tx::open(&txn, hlc, self.now_ms(), self.bodies.as_ref(), false, false)?;
            let record = tx.get_message(user, guid, uid)?.ok_or_else(|| {
                StoreError::Invalid(format!("no message {uid} in {guid} of {user:?}"))
            })?;
            tx.put_message(user, guid, uid, &record)?;
            let mut dirty = std::mem::take(&mut tx.dirty);
            for &stop in stops {
                let started = std::time::Instant::now();
                dirty.flush_through(&mut tx, stop)?;
                times.push(started.elapsed());
            }
        }
        txn.abort()?;
        Ok(times)
    }

    /// Runs a local write `f` in one write transaction, then brings the tree up to date and
    /// appends what it touched to the replication journal, in the same transaction, and
    /// commits. If `f` or the tree update fails nothing is committed.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_with(true, f)
    }

    /// Like [`Store::write`], for changes that came from a peer (reconciliation, the journal):
    /// nothing is journaled, so a change never echoes back to where it came from.
    pub(crate) fn write_replicated<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_with(false, f)
    }

    /// Like [`Store::write_replicated`], committed without waiting for the disk (redb's
    /// `Durability::None`): for what a crash may lose without harm, because a later durable
    /// commit of this store makes it durable too and nothing depends on it before that.
    /// Staged bodies are such: a change that takes one commits durably, and a session that
    /// dies before then sends the body again. A crash rolls the store back to the last
    /// durable commit, whole transactions at a time.
    pub(crate) fn write_replicated_soon<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_txn(false, false, f)
    }

    fn write_with<T>(
        &self,
        journal: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_txn(journal, true, f)
    }

    fn write_txn<T>(
        &self,
        journal: bool,
        durable: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Writers are serialised by redb anyway; holding the clock for the whole transaction
        // keeps stamps in commit order.
        let mut hlc = self
            .hlc
            .lock()
            .map_err(|_| StoreError::Corrupt("clock lock poisoned".into()))?;
        let mut txn = self.begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| StoreError::from(redb::Error::from(e)))?;
        }
        let result = (|| {
            let (out, new_hlc) = {
                let mut tx = Tx::open(
                    &txn,
                    *hlc,
                    self.now_ms(),
                    self.bodies.as_ref(),
                    journal,
                    self.maildir.is_some(),
                )?;
                tx.max_clock_skew_ms = self.max_clock_skew_ms.load(Ordering::Relaxed);
                let out = f(&mut tx)?;
                if self.tree_enabled {
                    let mut dirty = std::mem::take(&mut tx.dirty);
                    dirty.flush(&mut tx)?;
                }
                let new_hlc = tx.finish()?;
                (out, new_hlc)
            };
            // Bodies spooled outside redb reach the disk before a durable commit makes the
            // rows that name them durable (this transaction's, and those of the commits made
            // without waiting for the disk before it: staging).
            if durable {
                self.bodies.before_commit()?;
            }
            txn.commit()?;
            Ok((out, new_hlc))
        })();
        self.bodies.after_transaction(result.is_ok());
        match result {
            Ok((out, new_hlc)) => {
                *hlc = new_hlc;
                let commits = if durable {
                    &self.durable_commits
                } else {
                    &self.soon_commits
                };
                commits.fetch_add(1, Ordering::Relaxed);
                Ok(out)
            }
            Err(e) => {
                self.note_failure(&e);
                Err(e)
            }
        }
    }

    /// The size of the store's file in bytes (`None` for an in-memory store). redb keeps
    /// pages freed by earlier transactions in the file for reuse; [`Store::compact`] gives
    /// them back.
    pub fn file_size(&self) -> Result<Option<u64>, StoreError> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let meta = std::fs::metadata(file)
            .map_err(|e| StoreError::io(format!("cannot read {}", file.display()), e))?;
        Ok(Some(meta.len()))
    }

    /// Body bytes written into the body table since the store was opened (the count that
    /// replica size depends on: each body once).
    pub fn body_bytes_written(&self) -> u64 {
        self.bodies.bytes_written()
    }

    /// Commits this handle made through the write path: (durable, made durable by a later
    /// commit). Staging bodies commits the second way (no wait for the disk).
    pub fn commits(&self) -> (u64, u64) {
        (
            self.durable_commits.load(Ordering::Relaxed),
            self.soon_commits.load(Ordering::Relaxed),
        )
    }

    /// How many bodies are staged: sent ahead by a session and not taken by a change yet.
    pub fn staged_bodies(&self) -> Result<u64, StoreError> {
        let txn = self.read_txn()?;
        Ok(redb::ReadableTableMetadata::len(
            &txn.open_table(tables::STAGED)?,
        )?)
    }

    /// Rewrites the file without its free pages (redb's compaction) and returns the file's
    /// size before and after. Offline: it needs the only handle on the store and no
    /// transaction open, so a `serve` must be stopped first (redb's file lock says so at
    /// open). The records, the tree and the root are unchanged.
    pub fn compact(&self) -> Result<Compacted, StoreError> {
        let before = self.file_size()?.unwrap_or(0);
        self.heal()?;
        let mut db = self
            .db
            .write()
            .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
        let db = db.as_mut().ok_or_else(|| {
            StoreError::StorageFailed("the store could not be reopened yet".into())
        })?;
        db.compact()?;
        let after = self.file_size()?.unwrap_or(0);
        Ok(Compacted { before, after })
    }

    /// After an initial copy into an empty store: compacts it if `was_empty` (it held no mail
    /// when the copy began) and it holds mail now. redb doubles a file whenever it needs room
    /// (up to 4 GiB), so a freshly filled file holds up to as much unused space as used;
    /// compaction gives that back. Only after a copy that filled the store in one go: a
    /// compacted file is full, so the next write doubles it again. Compacting after every
    /// import that grew the store made a four-user import three times slower, and compacting
    /// after the first one only left the file larger than none (docs/PERFORMANCE.md,
    /// "Replica size"). Offline, like [`Store::compact`].
    pub fn compact_after_first_fill(
        &self,
        was_empty: bool,
    ) -> Result<Option<Compacted>, StoreError> {
        if !was_empty || self.file.is_none() || self.counters()?.messages == 0 {
            return Ok(None);
        }
        Ok(Some(self.compact()?))
    }

    /// Remembers that redb latched an I/O failure, so that the next access reopens it.
    fn note_failure(&self, e: &StoreError) {
        if e.needs_reopen() && self.file.is_some() {
            tracing::warn!(error = %e, "a write to the store failed; reopening it on the next access");
            self.broken.store(true, Ordering::Release);
        }
    }

    /// After an I/O failure, closes the database and opens it again: redb refuses every
    /// access to a handle that saw one, and its next open recovers the file to the last
    /// commit (checking every page's checksum on the way). A failed reopen is retried on
    /// the next access.
    fn heal(&self) -> Result<(), StoreError> {
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut db = self
            .db
            .write()
            .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
        if !self.broken.load(Ordering::Acquire) {
            return Ok(()); // another thread reopened it meanwhile
        }
        // The old handle must be closed first: redb locks the file.
        drop(db.take());
        let reopened = builder()
            .open(file)
            .map_err(|e| StoreError::from_open(e, &self.dir))?;
        *db = Some(reopened);
        self.broken.store(false, Ordering::Release);
        tracing::warn!(dir = %self.dir.display(), "the store was reopened after an I/O failure");
        Ok(())
    }

    /// Runs `f` on the open database, reopening it first after an I/O failure.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.heal()?;
        let db = self
            .db
            .read()
            .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
        let db = db.as_ref().ok_or_else(|| {
            StoreError::StorageFailed("the store could not be reopened yet".into())
        })?;
        let out = f(db);
        if let Err(e) = &out {
            self.note_failure(e);
        }
        out
    }

    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let quick = self.quick_repair.load(Ordering::Relaxed);
        self.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_quick_repair(quick);
            Ok(txn)
        })
    }

    /// With quick-repair on, every commit also saves redb's allocator state and commits in
    /// two phases, so that opening the store after a crash (SIGKILL, power loss) takes
    /// milliseconds instead of a walk over the whole file (1–7 s at 10⁶ messages here). The
    /// price is a second fsync per commit: a single change's commit took 8 ms instead of 4 ms
    /// here (docs/PERFORMANCE.md, "Daemon"). Off by default; `quick_repair` in the config.
    pub fn set_quick_repair(&self, on: bool) {
        self.quick_repair.store(on, Ordering::Relaxed);
    }

    /// How far ahead of this node's clock a stamp in a peer's change may be (`max_clock_skew`
    /// in the config; [`crate::model::DEFAULT_MAX_CLOCK_SKEW_MS`] unless set). A session's
    /// change group or a journal entry that carries a stamp further ahead is not applied and
    /// does not move the clock (docs/PROTOCOL.md, "Clocks").
    pub fn set_max_clock_skew(&self, ms: u64) {
        self.max_clock_skew_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn read_txn(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.with_db(|db| Ok(db.begin_read()?))
    }

    /// The server root: the hash that two equal stores share.
    pub fn root(&self) -> Result<NodeValue, StoreError> {
        Ok(self.node(&NodeKey::root())?.unwrap_or(NodeValue::EMPTY))
    }

    /// One stored node, if it is not empty.
    pub fn node(&self, key: &NodeKey) -> Result<Option<NodeValue>, StoreError> {
        let txn = self.read_txn()?;
        let tree = txn.open_table(TREE)?;
        let value = tree.get(key.encode().as_slice())?;
        value
            .map(|v| {
                NodeValue::decode(v.value())
                    .ok_or_else(|| StoreError::Corrupt(format!("tree node {key} is malformed")))
            })
            .transpose()
    }

    /// The stored children of a node, in key order.
    pub fn children(&self, key: &NodeKey) -> Result<Vec<(NodeKey, NodeValue)>, StoreError> {
        let Some((start, end)) = key.children_range() else {
            return Ok(Vec::new());
        };
        let txn = self.read_txn()?;
        let tree = txn.open_table(TREE)?;
        let mut out = Vec::new();
        for item in tree.range(start.as_slice()..=end.as_slice())? {
            let (k, v) = item?;
            let key = NodeKey::decode(k.value())
                .ok_or_else(|| StoreError::Corrupt("malformed tree key".into()))?;
            let value = NodeValue::decode(v.value())
                .ok_or_else(|| StoreError::Corrupt(format!("tree node {key} is malformed")))?;
            out.push((key, value));
        }
        Ok(out)
    }
}
