//! The commands that need the store in this process (`--data` only): init, tree, verify,
//! compact, import-maildir and export-maildir.

use super::args::Data;
use super::print;
use super::progress::{Label, Meter};
use crate::maildir::backend::{self, Template};
use crate::merkle::{NodeHash, NodeKey, NodeValue, BUCKET_SHIFT};
use crate::model::MailboxGuid;
use crate::store::Store;
use anyhow::{Context, Result};
use std::io::Write;
use std::process::ExitCode;

/// `init`: a new, empty store for `node_id`; with `maildir`, the index of a live Maildir tree.
pub(super) fn init(
    data: &Data,
    node_id: &str,
    maildir: Option<&str>,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let Some(template) = maildir else {
        Store::init(&data.data, node_id)?;
        writeln!(
            out,
            "initialised an empty store in {} for node {node_id}",
            data.data.display()
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    let template = Template::parse(template)?;
    Store::init_maildir(&data.data, node_id, template.as_str())?;
    writeln!(
        out,
        "initialised a store in {} for node {node_id}, beside the Maildirs at {} \
         (run `merkmail scan` or `merkmail serve` to take in their mail)",
        data.data.display(),
        template.as_str()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `scan`: one pass over a live-Maildir store's Maildirs (or one user's), both ways.
pub(super) fn scan(
    data: &Data,
    user: Option<&str>,
    json: bool,
    quiet: bool,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let store = open(data)?;
    let Some(template) = backend::template_of(&store)? else {
        anyhow::bail!(
            "the store in {} holds its own mail: scan needs a store made with `init --maildir`",
            data.data.display()
        );
    };
    let mut meter = Meter::start(Label::new("scan", "users"), quiet);
    let report = backend::pass_with_progress(&store, &template, user, &mut meter.observer())?;
    meter.finish();
    print::print(&print::ScanReport(report), json, out)?;
    Ok(ExitCode::SUCCESS)
}

/// `verify`: the tree rebuilt from the records and compared with the stored one, and with
/// `bodies` every body re-hashed too (its verdict comes first). Exit 1 if either is wrong.
pub(super) fn verify(
    data: &Data,
    bodies: bool,
    quiet: bool,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let store = open(data)?;
    let mut meter = Meter::start(Label::new("verify", "messages"), quiet);
    let report = store.verify_with_progress(&mut meter.observer())?;
    meter.finish();
    let bodies_ok = !bodies || verify_bodies(&store, quiet, out)?;
    print::tree_verdict(&report, || Ok(store.root()?.hash.to_hex()), out)?;
    // A live-Maildir store: the index held against the Maildirs too.
    let disk_ok = match backend::template_of(&store)? {
        Some(template) => {
            let disk = backend::verify(&store, &template)?;
            print::disk_verdict(&disk, out)?;
            disk.mismatches.is_empty()
        }
        None => true,
    };
    Ok(if report.is_ok() && bodies_ok && disk_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `verify --bodies`: re-hashes every body (progress on stderr) and prints what rotted.
/// Returns whether every body matched its digest.
fn verify_bodies(store: &Store, quiet: bool, out: &mut impl Write) -> Result<bool> {
    let mut meter = Meter::start(Label::new("verify --bodies", "bodies"), quiet);
    let report = store.verify_bodies(&mut meter.observer())?;
    meter.finish();
    print::body_verdict(&report, out)?;
    Ok(report.damaged.is_empty())
}

/// `compact`: the store file rewritten without its free pages. Offline by construction: while
/// a server holds the store, the open fails with the store's "in use by another process".
pub(super) fn compact(data: &Data, json: bool, out: &mut impl Write) -> Result<ExitCode> {
    let store = open(data)?;
    let done = store
        .compact()
        .with_context(|| format!("compacting the store in {}", data.data.display()))?;
    print::print(&print::CompactReport::from(done), json, out)?;
    Ok(ExitCode::SUCCESS)
}

/// `space`: where the store file's bytes go, per table.
pub(super) fn space(data: &Data, json: bool, out: &mut impl Write) -> Result<ExitCode> {
    let store = open(data)?;
    let space = store
        .space()
        .with_context(|| format!("reading the store in {}", data.data.display()))?;
    let mail = store.counters()?.message_bytes;
    print::print(&print::SpaceReport::of(space, mail), json, out)?;
    Ok(ExitCode::SUCCESS)
}

/// Which way `import-maildir` and `export-maildir` move mail.
#[derive(Clone, Copy)]
pub(super) enum Transfer {
    /// A Maildir++ tree into `user`'s mail.
    Import,
    /// `user`'s mail as a Maildir++ tree that Dovecot reads.
    Export,
}

/// `import-maildir` or `export-maildir`, with a progress meter on stderr (none with `quiet`).
pub(super) fn transfer(
    way: Transfer,
    args: &super::args::TransferArgs,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let (user, path, quiet) = (args.user.as_str(), args.path.as_path(), args.quiet);
    let store = open(&args.data)?;
    let verb = match way {
        Transfer::Import => "import",
        Transfer::Export => "export",
    };
    let mut meter = Meter::start(Label::new(verb, "messages"), quiet);
    let report = {
        let progress = &mut meter.observer();
        match way {
            Transfer::Import => crate::maildir::import(&store, user, path, progress)
                .with_context(|| format!("importing {}", path.display()))?
                .to_string(),
            Transfer::Export => crate::maildir::export(&store, user, path, progress)
                .with_context(|| format!("exporting to {}", path.display()))?
                .to_string(),
        }
    };
    meter.finish();
    writeln!(out, "{report}")?;
    Ok(ExitCode::SUCCESS)
}

fn open(data: &Data) -> Result<Store> {
    Ok(Store::open(&data.data)?)
}

/// `tree`: the nodes below the top, a user or a mailbox, `depth` levels deep, depth first.
pub(super) fn tree(
    data: &Data,
    user: Option<String>,
    mailbox: Option<String>,
    depth: usize,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let store = open(data)?;
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
        hash: NodeHash::EMPTY,
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
                let first = index << BUCKET_SHIFT;
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
    Ok(ExitCode::SUCCESS)
}
