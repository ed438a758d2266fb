//! The `merkmail` command: argument parsing, logging set-up, and errors turned into exit codes.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use merkmail::merkle::{NodeKey, NodeValue, DEPTH};
use merkmail::model::{parse_flag_list, FlagName, FlagOp, MailboxGuid};
use merkmail::net::json::{MailboxView, MessageView, StatsView};
use merkmail::net::remote::MailClient;
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
}

/// Exactly one of --data and --url.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
struct Place {
    /// The store's data directory (holds merkmail.redb).
    #[arg(long, value_name = "DIR", env = "MERKMAIL_DATA")]
    data: Option<PathBuf>,
    /// A running `merkmail serve` to ask instead, e.g. http://127.0.0.1:8025.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERKMAIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // One line that names the problem; the cause chain joined with ": ".
            eprintln!("merkmail: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn open(data: &Data) -> Result<Store> {
    Ok(Store::open(&data.data)?)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
        Command::Mailbox(cmd) => mailbox(cmd, &mut out)?,
        Command::Append {
            data,
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
                let bytes = read_input(file)?;
                messages.push(NewMessage {
                    bytes,
                    flags: flags.clone(),
                    internal_date,
                    ..NewMessage::default()
                });
            }
            let store = open(&data)?;
            for outcome in store.append(&user, &mailbox, messages)? {
                writeln!(out, "{}", outcome.uid)?;
            }
        }
        Command::Flags {
            data,
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
            let store = open(&data)?;
            let now = store.set_flags(&user, &mailbox, uid, op, &flags)?;
            writeln!(
                out,
                "{}",
                now.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")
            )?;
        }
        Command::Expunge {
            data,
            user,
            mailbox,
            uids,
        } => {
            let n = open(&data)?.expunge(&user, &mailbox, &uids)?;
            writeln!(out, "expunged {n} message{}", if n == 1 { "" } else { "s" })?;
        }
        Command::List {
            data,
            user,
            mailbox,
            json,
        } => {
            let store = open(&data)?;
            let messages = store.list_messages(&user, mailbox.as_deref())?;
            if json {
                let rows: Vec<_> = messages.iter().map(message_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:>8} {:>9}  {:<32}  FLAGS",
                    "MAILBOX", "UID", "SIZE", "MD5"
                )?;
                for m in &messages {
                    let flags: Vec<&str> = m.record.flags.live().map(|f| f.as_str()).collect();
                    writeln!(
                        out,
                        "{:<24} {:>8} {:>9}  {}  {}",
                        m.mailbox,
                        m.uid,
                        m.record.size,
                        m.record.md5,
                        flags.join(" ")
                    )?;
                }
            }
        }
        Command::Fetch {
            data,
            user,
            mailbox,
            uid,
        } => {
            let bytes = open(&data)?.fetch(&user, &mailbox, uid)?;
            out.write_all(&bytes)?;
        }
        Command::Root { data } => {
            writeln!(out, "{}", open(&data)?.root()?.hash.to_hex())?;
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
        Command::Verify { data } => {
            let store = open(&data)?;
            let report = store.verify()?;
            if report.is_ok() {
                writeln!(
                    out,
                    "ok: {} tree nodes and {} messages checked; root {}",
                    report.nodes_checked,
                    report.messages_checked,
                    store.root()?.hash.to_hex()
                )?;
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
        Command::Stats { data, json } => {
            let store = open(&data)?;
            let c = store.counters()?;
            let root = store.root()?.hash.to_hex();
            if json {
                let v = serde_json::json!({
                    "node_id": store.node_id(),
                    "users": c.users,
                    "mailboxes": c.mailboxes,
                    "messages": c.messages,
                    "bytes": c.message_bytes,
                    "bodies": c.bodies,
                    "body_bytes": c.body_bytes,
                    "tombstones": c.tombstones,
                    "mailbox_tombstones": c.mailbox_tombstones,
                    "depth": DEPTH,
                    "root": root,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(out, "node               {}", store.node_id())?;
                writeln!(out, "users              {}", c.users)?;
                writeln!(out, "mailboxes          {}", c.mailboxes)?;
                writeln!(out, "messages           {}", c.messages)?;
                writeln!(out, "bytes              {}", c.message_bytes)?;
                writeln!(
                    out,
                    "bodies (distinct)  {} ({} bytes)",
                    c.bodies, c.body_bytes
                )?;
                writeln!(
                    out,
                    "tombstones         {} messages, {} mailboxes",
                    c.tombstones, c.mailbox_tombstones
                )?;
                writeln!(out, "tree depth         {DEPTH} levels")?;
                writeln!(out, "root               {root}")?;
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
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
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

fn message_json(m: &merkmail::store::MessageInfo) -> serde_json::Value {
    let (flags, keywords): (Vec<_>, Vec<_>) = m.record.flags.live().partition(|f| f.is_system());
    serde_json::json!({
        "mailbox": m.mailbox,
        "mailbox_guid": m.guid.to_hex(),
        "uid": m.uid,
        "md5": m.record.md5.to_hex(),
        "digest": m.record.digest.to_hex(),
        "size": m.record.size,
        "internal_date": m.record.internal_date,
        "flags": flags.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        "keywords": keywords.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
    })
}

fn mailbox(cmd: MailboxCommand, out: &mut impl Write) -> Result<()> {
    match cmd {
        MailboxCommand::Create { data, user, name } => {
            let guid = open(&data)?.create_mailbox(&user, &name)?;
            writeln!(out, "created {name} ({guid})")?;
        }
        MailboxCommand::Rename {
            data,
            user,
            name,
            new_name,
        } => {
            open(&data)?.rename_mailbox(&user, &name, &new_name)?;
            writeln!(out, "renamed {name} to {new_name}")?;
        }
        MailboxCommand::Delete { data, user, name } => {
            open(&data)?.delete_mailbox(&user, &name)?;
            writeln!(out, "deleted {name}")?;
        }
        MailboxCommand::List { data, user, json } => {
            let list = open(&data)?.list_mailboxes(&user)?;
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
