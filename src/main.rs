//! The `merkmail` command: argument parsing, logging set-up, and errors turned into exit codes.

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use merkmail::daemon::config::{Config, Overrides};
use merkmail::daemon::node::Node;
use merkmail::daemon::Daemon;
use merkmail::merkle::{NodeKey, NodeValue};
use merkmail::model::{parse_flag_list, FlagName, FlagOp, MailboxGuid};
use merkmail::net::json::{MailboxView, MessageView, StatsView};
use merkmail::net::remote::MailClient;
use merkmail::status::Mode;
use merkmail::store::{NewMessage, Store};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// merkmail keeps replicated mail stores identical: each server keeps its mail in an
/// embedded store with an incremental Merkle tree beside it, so peers find and repair drift
/// by comparing hashes instead of rescanning mailboxes.
#[derive(Parser)]
#[command(name = "merkmail", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the store is.
#[derive(Args, Clone)]
struct Data {
    /// The store's data directory (holds merkmail.redb).
    #[arg(long, value_name = "DIR", env = "MERKMAIL_DATA")]
    data: PathBuf,
}

/// Where the mail is: a store's data directory, or a running `merkmail serve`.
#[derive(Args, Clone)]
struct Target {
    #[command(flatten)]
    place: Place,
    /// The server's bearer token (with --url).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MERKMAIL_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// With an https:// --url (or --peer): trust only the CA certificates in this PEM file
    /// (default: the web PKI's roots).
    #[arg(long, value_name = "FILE", env = "MERKMAIL_CA")]
    ca: Option<PathBuf>,
}

impl Target {
    /// The client settings for --url and --peer: the CA file, if given.
    fn client_config(&self) -> Result<merkmail::net::client::ClientConfig> {
        client_config(self.ca.as_deref())
    }
}

/// A client's settings with the CAs of `ca` (a PEM file) trusted for https:// URLs.
fn client_config(ca: Option<&Path>) -> Result<merkmail::net::client::ClientConfig> {
    Ok(merkmail::net::client::ClientConfig {
        tls: ca
            .map(merkmail::net::tls::ClientTls::from_ca_file)
            .transpose()
            .context("--ca")?,
        ..merkmail::net::client::ClientConfig::default()
    })
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
}

#[derive(Subcommand)]
enum Command {
    /// Create a new, empty store.
    Init {
        #[command(flatten)]
        data: Data,
        /// This server's name among its peers (A-Z a-z 0-9 . _ -); it seeds its change stamps.
        #[arg(long, value_name = "ID")]
        node_id: String,
    },
    /// Create, rename, delete or list a user's mailboxes.
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Append messages (RFC 5322 files; `-` reads one from stdin) and print the UIDs assigned.
    ///
    /// Appending to INBOX brings a new user into being; other mailboxes must be created first.
    Append {
        #[command(flatten)]
        target: Target,
        user: String,
        mailbox: String,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
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
    /// Add, remove or set the flags of one message.
    #[command(group(clap::ArgGroup::new("op").required(true).args(["add", "remove", "set"])))]
    Flags {
        #[command(flatten)]
        target: Target,
        user: String,
        mailbox: String,
        uid: u32,
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
    /// Expunge messages by UID (each leaves a tombstone so peers learn of the expunge).
    Expunge {
        #[command(flatten)]
        target: Target,
        user: String,
        mailbox: String,
        #[arg(required = true)]
        uids: Vec<u32>,
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
    Sync {
        #[command(flatten)]
        target: Target,
        /// The peer to reconcile with, e.g. http://127.0.0.1:8026.
        #[arg(long, value_name = "URL")]
        peer: String,
        /// The token the peer wants (with --url, --token is the asked server's own).
        #[arg(
            long,
            value_name = "TOKEN",
            env = "MERKMAIL_PEER_TOKEN",
            hide_env_values = true
        )]
        peer_token: Option<String>,
        /// Report the differences without changing either side.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the mail, peer and operator APIs over HTTP, and keep this node's peers in step,
    /// until SIGTERM or SIGINT.
    ///
    /// With peers (--peer, or [[peer]] in --config), a background checker reconciles with each
    /// one every --check-interval (± jitter), at once on start and when a peer comes back; every
    /// local write is journaled and shipped to each peer. Prints `listening on ADDR` on stdout
    /// once it accepts connections (the real port when ADDR ends in :0); logs go to stderr.
    /// docs/HTTP.md describes the routes, docs/CONFIG.md every configuration key.
    Serve {
        /// A TOML configuration file; the flags below override its keys.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The store's data directory [config: data_dir; env: MERKMAIL_DATA].
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// The address to listen on, e.g. 127.0.0.1:8025 (port 0 picks a free one) [config: listen].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Create the store with this node id if DIR holds none [config: node_id].
        #[arg(long, value_name = "ID")]
        node_id: Option<String>,
        /// The token peers present on the peer API, and that this node presents to peers
        /// [config: peer_token]. Never opens the mail API.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "MERKMAIL_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        /// The token of the mail API and the admin routes (the mail commands' --token carries
        /// it); must differ from every peer token. Without it, once a peer token is set, the
        /// mail API answers 403 [config: admin_token].
        #[arg(
            long,
            value_name = "TOKEN",
            env = "MERKMAIL_ADMIN_TOKEN",
            hide_env_values = true
        )]
        admin_token: Option<String>,
        /// Serve https only, with this PEM certificate chain (leaf first) [config: tls_cert].
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert [config: tls_key].
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The CA certificates (PEM) that https:// peers must be certified by (default: the
        /// web PKI's roots) [config: tls_ca].
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// A peer to keep in step with, e.g. http://127.0.0.1:8026 (repeatable) [config: [[peer]]].
        #[arg(long = "peer", value_name = "URL")]
        peers: Vec<String>,
        /// Seconds between background checks of a peer [config: check_interval_s; default 60].
        #[arg(long, value_name = "SECONDS")]
        check_interval: Option<u64>,
        /// async: answer writers at once; sync: wait until a peer stored the change (or
        /// --sync-timeout passed) [config: mode; default async].
        #[arg(long, value_name = "MODE", value_parser = ["async", "sync"])]
        mode: Option<String>,
        /// How long a sync-mode write waits for a peer, ms [config: sync_timeout_ms; default 2000].
        #[arg(long, value_name = "MS")]
        sync_timeout: Option<u64>,
        /// How long an expunge or delete tombstone is kept at least, e.g. 30d, 12h, 90s; it
        /// goes once every peer has it too [config: tombstone_retention; default 30d].
        #[arg(long, value_name = "DURATION")]
        tombstone_retention: Option<merkmail::daemon::config::Retention>,
    },
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
    ImportMaildir {
        #[command(flatten)]
        data: Data,
        user: String,
        path: PathBuf,
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Export a user's mail as a Maildir++ tree that Dovecot reads, UIDs and UIDVALIDITY kept.
    ExportMaildir {
        #[command(flatten)]
        data: Data,
        user: String,
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum MailboxCommand {
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

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(target) = cli.command.target() {
        target.resolve();
    }
    // A server says where it listens and when it stops; the other commands speak only of
    // trouble.
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERKMAIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("merkmail: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line that names the problem: the cause chain joined with ": ", leaving out causes
/// whose text the message already carries (io errors often appear in both).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// `verify --bodies`: re-hashes every body (progress on stderr about every two seconds) and
/// prints what rotted. Returns whether every body matched its digest.
fn verify_bodies(store: &Store, quiet: bool, out: &mut impl Write) -> Result<bool> {
    let started = std::time::Instant::now();
    let mut last = started;
    let report = store.verify_bodies(&mut |p| {
        if !quiet && last.elapsed() >= std::time::Duration::from_secs(2) {
            last = std::time::Instant::now();
            eprintln!(
                "verify: {}/{} bodies re-hashed ({} MiB)",
                p.done,
                p.total,
                p.bytes >> 20
            );
        }
    })?;
    if report.damaged.is_empty() {
        writeln!(
            out,
            "ok: {} bodies ({} bytes) match their digests",
            report.bodies_checked, report.bytes_checked
        )?;
        return Ok(true);
    }
    writeln!(
        out,
        "FAILED: {} of {} bodies no longer match their digest (bit rot); marked for repair from a peer:",
        report.damaged.len(),
        report.bodies_checked
    )?;
    for b in report.damaged.iter().take(50) {
        writeln!(
            out,
            "  body {}: {} bytes now hash to {}",
            b.digest, b.size, b.actual
        )?;
        for m in &b.messages {
            writeln!(
                out,
                "    used by user {:?} mailbox {:?} UID {}",
                m.user, m.mailbox, m.uid
            )?;
        }
    }
    if report.damaged.len() > 50 {
        writeln!(out, "  … and {} more", report.damaged.len() - 50)?;
    }
    Ok(false)
}

fn open(data: &Data) -> Result<Store> {
    Ok(Store::open(&data.data)?)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Command {
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
            | Command::Sync { target, .. } => Some(target),
            Command::Mailbox(
                MailboxCommand::Create { target, .. }
                | MailboxCommand::Rename { target, .. }
                | MailboxCommand::Delete { target, .. }
                | MailboxCommand::List { target, .. },
            ) => Some(target),
            Command::Init { .. }
            | Command::Serve { .. }
            | Command::Status { .. }
            | Command::Tree { .. }
            | Command::Verify { .. }
            | Command::ImportMaildir { .. }
            | Command::ExportMaildir { .. } => None,
        }
    }
}

/// The mail commands' two back ends: a store opened in this process, or a server's mail
/// API. Both answer with the same views, and the commands print from those alone, so the
/// output is the same byte for byte.
enum Mail {
    Local(Store),
    // Boxed: the client (runtime, connection pool, TLS settings) is much larger than a store.
    Remote(Box<MailClient>),
}

impl Mail {
    fn open(target: &Target) -> Result<Mail> {
        match (&target.place.url, &target.place.data) {
            (Some(url), _) => Ok(Mail::Remote(Box::new(MailClient::with_config(
                url,
                target.token.as_deref(),
                target.client_config()?,
            )?))),
            (None, Some(dir)) => Ok(Mail::Local(Store::open(dir)?)),
            (None, None) => bail!("give --data DIR or --url URL"),
        }
    }

    fn create_mailbox(&self, user: &str, name: &str) -> Result<MailboxGuid> {
        Ok(match self {
            Mail::Local(s) => s.create_mailbox(user, name)?,
            Mail::Remote(c) => c.create_mailbox(user, name)?,
        })
    }

    fn rename_mailbox(&self, user: &str, name: &str, new: &str) -> Result<()> {
        match self {
            Mail::Local(s) => s.rename_mailbox(user, name, new)?,
            Mail::Remote(c) => c.rename_mailbox(user, name, new)?,
        }
        Ok(())
    }

    fn delete_mailbox(&self, user: &str, name: &str) -> Result<()> {
        match self {
            Mail::Local(s) => s.delete_mailbox(user, name)?,
            Mail::Remote(c) => c.delete_mailbox(user, name)?,
        }
        Ok(())
    }

    fn list_mailboxes(&self, user: &str) -> Result<Vec<MailboxView>> {
        Ok(match self {
            Mail::Local(s) => s
                .list_mailboxes(user)?
                .into_iter()
                .map(MailboxView::from)
                .collect(),
            Mail::Remote(c) => c.list_mailboxes(user)?,
        })
    }

    fn append(
        &self,
        user: &str,
        mailbox: &str,
        messages: Vec<Vec<u8>>,
        flags: &[FlagName],
        internal_date: i64,
    ) -> Result<Vec<u32>> {
        Ok(match self {
            Mail::Local(s) => {
                let messages = messages
                    .into_iter()
                    .map(|bytes| NewMessage {
                        bytes,
                        flags: flags.to_vec(),
                        internal_date,
                        ..NewMessage::default()
                    })
                    .collect();
                s.append(user, mailbox, messages)?
                    .iter()
                    .map(|o| o.uid)
                    .collect()
            }
            Mail::Remote(c) => c.append(user, mailbox, messages, flags, internal_date)?,
        })
    }

    fn set_flags(
        &self,
        user: &str,
        mailbox: &str,
        uid: u32,
        op: FlagOp,
        flags: &[FlagName],
    ) -> Result<Vec<String>> {
        Ok(match self {
            Mail::Local(s) => s
                .set_flags(user, mailbox, uid, op, flags)?
                .iter()
                .map(|f| f.as_str().to_string())
                .collect(),
            Mail::Remote(c) => c.set_flags(user, mailbox, uid, op, flags)?,
        })
    }

    fn expunge(&self, user: &str, mailbox: &str, uids: &[u32]) -> Result<usize> {
        Ok(match self {
            Mail::Local(s) => s.expunge(user, mailbox, uids)?,
            Mail::Remote(c) => c.expunge(user, mailbox, uids)?,
        })
    }

    fn list_messages(&self, user: &str, mailbox: Option<&str>) -> Result<Vec<MessageView>> {
        Ok(match self {
            Mail::Local(s) => s
                .list_messages(user, mailbox)?
                .iter()
                .map(MessageView::of)
                .collect(),
            Mail::Remote(c) => c.list_messages(user, mailbox)?,
        })
    }

    fn fetch(&self, user: &str, mailbox: &str, uid: u32) -> Result<Vec<u8>> {
        Ok(match self {
            Mail::Local(s) => s.fetch(user, mailbox, uid)?,
            Mail::Remote(c) => c.fetch(user, mailbox, uid)?.into(),
        })
    }

    fn root(&self) -> Result<String> {
        Ok(match self {
            Mail::Local(s) => s.root()?.hash.to_hex(),
            Mail::Remote(c) => c.root()?.root,
        })
    }

    fn stats(&self) -> Result<StatsView> {
        Ok(match self {
            Mail::Local(s) => StatsView::of(s)?,
            Mail::Remote(c) => c.stats()?,
        })
    }
}

fn run(command: Command) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Init { data, node_id } => {
            Store::init(&data.data, &node_id)?;
            writeln!(
                out,
                "initialised an empty store in {} for node {node_id}",
                data.data.display()
            )?;
        }
        Command::Status { url, json, ca } => {
            let client = merkmail::net::client::BlockingClient::new(
                &url,
                None,
                client_config(ca.as_deref())?,
            )?;
            let answer = client.get("/status")?;
            let body =
                merkmail::net::client::expect_success(&client.client().url("/status"), answer)?;
            let view: merkmail::status::StatusView = serde_json::from_slice(&body)
                .with_context(|| format!("{url}/status: not a merkmail status"))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
            } else {
                write!(out, "{}", merkmail::status::human(&view))?;
            }
        }
        Command::Serve {
            config,
            data,
            listen,
            node_id,
            token,
            admin_token,
            tls_cert,
            tls_key,
            tls_ca,
            peers,
            check_interval,
            mode,
            sync_timeout,
            tombstone_retention,
        } => {
            drop(out);
            let overrides = Overrides {
                data_dir: data.or_else(|| {
                    std::env::var_os("MERKMAIL_DATA")
                        .filter(|v| !v.is_empty())
                        .map(PathBuf::from)
                }),
                listen,
                peer_token: token,
                admin_token,
                tls_cert,
                tls_key,
                tls_ca,
                peers,
                check_interval_s: check_interval,
                mode: mode.as_deref().and_then(Mode::parse),
                sync_timeout_ms: sync_timeout,
                node_id,
                tombstone_retention,
            };
            return serve(config.as_deref(), overrides);
        }
        Command::Mailbox(cmd) => mailbox(cmd, &mut out)?,
        Command::Append {
            target,
            user,
            mailbox,
            files,
            flags,
            date,
        } => {
            let flags = parse_flag_list(&flags)?;
            let internal_date = date.unwrap_or_else(now_secs);
            // Read every file before touching the store, so a bad path changes nothing.
            let mut messages = Vec::with_capacity(files.len());
            for file in &files {
                messages.push(read_input(file)?);
            }
            let mail = Mail::open(&target)?;
            for uid in mail.append(&user, &mailbox, messages, &flags, internal_date)? {
                writeln!(out, "{uid}")?;
            }
        }
        Command::Flags {
            target,
            user,
            mailbox,
            uid,
            add,
            remove,
            set,
        } => {
            let (op, list) = match (add, remove, set) {
                (Some(l), None, None) => (FlagOp::Add, l),
                (None, Some(l), None) => (FlagOp::Remove, l),
                (None, None, Some(l)) => (FlagOp::Set, l),
                _ => bail!("give exactly one of --add, --remove or --set"),
            };
            let flags = parse_flag_list(&list)?;
            let now = Mail::open(&target)?.set_flags(&user, &mailbox, uid, op, &flags)?;
            writeln!(out, "{}", now.join(","))?;
        }
        Command::Expunge {
            target,
            user,
            mailbox,
            uids,
        } => {
            let n = Mail::open(&target)?.expunge(&user, &mailbox, &uids)?;
            writeln!(out, "expunged {n} message{}", if n == 1 { "" } else { "s" })?;
        }
        Command::List {
            target,
            user,
            mailbox,
            json,
        } => {
            let messages = Mail::open(&target)?.list_messages(&user, mailbox.as_deref())?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&messages)?)?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:>8} {:>9}  {:<32}  FLAGS",
                    "MAILBOX", "UID", "SIZE", "MD5"
                )?;
                for m in &messages {
                    writeln!(
                        out,
                        "{:<24} {:>8} {:>9}  {}  {}",
                        m.mailbox,
                        m.uid,
                        m.size,
                        m.md5,
                        m.all_flags().join(" ")
                    )?;
                }
            }
        }
        Command::Fetch {
            target,
            user,
            mailbox,
            uid,
        } => {
            let bytes = Mail::open(&target)?.fetch(&user, &mailbox, uid)?;
            out.write_all(&bytes)?;
        }
        Command::Root { target } => {
            writeln!(out, "{}", Mail::open(&target)?.root()?)?;
        }
        Command::Tree {
            data,
            user,
            mailbox,
            depth,
        } => {
            let store = open(&data)?;
            tree(&store, user, mailbox, depth, &mut out)?;
        }
        Command::Verify {
            data,
            bodies,
            quiet,
        } => {
            let store = open(&data)?;
            let report = store.verify()?;
            let bodies_ok = if bodies {
                verify_bodies(&store, quiet, &mut out)?
            } else {
                true
            };
            if report.is_ok() {
                writeln!(
                    out,
                    "ok: {} tree nodes and {} messages checked; root {}",
                    report.nodes_checked,
                    report.messages_checked,
                    store.root()?.hash.to_hex()
                )?;
                if !bodies_ok {
                    return Ok(ExitCode::FAILURE);
                }
            } else {
                writeln!(out, "FAILED: {} problem(s):", report.problems.len())?;
                for p in report.problems.iter().take(50) {
                    writeln!(out, "  {p}")?;
                }
                if report.problems.len() > 50 {
                    writeln!(out, "  … and {} more", report.problems.len() - 50)?;
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Stats { target, json } => {
            let s = Mail::open(&target)?.stats()?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
            } else {
                writeln!(out, "node               {}", s.node_id)?;
                writeln!(out, "users              {}", s.users)?;
                writeln!(out, "mailboxes          {}", s.mailboxes)?;
                writeln!(out, "messages           {}", s.messages)?;
                writeln!(out, "bytes              {}", s.bytes)?;
                writeln!(
                    out,
                    "bodies (distinct)  {} ({} bytes)",
                    s.bodies, s.body_bytes
                )?;
                writeln!(
                    out,
                    "tombstones         {} messages, {} mailboxes",
                    s.tombstones, s.mailbox_tombstones
                )?;
                writeln!(out, "tree depth         {} levels", s.depth)?;
                writeln!(out, "root               {}", s.root)?;
            }
        }
        Command::ImportMaildir {
            data,
            user,
            path,
            quiet,
        } => {
            let store = open(&data)?;
            let report = merkmail::maildir::import(&store, &user, &path, !quiet)
                .with_context(|| format!("importing {}", path.display()))?;
            writeln!(out, "{report}")?;
        }
        Command::ExportMaildir { data, user, path } => {
            let store = open(&data)?;
            let report = merkmail::maildir::export(&store, &user, &path)
                .with_context(|| format!("exporting to {}", path.display()))?;
            writeln!(out, "{report}")?;
        }
        Command::Sync {
            target,
            peer,
            peer_token,
            dry_run,
            json,
        } => {
            // In --data mode the peer's token may come from --token too (there is no other server).
            let report = match (&target.place.url, &target.place.data) {
                (Some(url), _) => merkmail::net::sync::start_remote(
                    url,
                    target.token.as_deref(),
                    &peer,
                    peer_token.as_deref(),
                    dry_run,
                    target.client_config()?,
                )?,
                (None, Some(dir)) => {
                    let config = target.client_config()?;
                    let store = Store::open(dir)?;
                    let token = peer_token.as_deref().or(target.token.as_deref());
                    merkmail::net::sync::sync_with_peer_using(&store, &peer, token, dry_run, config)
                        .with_context(|| format!("reconciling with {peer}"))?
                }
                (None, None) => bail!("give --data DIR or --url URL"),
            };
            print_sync_report(&report, json, &mut out)?;
            if !report.equal_after && !report.dry_run {
                writeln!(out, "the stores are not equal yet (a side changed during the session); run sync again")?;
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `merkmail serve`: reads the configuration (and fails before binding anything if it is
/// wrong), opens the store (creating it when a node id is configured and DIR holds none),
/// binds, prints `listening on ADDR` on stdout (the one line scripts wait for, with the real
/// port when ADDR asked for port 0), starts the daemon, and serves until SIGTERM or SIGINT;
/// then stops the daemon's tasks, drains, and exits 0.
fn serve(config_file: Option<&std::path::Path>, overrides: Overrides) -> Result<ExitCode> {
    let mut config = match config_file {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply(overrides);
    let origin = match config_file {
        Some(p) => format!("config {}", p.display()),
        None => "command line".to_string(),
    };
    config.validate(&origin)?;
    // Certificates are read and checked before anything is bound or opened.
    let (server_tls, client_tls) = config.tls(&origin)?;
    let (Some(dir), Some(listen)) = (config.data_dir.clone(), config.listen.clone()) else {
        bail!("{origin}: data_dir and listen are required");
    };
    let store = match (Store::open(&dir), &config.node_id) {
        (Ok(store), Some(id)) if store.node_id() != id => bail!(
            "{origin}: key `node_id`: {id:?} does not match the store in {}, which belongs to node {:?}",
            dir.display(),
            store.node_id()
        ),
        (Ok(store), _) => store,
        (Err(_), Some(id)) if !dir.join(merkmail::store::DB_FILE).exists() => {
            let store = Store::init(&dir, id)?;
            tracing::info!(dir = %dir.display(), node = %id, "created an empty store");
            store
        }
        (Err(e), _) => return Err(e.into()),
    };
    store.set_quick_repair(config.quick_repair);
    let limits = config.limits.to_limits();
    let shutdown_timeout = std::time::Duration::from_millis(config.shutdown_timeout_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("cannot listen on {listen}"))?;
        if config.peer_token.is_none() && !addr.ip().is_loopback() {
            if config.admin_token.is_none() {
                tracing::warn!(%addr, "no --token and no --admin-token: anyone who can reach this address can read and change the mail");
            } else {
                tracing::warn!(%addr, "no --token: anyone who can reach this address can use the peer API");
            }
        }
        if config.peer_token.is_some() && config.admin_token.is_none() {
            tracing::warn!("no admin token configured (admin_token, --admin-token): the mail API and /v1/sync/start answer 403");
        }
        let store = std::sync::Arc::new(store);
        let node = Node::new(config.clone(), std::sync::Arc::clone(&store))?;
        let state = merkmail::net::ServerState::new(store, config.peer_token.as_deref(), limits)
            .with_admin_token(config.admin_token.as_deref())
            .with_tls(server_tls)
            .with_client_tls(client_tls)
            .with_hooks(node.clone());
        let daemon = Daemon::start(node)?;
        tracing::info!(
            node = %daemon.node.node_id,
            peers = config.peers.len(),
            mode = config.mode.as_str(),
            check_interval_s = config.check_interval_s,
            "daemon started"
        );
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
        }
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(merkmail::net::server::run(
            listener,
            std::sync::Arc::new(state),
            async move {
                let _ = stopped_rx.await;
            },
        ));
        shutdown.await;
        // Sessions stop at their next round, shippers between batches; then the server drains.
        daemon.stop(shutdown_timeout).await;
        let _ = stopped_tx.send(());
        let _ = server.await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGTERM or SIGINT. The handlers are installed before this returns,
/// so a signal that arrives while the server starts is not lost.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
}

fn print_sync_report(
    r: &merkmail::sync::SyncReport,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(r)?)?;
        return Ok(());
    }
    let mode = if r.dry_run {
        " (dry run: nothing changed)"
    } else {
        ""
    };
    writeln!(
        out,
        "reconciled in {} round trips, {} ms{mode}",
        r.rounds, r.duration_ms
    )?;
    writeln!(
        out,
        "  metadata        {} bytes sent, {} bytes received",
        r.bytes_sent, r.bytes_received
    )?;
    writeln!(
        out,
        "  bodies          {} bytes sent, {} bytes received",
        r.body_bytes_sent, r.body_bytes_received
    )?;
    writeln!(
        out,
        "  mailboxes       {} differed, {} changed",
        r.differing_mailboxes, r.mailboxes_changed
    )?;
    writeln!(
        out,
        "  messages        {} copied to the peer, {} copied from the peer",
        r.copied_to_peer, r.copied_from_peer
    )?;
    writeln!(out, "  expunged        {}", r.expunged)?;
    writeln!(out, "  flag updates    {}", r.flag_updates)?;
    writeln!(
        out,
        "  UID clashes     {} (both messages kept under new UIDs)",
        r.uid_clashes_renumbered
    )?;
    if r.late_copies > 0 {
        writeln!(
            out,
            "  late copies     {} (copied below the other side's UIDNEXT)",
            r.late_copies
        )?;
    }
    if r.stale_mailboxes > 0 || r.body_mismatches > 0 {
        writeln!(out, "  left for later  {} mailboxes changed meanwhile, {} bodies did not match their digest", r.stale_mailboxes, r.body_mismatches)?;
    }
    writeln!(
        out,
        "  equal after     {}",
        if r.equal_after { "yes" } else { "no" }
    )?;
    Ok(())
}

fn read_input(file: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(bytes)
}

fn mailbox(cmd: MailboxCommand, out: &mut impl Write) -> Result<()> {
    match cmd {
        MailboxCommand::Create { target, user, name } => {
            let guid = Mail::open(&target)?.create_mailbox(&user, &name)?;
            writeln!(out, "created {name} ({guid})")?;
        }
        MailboxCommand::Rename {
            target,
            user,
            name,
            new_name,
        } => {
            Mail::open(&target)?.rename_mailbox(&user, &name, &new_name)?;
            writeln!(out, "renamed {name} to {new_name}")?;
        }
        MailboxCommand::Delete { target, user, name } => {
            Mail::open(&target)?.delete_mailbox(&user, &name)?;
            writeln!(out, "deleted {name}")?;
        }
        MailboxCommand::List { target, user, json } => {
            let list = Mail::open(&target)?.list_mailboxes(&user)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                writeln!(
                    out,
                    "{:<32} {:>10} {:>10} {:>8} {:<4} GUID",
                    "NAME", "UIDVALIDITY", "UIDNEXT", "MESSAGES", "SUB"
                )?;
                for m in list {
                    let sub = if m.subscribed { "yes" } else { "no" };
                    writeln!(
                        out,
                        "{:<32} {:>10} {:>10} {:>8} {:<4} {}",
                        m.name, m.uidvalidity, m.uidnext, m.messages, sub, m.guid
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn tree(
    store: &Store,
    user: Option<String>,
    mailbox: Option<String>,
    depth: usize,
    out: &mut impl Write,
) -> Result<()> {
    let (start, names): (NodeKey, Vec<(MailboxGuid, String)>) = match (user, mailbox) {
        (None, _) => (NodeKey::root(), Vec::new()),
        (Some(user), mailbox) => {
            let names = store
                .list_mailboxes(&user)?
                .into_iter()
                .map(|m| (m.guid, m.name))
                .collect();
            match mailbox {
                None => (NodeKey::user(&user), names),
                Some(name) => {
                    let guid = store.mailbox(&user, &name)?.guid;
                    (NodeKey::Mailbox { user, guid }, names)
                }
            }
        }
    };
    let value = store.node(&start)?.unwrap_or(NodeValue {
        hash: merkmail::merkle::NodeHash::EMPTY,
        count: 0,
    });
    let mut stack = vec![(0usize, start, value)];
    let mut shown = 0usize;
    while let Some((level, key, value)) = stack.pop() {
        shown += 1;
        if shown > 10_000 {
            writeln!(
                out,
                "… (output cut at 10000 nodes; start lower in the tree)"
            )?;
            break;
        }
        let label = match &key {
            NodeKey::Mailbox { guid, .. } => names.iter().find(|(g, _)| g == guid).map_or_else(
                || key.to_string(),
                |(_, n)| format!("mailbox {n:?} ({guid})"),
            ),
            // Below a mailbox, the user and GUID are already on the lines above.
            NodeKey::Uid {
                level: 0, index, ..
            } => {
                let first = index << merkmail::merkle::BUCKET_SHIFT;
                format!("UIDs {first}..={}", first + 63)
            }
            NodeKey::Uid { level, index, .. } => format!("UID level {level} node {index:x}"),
            _ => key.to_string(),
        };
        writeln!(
            out,
            "{:indent$}{label}  {}  messages={}",
            "",
            &value.hash.to_hex()[..16],
            value.count,
            indent = level * 2
        )?;
        if level < depth {
            let children = store.children(&key)?;
            for (child, v) in children.into_iter().rev() {
                stack.push((level + 1, child, v));
            }
        }
    }
    Ok(())
}
