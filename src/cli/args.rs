//! The `merkmail` command line as clap reads it: the commands, their arguments and help texts
//! (every spelling here is part of the contract that tests/cli.rs checks), and where a mail
//! command goes (--data or --url).

use crate::net::client::ClientConfig;
use crate::net::tls::ClientTls;
use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};

/// merkmail keeps replicated mail stores identical: each server keeps its mail in an
/// embedded store with an incremental Merkle tree beside it, so peers find and repair drift
/// by comparing hashes instead of rescanning mailboxes.
#[derive(Parser)]
#[command(name = "merkmail", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the store is.
#[derive(Args, Clone)]
pub struct Data {
    /// The store's data directory (holds merkmail.redb).
    #[arg(long, value_name = "DIR", env = "MERKMAIL_DATA")]
    pub(super) data: PathBuf,
}

/// Where the mail is: a store's data directory, or a running `merkmail serve`.
#[derive(Args, Clone)]
pub struct Target {
    #[command(flatten)]
    place: Place,
    /// The server's bearer token (with --url).
    #[arg(long, value_name = "TOKEN")]
    #[arg(env = "MERKMAIL_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
    /// With an https:// --url (or --peer): trust only the CA certificates in this PEM file
    /// (default: the web PKI's roots).
    #[arg(long, value_name = "FILE", env = "MERKMAIL_CA")]
    ca: Option<PathBuf>,
}

/// At most one of --data and --url; [`Target::resolve`] requires one. MERKMAIL_DATA is read
/// there rather than by clap, because clap counts an environment value as given, and a
/// MERKMAIL_DATA in the environment must not forbid --url.
#[derive(Args, Clone)]
#[group(required = false, multiple = false)]
struct Place {
    /// The store's data directory (holds merkmail.redb) [env: MERKMAIL_DATA=].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// A running `merkmail serve` to ask instead, e.g. http://127.0.0.1:8025.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

/// Where a mail command goes, once [`Target::resolve`] has settled it.
pub(super) enum Location<'a> {
    /// A store's data directory, opened in this process.
    Data(&'a Path),
    /// A running `merkmail serve`, asked over its mail API.
    Url(&'a str),
}

impl Target {
    /// Fills in --data from MERKMAIL_DATA when neither --data nor --url is given; a usage
    /// error (exit 2, like clap's own) when there is still nothing.
    fn resolve(&mut self) {
        if self.place.data.is_none() && self.place.url.is_none() {
            self.place.data = std::env::var_os("MERKMAIL_DATA")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
        }
        if self.place.data.is_none() && self.place.url.is_none() {
            Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "give --data DIR (or MERKMAIL_DATA) for a local store, or --url URL for a server",
                )
                .exit();
        }
    }

    /// --url or --data (--url first: clap lets only one of them through).
    pub(super) fn location(&self) -> Result<Location<'_>> {
        match (&self.place.url, &self.place.data) {
            (Some(url), _) => Ok(Location::Url(url)),
            (None, Some(dir)) => Ok(Location::Data(dir)),
            (None, None) => bail!("give --data DIR or --url URL"),
        }
    }

    /// The client settings for --url and --peer: the CA file, if given.
    pub(super) fn client_config(&self) -> Result<ClientConfig> {
        client_config(self.ca.as_deref())
    }
}

/// A client's settings with the CAs of `ca` (a PEM file) trusted for https:// URLs.
pub(super) fn client_config(ca: Option<&Path>) -> Result<ClientConfig> {
    Ok(ClientConfig {
        tls: ca
            .map(ClientTls::from_ca_file)
            .transpose()
            .context("--ca")?,
        ..ClientConfig::default()
    })
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a new, empty store.
    Init {
        #[command(flatten)]
        data: Data,
        /// This server's name among its peers (A-Z a-z 0-9 . _ -); it seeds its change stamps.
        #[arg(long, value_name = "ID")]
        node_id: String,
        /// Keep the mail of a live Maildir tree that an IMAP server (Dovecot) serves, rather
        /// than holding it in the store: TEMPLATE is each user's Maildir with %u for the user,
        /// as in Dovecot's mail_location (e.g. /srv/vmail/%u/Maildir). The store then holds
        /// the index, the tree and the journal; `scan` and `serve` keep it and the Maildirs
        /// in step both ways.
        #[arg(long, value_name = "TEMPLATE")]
        maildir: Option<String>,
    },
    /// Bring a live-Maildir store (`init --maildir`) and its Maildirs in step, once.
    ///
    /// What the mail server did since the last pass (new files, flag renames, expunges, folders
    /// made, renamed or deleted, subscriptions) becomes local writes that replicate; what the
    /// index holds that the Maildirs do not show yet (replicated mail, flags, expunges) is
    /// written into them under Dovecot's uidlist lock. `serve` does this at start, on every
    /// change it is told of, and every rescan interval. Stop `serve` on DIR first.
    Scan {
        #[command(flatten)]
        data: Data,
        /// Only this user (default: every user the template's directory or the store holds).
        user: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Create, rename, delete or list a user's mailboxes.
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Append messages (RFC 5322 files; `-` reads one from stdin) and print the UIDs assigned.
    ///
    /// Appending to INBOX brings a new user into being; other mailboxes must be created first.
    /// All the messages are appended in one transaction: if one cannot be read, none is.
    Append {
        #[command(flatten)]
        target: Target,
        user: String,
        mailbox: String,
        #[arg(required_unless_present = "mbox", value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Append every message of one mbox file (mboxrd: `From ` lines separate messages,
        /// `>From ` lines lose one `>`; line endings are kept as in the file). A truncated or
        /// malformed file appends nothing.
        #[arg(long, value_name = "FILE", conflicts_with = "files")]
        mbox: Option<PathBuf>,
        /// Date each message by its file's modification time, as import-maildir does (with
        /// --mbox, the mbox file's).
        #[arg(long, conflicts_with = "date")]
        date_from_file: bool,
        /// Comma-separated flags to set, e.g. '\Seen,\Flagged,$Label1'.
        #[arg(
            long,
            value_name = "FLAGS",
            default_value = "",
            allow_hyphen_values = true
        )]
        flags: String,
        /// INTERNALDATE as seconds since the epoch (default: now).
        #[arg(long, value_name = "UNIX_SECONDS")]
        date: Option<i64>,
    },
    /// Add, remove or set the flags of messages, all in one transaction.
    ///
    /// One plain UID prints that message's flags afterwards. Several UIDs, or IMAP UID sets
    /// (`1:5,7,9:*`; `*` is the largest UID in the mailbox, `5:1` means `1:5`), print one
    /// line per message changed: its UID and its flags. A plain UID must exist; a set names
    /// the existing messages among its UIDs and must name at least one.
    #[command(group(clap::ArgGroup::new("op").required(true).args(["add", "remove", "set"])))]
    Flags {
        #[command(flatten)]
        target: Target,
        user: String,
        mailbox: String,
        /// UIDs or UID sets, e.g. `7` or `1:5,9:*`.
        #[arg(required = true, value_name = "UIDS")]
        uids: Vec<String>,
        /// Flags to add (comma-separated).
        #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
        add: Option<String>,
        /// Flags to remove (comma-separated).
        #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
        remove: Option<String>,
        /// The exact flags to have afterwards ('' clears them all).
        #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
        set: Option<String>,
    },
    /// Expunge messages by UID (each leaves a tombstone so peers learn of the expunge), all
    /// in one transaction.
    ///
    /// Plain UIDs must all exist, or nothing is expunged. IMAP UID sets (`1:5,7,9:*`; `*` is
    /// the largest UID in the mailbox) name the existing messages among their UIDs and must
    /// name at least one.
    Expunge {
        #[command(flatten)]
        target: Target,
        user: String,
        mailbox: String,
        /// UIDs or UID sets, e.g. `3 4` or `1:5,9:*`.
        #[arg(required = true, value_name = "UIDS")]
        uids: Vec<String>,
    },
    /// List a user's messages, in one mailbox or in all.
    List {
        #[command(flatten)]
        target: Target,
        user: String,
        mailbox: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write one message's raw bytes, unchanged, to stdout.
    Fetch {
        #[command(flatten)]
        target: Target,
        user: String,
        mailbox: String,
        uid: u32,
    },
    /// Reconcile with a peer now: roots first, then only the subtrees that differ.
    ///
    /// With --data, this process opens the store and talks to the peer itself; with --url, it
    /// asks that running server to reconcile with the peer. Both sides end equal; --dry-run
    /// reports the differences and changes nothing. The report counts round trips, metadata
    /// and body bytes, what was copied each way, expunges, flag updates, UID clashes.
    Sync(SyncArgs),
    /// Serve the mail, peer and operator APIs over HTTP, and keep this node's peers in step,
    /// until SIGTERM or SIGINT.
    ///
    /// With peers (--peer, or [[peer]] in --config), a background checker reconciles with each
    /// one every --check-interval (± jitter), at once on start and when a peer comes back; every
    /// local write is journaled and shipped to each peer. Prints `listening on ADDR` on stdout
    /// once it accepts connections (the real port when ADDR ends in :0); logs go to stderr.
    /// docs/HTTP.md describes the routes, docs/CONFIG.md every configuration key.
    Serve(ServeArgs),
    /// Show a running server's status: its root and counts, and per peer whether it answers,
    /// the last checks and what they repaired, the journal's depth and age, the session in
    /// progress.
    Status {
        /// The server, e.g. http://127.0.0.1:8025.
        #[arg(long, value_name = "URL")]
        url: String,
        /// With an https:// URL: trust only the CA certificates in this PEM file (default:
        /// the web PKI's roots).
        #[arg(long, value_name = "FILE", env = "MERKMAIL_CA")]
        ca: Option<PathBuf>,
        /// Print the JSON of GET /status instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the server root hash (equal roots mean equal stores).
    Root {
        #[command(flatten)]
        target: Target,
    },
    /// Show the tree's nodes below a point: the top, a user, or a mailbox.
    Tree {
        #[command(flatten)]
        data: Data,
        user: Option<String>,
        mailbox: Option<String>,
        /// How many levels to show below the starting node.
        #[arg(long, default_value_t = 2)]
        depth: usize,
    },
    /// Rebuild the tree from the records and compare it with the stored one (exit 1 if they differ).
    Verify {
        #[command(flatten)]
        data: Data,
        /// Also re-hash every stored body and report bit rot: bodies whose bytes no longer match
        /// their digest, with the messages that use them (exit 1 if any). They are marked for
        /// the server's background checker, which replaces them from a peer.
        #[arg(long)]
        bodies: bool,
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Give the store file's free pages back to the filesystem; needs the store offline.
    ///
    /// The file keeps the pages that earlier writes freed, for reuse, so it does not shrink
    /// when mail is expunged, and a busy or freshly replicated store often holds a sixth of its
    /// size as free pages (`stats` shows the file's size beside the mail's). Run it after
    /// large expunges or deletes, or after filling a replica, when the disk space is wanted
    /// back. It rewrites the file in place; the mail, the tree and the root are unchanged.
    /// Stop `merkmail serve` on DIR first: the store cannot be compacted while a server holds
    /// it open. Prints the file's size before and after.
    Compact {
        #[command(flatten)]
        data: Data,
        /// Print the sizes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where the store file's bytes go: each table's rows, pages and bytes (redb's own
    /// accounting), and the file's free pages; needs the store offline, like `compact`.
    Space {
        #[command(flatten)]
        data: Data,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print counts: users, mailboxes, messages, bytes, tombstones, tree depth.
    Stats {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Import a Maildir++ tree (INBOX in PATH/cur and PATH/new, folders in PATH/.Name/).
    ///
    /// Flags come from the ':2,' suffix; a dovecot-uidlist's UIDVALIDITY and UIDs are kept.
    /// Running it again imports nothing twice.
    ImportMaildir(TransferArgs),
    /// Export a user's mail as a Maildir++ tree that Dovecot reads, UIDs and UIDVALIDITY kept.
    ExportMaildir(TransferArgs),
}

/// `import-maildir`'s and `export-maildir`'s arguments.
#[derive(Args)]
pub struct TransferArgs {
    #[command(flatten)]
    pub(super) data: Data,
    pub(super) user: String,
    pub(super) path: PathBuf,
    /// No progress on stderr.
    #[arg(long, short)]
    pub(super) quiet: bool,
}

#[derive(Subcommand)]
pub enum MailboxCommand {
    /// Create a mailbox (a new user is brought into being with its INBOX).
    Create {
        #[command(flatten)]
        target: Target,
        user: String,
        name: String,
    },
    /// Rename a mailbox and the mailboxes below it.
    Rename {
        #[command(flatten)]
        target: Target,
        user: String,
        name: String,
        new_name: String,
    },
    /// Delete a mailbox and its messages (INBOX cannot be deleted).
    Delete {
        #[command(flatten)]
        target: Target,
        user: String,
        name: String,
    },
    /// List a user's mailboxes.
    List {
        #[command(flatten)]
        target: Target,
        user: String,
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// Settles where a mail command goes (see [`Target::resolve`]); a usage error exits 2.
    pub fn resolve(&mut self) {
        if let Some(target) = self.target() {
            target.resolve();
        }
    }

    /// The level logged when MERKMAIL_LOG says nothing: a server says where it listens and
    /// when it stops; the other commands speak only of trouble.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }

    /// The mail commands' --data/--url.
    fn target(&mut self) -> Option<&mut Target> {
        match self {
            Command::Append { target, .. }
            | Command::Flags { target, .. }
            | Command::Expunge { target, .. }
            | Command::List { target, .. }
            | Command::Fetch { target, .. }
            | Command::Root { target }
            | Command::Stats { target, .. }
            | Command::Sync(SyncArgs { target, .. }) => Some(target),
            Command::Mailbox(
                MailboxCommand::Create { target, .. }
                | MailboxCommand::Rename { target, .. }
                | MailboxCommand::Delete { target, .. }
                | MailboxCommand::List { target, .. },
            ) => Some(target),
            Command::Init { .. }
            | Command::Scan { .. }
            | Command::Serve(_)
            | Command::Status { .. }
            | Command::Tree { .. }
            | Command::Verify { .. }
            | Command::Compact { .. }
            | Command::Space { .. }
            | Command::ImportMaildir(_)
            | Command::ExportMaildir(_) => None,
        }
    }
}

/// `merkmail sync`'s arguments.
#[derive(Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub(super) target: Target,
    /// The peer to reconcile with, e.g. http://127.0.0.1:8026.
    #[arg(long, value_name = "URL")]
    pub(super) peer: String,
    /// The token the peer wants (with --url, --token is the asked server's own).
    #[arg(long, value_name = "TOKEN")]
    #[arg(env = "MERKMAIL_PEER_TOKEN", hide_env_values = true)]
    pub(super) peer_token: Option<String>,
    /// Report the differences without changing either side.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(super) json: bool,
    /// No progress on stderr (with --data; with --url the server does the work).
    #[arg(long, short)]
    pub(super) quiet: bool,
}

/// `merkmail serve`'s arguments: each one overrides a key of the configuration file.
#[derive(Args)]
pub struct ServeArgs {
    /// A TOML configuration file; the flags below override its keys.
    #[arg(long, value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// The store's data directory [config: data_dir; env: MERKMAIL_DATA].
    #[arg(long, value_name = "DIR")]
    pub(super) data: Option<PathBuf>,
    /// The address to listen on, e.g. 127.0.0.1:8025 (port 0 picks a free one) [config: listen].
    #[arg(long, value_name = "ADDR")]
    pub(super) listen: Option<String>,
    /// Create the store with this node id if DIR holds none [config: node_id].
    #[arg(long, value_name = "ID")]
    pub(super) node_id: Option<String>,
    /// The token peers present on the peer API, and that this node presents to peers
    /// [config: peer_token]. Never opens the mail API.
    #[arg(long, value_name = "TOKEN")]
    #[arg(env = "MERKMAIL_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
    /// The token of the mail API and the admin routes (the mail commands' --token carries
    /// it); must differ from every peer token. Without it, once a peer token is set, the
    /// mail API answers 403 [config: admin_token].
    #[arg(long, value_name = "TOKEN")]
    #[arg(env = "MERKMAIL_ADMIN_TOKEN", hide_env_values = true)]
    pub(super) admin_token: Option<String>,
    /// Serve https only, with this PEM certificate chain (leaf first) [config: tls_cert].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(super) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert [config: tls_key].
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(super) tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) that https:// peers must be certified by (default: the
    /// web PKI's roots) [config: tls_ca].
    #[arg(long, value_name = "FILE")]
    pub(super) tls_ca: Option<PathBuf>,
    /// A peer to keep in step with, e.g. http://127.0.0.1:8026 (repeatable) [config: [[peer]]].
    #[arg(long = "peer", value_name = "URL")]
    pub(super) peers: Vec<String>,
    /// Seconds between background checks of a peer [config: check_interval_s; default 60].
    #[arg(long, value_name = "SECONDS")]
    pub(super) check_interval: Option<u64>,
    /// Live-Maildir stores: seconds between safety-net passes over the Maildirs; changes are
    /// seen at once through inotify [config: rescan_interval_s; default 60].
    #[arg(long, value_name = "SECONDS")]
    pub(super) rescan_interval: Option<u64>,
    /// async: answer writers at once; sync: wait until a peer stored the change (or
    /// --sync-timeout passed) [config: mode; default async].
    #[arg(long, value_name = "MODE", value_parser = ["async", "sync"])]
    pub(super) mode: Option<String>,
    /// How long a sync-mode write waits for a peer, ms [config: sync_timeout_ms; default 2000].
    #[arg(long, value_name = "MS")]
    pub(super) sync_timeout: Option<u64>,
    /// How long an expunge or delete tombstone is kept at least, e.g. 30d, 12h, 90s; it
    /// goes once every peer has it too [config: tombstone_retention; default 30d].
    #[arg(long, value_name = "DURATION")]
    pub(super) tombstone_retention: Option<crate::daemon::config::Retention>,
}
