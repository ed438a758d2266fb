//! What the commands print on stdout: the tables, the counts, the reports, and the JSON forms
//! (`--json`). tests/cli.rs and tests/http.rs hold these bytes to account.

use crate::net::json::{MailboxView, MessageView, StatsView};
use crate::store::{BodyReport, Compacted, Space, VerifyReport};
use crate::sync::SyncReport;
use serde::Serialize;
use std::fmt::Display;
use std::io::{self, Write};

/// Reports list this many problems or damaged bodies, then say how many more there are.
const SHOWN: usize = 50;

/// What a command prints: a human form, or with `--json` the value as indented JSON.
pub(super) trait Printed: Serialize {
    fn human(&self, out: &mut dyn Write) -> io::Result<()>;
}

/// `value` in the form the command was asked for.
pub(super) fn print<T: Printed + ?Sized>(
    value: &T,
    as_json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    } else {
        value.human(out)?;
    }
    Ok(())
}

/// `mailbox list`: a table with a header.
impl Printed for [MailboxView] {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let header = ["NAME", "UIDVALIDITY", "UIDNEXT", "MESSAGES", "SUB", "GUID"];
        mailbox_row(out, header.each_ref().map(|h| h as &dyn Display))?;
        for m in self {
            let sub = if m.subscribed { "yes" } else { "no" };
            let row: [&dyn Display; 6] = [
                &m.name,
                &m.uidvalidity,
                &m.uidnext,
                &m.messages,
                &sub,
                &m.guid,
            ];
            mailbox_row(out, row)?;
        }
        Ok(())
    }
}

/// `list`: a table with a header.
impl Printed for [MessageView] {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let header = ["MAILBOX", "UID", "SIZE", "MD5", "FLAGS"];
        message_row(out, header.each_ref().map(|h| h as &dyn Display))?;
        for m in self {
            let flags = m.all_flags().join(" ");
            message_row(out, [&m.mailbox, &m.uid, &m.size, &m.md5, &flags])?;
        }
        Ok(())
    }
}

// The header and the rows of a table share one format, so their columns cannot drift apart.

fn mailbox_row(out: &mut dyn Write, columns: [&dyn Display; 6]) -> io::Result<()> {
    let [name, validity, next, messages, sub, guid] = columns;
    writeln!(
        out,
        "{name:<32} {validity:>10} {next:>10} {messages:>8} {sub:<4} {guid}"
    )
}

/// An MD5 is 32 hex digits, so its column's width only pads the header.
fn message_row(out: &mut dyn Write, columns: [&dyn Display; 5]) -> io::Result<()> {
    let [mailbox, uid, size, md5, flags] = columns;
    writeln!(out, "{mailbox:<24} {uid:>8} {size:>9}  {md5:<32}  {flags}")
}

/// `stats`: one labelled line per count.
impl Printed for StatsView {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let s = self;
        let lines = [
            ("node", s.node_id.clone()),
            ("users", s.users.to_string()),
            ("mailboxes", s.mailboxes.to_string()),
            ("messages", s.messages.to_string()),
            ("bytes", s.bytes.to_string()),
            (
                "bodies (distinct)",
                format!("{} ({} bytes)", s.bodies, s.body_bytes),
            ),
            (
                "tombstones",
                format!(
                    "{} messages, {} mailboxes",
                    s.tombstones, s.mailbox_tombstones
                ),
            ),
            ("tree depth", format!("{} levels", s.depth)),
            ("root", s.root.clone()),
        ];
        for (label, value) in lines {
            writeln!(out, "{label:<18} {value}")?;
            // The file's size goes beside the mail's; an in-memory store and a server older
            // than `file_bytes` have none, and then the line is left out.
            if label == "bytes" {
                if let Some(file) = s.file_bytes {
                    writeln!(out, "{:<18} {}", "file", file_line(file, s.bytes))?;
                }
            }
        }
        Ok(())
    }
}

/// The `file` line of `stats`: the store file's size, and how many times the mail's it is.
fn file_line(file: u64, mail: u64) -> String {
    if mail == 0 {
        return format!("{} ({file} bytes)", human_size(file));
    }
    // The ratio is for a person to read; f64's precision is ample for it.
    let times = file as f64 / mail as f64;
    format!("{} ({file} bytes, {times:.2} × the mail)", human_size(file))
}

/// A size in decimal units with one decimal (142.6 MB), as `du -h --si` would put it.
fn human_size(bytes: u64) -> String {
    crate::status::size_in_units(bytes, 1000, &["kB", "MB", "GB", "TB", "PB"])
}

/// What `compact` did, as it prints it: the store file's size in bytes before and after.
#[derive(Serialize)]
pub(super) struct CompactReport {
    pub(super) file_bytes_before: u64,
    pub(super) file_bytes_after: u64,
}

impl From<Compacted> for CompactReport {
    fn from(c: Compacted) -> CompactReport {
        CompactReport {
            file_bytes_before: c.before,
            file_bytes_after: c.after,
        }
    }
}

/// `compact`: one line, the sizes readable and exact.
impl Printed for CompactReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let (before, after) = (self.file_bytes_before, self.file_bytes_after);
        let gain = match before.checked_sub(after) {
            Some(freed) if freed > 0 => format!("{} given back", human_size(freed)),
            _ => "nothing to give back".to_string(),
        };
        writeln!(
            out,
            "compacted the store file: {} → {} ({gain}; {before} → {after} bytes)",
            human_size(before),
            human_size(after)
        )
    }
}

/// What `space` prints: the file, the mail it holds, and each table that holds anything.
#[derive(Serialize)]
pub(super) struct SpaceReport {
    pub(super) file_bytes: Option<u64>,
    pub(super) mail_bytes: u64,
    pub(super) page_size: u64,
    pub(super) allocated_bytes: u64,
    /// The file's bytes redb neither uses nor counts: free pages kept for reuse, and its
    /// own regions' headers.
    pub(super) unallocated_bytes: Option<u64>,
    pub(super) tables: Vec<TableLine>,
}

#[derive(Serialize)]
pub(super) struct TableLine {
    pub(super) name: String,
    pub(super) rows: u64,
    pub(super) pages: u64,
    pub(super) page_bytes: u64,
    pub(super) stored_bytes: u64,
    pub(super) metadata_bytes: u64,
    pub(super) fragmented_bytes: u64,
}

impl SpaceReport {
    pub(super) fn of(space: Space, mail_bytes: u64) -> SpaceReport {
        let allocated_bytes = space.allocated_pages * space.page_size;
        SpaceReport {
            file_bytes: space.file_bytes,
            mail_bytes,
            page_size: space.page_size,
            allocated_bytes,
            unallocated_bytes: space.file_bytes.map(|f| f.saturating_sub(allocated_bytes)),
            tables: space
                .tables
                .into_iter()
                .filter(|t| t.rows > 0)
                .map(|t| TableLine {
                    name: t.name,
                    rows: t.rows,
                    pages: t.leaf_pages + t.branch_pages,
                    page_bytes: t.stored_bytes + t.metadata_bytes + t.fragmented_bytes,
                    stored_bytes: t.stored_bytes,
                    metadata_bytes: t.metadata_bytes,
                    fragmented_bytes: t.fragmented_bytes,
                })
                .collect(),
        }
    }
}

/// `space`: a table, one line per table, sizes in bytes and as a share of the mail.
impl Printed for SpaceReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let times = |b: u64| {
            if self.mail_bytes == 0 {
                String::new()
            } else {
                // For a person to read; f64's precision is ample for it.
                format!("{:.3} ×", b as f64 / self.mail_bytes as f64)
            }
        };
        writeln!(out, "mail               {:>14} bytes", self.mail_bytes)?;
        if let Some(file) = self.file_bytes {
            writeln!(out, "file               {file:>14} bytes  {}", times(file))?;
        }
        writeln!(
            out,
            "allocated pages    {:>14} bytes  {}",
            self.allocated_bytes,
            times(self.allocated_bytes)
        )?;
        if let Some(free) = self.unallocated_bytes {
            writeln!(out, "not allocated      {free:>14} bytes  {}", times(free))?;
        }
        writeln!(
            out,
            "{:<20} {:>9} {:>8} {:>13} {:>13} {:>11} {:>12}  × mail",
            "table", "rows", "pages", "page bytes", "stored", "metadata", "fragmented"
        )?;
        for t in &self.tables {
            writeln!(
                out,
                "{:<20} {:>9} {:>8} {:>13} {:>13} {:>11} {:>12}  {}",
                t.name,
                t.rows,
                t.pages,
                t.page_bytes,
                t.stored_bytes,
                t.metadata_bytes,
                t.fragmented_bytes,
                times(t.page_bytes)
            )?;
        }
        Ok(())
    }
}

/// `sync`'s report: what the session cost and moved. The late copies and what was left for
/// later appear only when there are any.
impl Printed for SyncReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = self;
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
        let mut lines = vec![
            (
                "metadata",
                format!(
                    "{} bytes sent, {} bytes received",
                    r.bytes_sent, r.bytes_received
                ),
            ),
            (
                "bodies",
                format!(
                    "{} bytes sent, {} bytes received",
                    r.body_bytes_sent, r.body_bytes_received
                ),
            ),
            (
                "mailboxes",
                format!(
                    "{} differed, {} changed",
                    r.differing_mailboxes, r.mailboxes_changed
                ),
            ),
            (
                "messages",
                format!(
                    "{} copied to the peer, {} copied from the peer",
                    r.copied_to_peer, r.copied_from_peer
                ),
            ),
            ("expunged", r.expunged.to_string()),
            ("flag updates", r.flag_updates.to_string()),
            (
                "UID clashes",
                format!(
                    "{} (both messages kept under new UIDs)",
                    r.uid_clashes_renumbered
                ),
            ),
        ];
        if r.late_copies > 0 {
            lines.push((
                "late copies",
                format!(
                    "{} (renumbered: they were below the other side's UIDNEXT)",
                    r.late_copies
                ),
            ));
        }
        if r.moves_redone > 0 {
            lines.push((
                "moves redone",
                format!(
                    "{} (a copy where the other side had moved the message away: moved again)",
                    r.moves_redone
                ),
            ));
        }
        if r.stale_mailboxes > 0 || r.body_mismatches > 0 {
            lines.push((
                "left for later",
                format!(
                    "{} mailboxes changed meanwhile, {} bodies did not match their digest",
                    r.stale_mailboxes, r.body_mismatches
                ),
            ));
        }
        lines.push((
            "equal after",
            (if r.equal_after { "yes" } else { "no" }).to_string(),
        ));
        for (label, value) in lines {
            writeln!(out, "  {label:<15} {value}")?;
        }
        Ok(())
    }
}

/// `verify`: the tree's verdict. `root` is the store's root hash, shown when all is well.
pub(super) fn tree_verdict(
    report: &VerifyReport,
    root: impl FnOnce() -> anyhow::Result<String>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if report.is_ok() {
        writeln!(
            out,
            "ok: {} tree nodes and {} messages checked; root {}",
            report.nodes_checked,
            report.messages_checked,
            root()?
        )?;
        return Ok(());
    }
    writeln!(out, "FAILED: {} problem(s):", report.problems.len())?;
    for p in report.problems.iter().take(SHOWN) {
        writeln!(out, "  {p}")?;
    }
    and_more(report.problems.len(), out)
}

/// `verify` on a live-Maildir store: the index held against the Maildirs.
pub(super) fn disk_verdict(
    report: &crate::maildir::backend::DiskReport,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if report.mismatches.is_empty() {
        writeln!(
            out,
            "ok: the Maildirs show what the index holds ({} folders, {} files)",
            report.folders_checked, report.files_checked
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "FAILED: the Maildirs and the index differ in {} place(s):",
        report.mismatches.len()
    )?;
    for m in report.mismatches.iter().take(SHOWN) {
        writeln!(out, "  {m}")?;
    }
    and_more(report.mismatches.len(), out)
}

/// `verify --bodies`: the bodies' verdict, with the messages that use each rotten body.
pub(super) fn body_verdict(report: &BodyReport, out: &mut impl Write) -> anyhow::Result<()> {
    if report.damaged.is_empty() {
        writeln!(
            out,
            "ok: {} bodies ({} bytes) match their digests",
            report.bodies_checked, report.bytes_checked
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "FAILED: {} of {} bodies no longer match their digest (bit rot); marked for repair from a peer:",
        report.damaged.len(),
        report.bodies_checked
    )?;
    for b in report.damaged.iter().take(SHOWN) {
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
    and_more(report.damaged.len(), out)
}

/// The line that follows a list cut at [`SHOWN`] entries of `total`.
fn and_more(total: usize, out: &mut impl Write) -> anyhow::Result<()> {
    if total > SHOWN {
        writeln!(out, "  … and {} more", total - SHOWN)?;
    }
    Ok(())
}

/// `scan`'s report: what came from the Maildirs and what went into them.
#[derive(Serialize)]
#[serde(transparent)]
pub(super) struct ScanReport(pub(super) crate::maildir::backend::PassReport);

impl Printed for ScanReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = &self.0;
        writeln!(
            out,
            "scanned {} user(s), {} folder(s), {} of them read (the others showed no change)",
            r.users, r.folders, r.folders_read
        )?;
        writeln!(
            out,
            "from the Maildirs: {} message(s) taken in ({}), {} flag change(s), {} expunge(s), {} folder(s) new or renamed, {} gone, {} subscription change(s)",
            r.imported,
            human_size(r.imported_bytes),
            r.flags_from_disk,
            r.expunged_on_disk,
            r.folders_found,
            r.folders_gone,
            r.subscriptions_from_disk
        )?;
        writeln!(
            out,
            "into the Maildirs: {} message(s) delivered ({}), {} flag change(s), {} file(s) removed, {} folder(s) made, {} renamed, {} removed ({} kept for mail delivered after the delete), {} rebuilt under a peer's UIDVALIDITY, {} message(s) renumbered",
            r.delivered,
            human_size(r.delivered_bytes),
            r.flags_to_disk,
            r.unlinked,
            r.folders_made,
            r.folders_renamed,
            r.folders_removed,
            r.folders_kept,
            r.folders_rebuilt,
            r.renumbered
        )?;
        if r.folders_being_made > 0 {
            writeln!(
                out,
                "{} folder(s) left for the next pass: the mail server was making them",
                r.folders_being_made
            )?;
        }
        for problem in &r.problems {
            writeln!(out, "problem: {problem}")?;
        }
        Ok(())
    }
}
