//! `merkmail status`: the status snapshot as aligned plain text for a terminal. Peer URLs, node
//! ids and error messages come from outside, so their control characters are shown escaped (a
//! peer must not be able to move the cursor).

use std::fmt::Write;

use super::format::{
    age, bytes, differences, duration, fallbacks, journal, mode, run_bytes, session, store_counts,
    uptime, utc,
};
use super::StatusView;

/// Text safe to print on a terminal: control characters (line breaks, escape sequences) from a
/// peer URL or an error message are shown escaped instead of acting on the terminal.
fn term(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Rows of cells as left-aligned columns two spaces apart, each line prefixed by `indent`; the
/// last column is not padded (errors can be long).
fn columns(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; n];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::from(indent);
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `merkmail status`: the same facts as [`page`](super::page) as aligned plain text for a terminal.
/// A live Maildir's passes in one line.
fn maildir(now: u64, m: &super::MaildirView) -> String {
    let last = m.last_pass_ms.map_or("none yet".to_string(), |t| {
        format!("last {} ago", duration(now.saturating_sub(t)))
    });
    format!(
        "{}: {} passes ({} failed), {last}; {} taken in, {} delivered; {} mailboxes owed",
        term(&m.template),
        m.passes_total,
        m.failed_passes_total,
        m.imported_total,
        m.delivered_total,
        m.owed_mailboxes
    )
}

pub fn human(v: &StatusView) -> String {
    let now = v.now_ms;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "merkmail node {} (version {}), up {}, as of {}",
        term(&v.node),
        term(&v.version),
        uptime(v.uptime_s),
        utc(now)
    );
    let mut facts = vec![
        vec!["root".to_string(), term(&v.root)],
        vec!["store".to_string(), store_counts(v)],
        vec![
            "mode".to_string(),
            format!(
                "{}, checks every {}",
                term(&mode(v)),
                duration(v.check_interval_s.saturating_mul(1000))
            ),
        ],
        vec![
            "journal".to_string(),
            format!(
                "head {}, {} inbound pending",
                v.journal_head, v.inbound_pending
            ),
        ],
    ];
    // A live-Maildir store: its passes, and what they could not do.
    if let Some(m) = &v.maildir {
        facts.push(vec!["maildir".to_string(), maildir(now, m)]);
        for p in &m.problems {
            facts.push(vec!["  problem".to_string(), term(p)]);
        }
    }
    columns(&mut o, "", &facts);

    if v.peers.is_empty() {
        o.push_str("\nno peers configured\n");
        return o;
    }
    o.push('\n');
    let mut rows = vec![[
        "PEER",
        "NODE",
        "STATE",
        "CONTACT",
        "NEXT CHECK",
        "LAST RUN",
        "JOURNAL",
        "FALLBACKS",
        "SESSION",
    ]
    .map(String::from)
    .to_vec()];
    for p in &v.peers {
        let state = if p.reachable {
            "up".to_string()
        } else {
            format!("DOWN ({} failures)", p.failures_in_a_row)
        };
        let last_run = match p.runs.first() {
            None => "-".to_string(),
            Some(r) => format!("{} {}", term(r.outcome.as_str()), age(now, Some(r.at_ms))),
        };
        rows.push(vec![
            term(&p.url),
            p.node.as_deref().map(term).unwrap_or_else(|| "-".into()),
            state,
            age(now, p.last_contact_ms),
            age(now, p.next_check_ms),
            last_run,
            journal(p),
            fallbacks(now, p),
            term(&session(now, p)),
        ]);
    }
    columns(&mut o, "", &rows);

    for p in &v.peers {
        let _ = writeln!(
            o,
            "\n{}: {} checks, {} sessions ({} failed), {} out / {} in; repaired: {}",
            term(&p.url),
            p.checks_total,
            p.sessions_total,
            p.sessions_failed_total,
            bytes(p.bytes_sent_total),
            bytes(p.bytes_received_total),
            differences(&p.repaired)
        );
        if p.runs.is_empty() {
            o.push_str("  no runs yet\n");
            continue;
        }
        let mut rows = vec![[
            "WHEN", "TRIGGER", "OUTCOME", "TOOK", "ROUNDS", "BYTES", "REPAIRED", "ERROR",
        ]
        .map(String::from)
        .to_vec()];
        for r in &p.runs {
            rows.push(vec![
                age(now, Some(r.at_ms)),
                term(r.trigger.as_str()),
                term(r.outcome.as_str()),
                duration(r.duration_ms),
                r.rounds.to_string(),
                run_bytes(r),
                differences(&r.differences),
                r.error.as_deref().map(term).unwrap_or_else(|| "-".into()),
            ]);
        }
        columns(&mut o, "  ", &rows);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::super::format::check;
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        check(term, &[("a\nb\u{1b}[2J", "a\\nb\\u{1b}[2J")]);
    }

    #[test]
    fn columns_align_and_leave_the_last_unpadded() {
        let mut out = String::new();
        let rows = vec![
            vec!["A".to_string(), "bb".to_string(), "c".to_string()],
            vec!["aaa".to_string(), "b".to_string(), "long tail".to_string()],
        ];
        columns(&mut out, "  ", &rows);
        assert_eq!(out, "  A    bb  c\n  aaa  b   long tail\n");
    }
}
