//! `GET /`: the status snapshot as one self-contained HTML page. Peer URLs, node ids and error
//! messages come from outside, so every string from the snapshot is entity-escaped.

use std::fmt::Write;

use super::format::{
    age, differences, duration, escape, fallbacks, mode, run_bytes, session, span, store_counts,
    uptime, utc,
};
use super::{Outcome, PeerView, StatusView};

/// Text for HTML element content and quoted attribute values.
fn html(s: &str) -> String {
    escape(
        s,
        &[
            ('&', "&amp;"),
            ('<', "&lt;"),
            ('>', "&gt;"),
            ('"', "&quot;"),
            ('\'', "&#39;"),
        ],
    )
}

/// The CSS class an outcome gets: green for equal, red for error, amber for the in-between.
fn outcome_class(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Equal => "ok",
        Outcome::Repaired => "fixed",
        Outcome::Error => "bad",
        Outcome::Unequal | Outcome::Skipped => "warn",
    }
}

const CSS: &str = "\
body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;background:#fff;color:#111}\
h1{font-size:1.4em;margin:0 0 .5em}h2{font-size:1.15em;margin:1.5em 0 .4em}\
h3{font-size:1em;margin:1.2em 0 .3em}\
table{border-collapse:collapse;margin:.3em 0}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:0}\
dt{font-weight:600}dd{margin:0}code{font-size:.9em;word-break:break-all}\
.ok{background:#d4f7d4;color:#064006}.bad{background:#ffd2d2;color:#7a0000;font-weight:600}\
.warn{background:#fff0c2;color:#5c4300}.fixed{background:#dbe9ff;color:#0b2f6b}\
.muted{color:#666}";

/// `GET /`: one self-contained page (inline CSS, no scripts, no external assets) that refreshes
/// itself every 10 seconds. Every string from the snapshot is HTML-escaped; peer URLs appear as
/// text, never as links.
pub fn page(v: &StatusView) -> String {
    let now = v.now_ms;
    let mut o = String::new();
    let node = html(&v.node);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"10\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>merkmail {node}</title><style>{CSS}</style></head><body>\n\
         <h1>merkmail node {node}</h1>\n<dl>\n"
    );
    let down = v.peers.iter().filter(|p| !p.reachable).count();
    let mut facts: Vec<(&str, String)> = vec![
        ("version", html(&v.version)),
        ("uptime", uptime(v.uptime_s)),
        ("snapshot", utc(now)),
        ("root", format!("<code>{}</code>", html(&v.root))),
        ("store", store_counts(v)),
        (
            "mode",
            if v.sync_fallbacks_total > 0 {
                format!("<span class=\"warn\">{}</span>", html(&mode(v)))
            } else {
                html(&mode(v))
            },
        ),
        (
            "checks",
            format!(
                "every {}",
                duration(v.check_interval_s.saturating_mul(1000))
            ),
        ),
        (
            "journal",
            format!(
                "head {}, {} inbound entries pending",
                v.journal_head, v.inbound_pending
            ),
        ),
    ];
    facts.push((
        "peers",
        if v.peers.is_empty() {
            "none configured".to_string()
        } else if down == 0 {
            format!("<span class=\"ok\">all {} reachable</span>", v.peers.len())
        } else {
            format!(
                "<span class=\"bad\">{down} of {} unreachable</span>",
                v.peers.len()
            )
        },
    ));
    for (k, val) in facts {
        let _ = writeln!(o, "<dt>{k}</dt><dd>{val}</dd>");
    }
    o.push_str("</dl>\n<h2>Peers</h2>\n");

    if v.peers.is_empty() {
        o.push_str("<p class=\"muted\">No peers configured.</p>\n");
    } else {
        o.push_str(
            "<table><tr><th>peer</th><th>node</th><th>reachable</th><th>last contact</th>\
             <th>next check</th><th>last run</th><th>journal depth</th><th>oldest unshipped</th>\
             <th>overflow</th><th>sync fallbacks</th><th>session in progress</th>\
             <th>checks</th><th>sessions (failed)</th><th>repaired</th></tr>\n",
        );
        for p in &v.peers {
            page_peer_row(&mut o, now, p);
        }
        o.push_str("</table>\n");
        for p in &v.peers {
            page_peer_runs(&mut o, now, p);
        }
    }
    o.push_str("</body></html>\n");
    o
}

fn page_peer_row(o: &mut String, now: u64, p: &PeerView) {
    let j = &p.journal;
    let reachable = if p.reachable {
        "<td class=\"ok\">yes</td>".to_string()
    } else {
        format!(
            "<td class=\"bad\">no ({} failures in a row)</td>",
            p.failures_in_a_row
        )
    };
    let last_run = match p.runs.first() {
        None => "<td class=\"muted\">none yet</td>".to_string(),
        Some(r) => format!(
            "<td class=\"{}\">{} ({})</td>",
            outcome_class(r.outcome),
            html(r.outcome.as_str()),
            age(now, Some(r.at_ms))
        ),
    };
    let overflow = if j.overflowed {
        "<td class=\"bad\">OVERFLOWED</td>"
    } else {
        "<td>no</td>"
    };
    let fallback_class = if j.sync_fallbacks_total > 0 {
        " warn"
    } else {
        ""
    };
    let session_cell = match &p.session {
        None => "<td>-</td>".to_string(),
        Some(_) => format!("<td class=\"warn\">{}</td>", html(&session(now, p))),
    };
    // Failed sessions are history (a lifetime counter): worth a look, not an alarm.
    let failed_class = if p.sessions_failed_total > 0 {
        " warn"
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "<tr><td><code>{url}</code></td><td>{node}</td>{reachable}\
         <td{contact_abs}>{contact}</td><td>{next}</td>{last_run}\
         <td class=\"n\">{depth}</td><td>{oldest}</td>{overflow}\
         <td class=\"n{fallback_class}\">{fallbacks}</td>{session_cell}\
         <td class=\"n\">{checks}</td><td class=\"n{failed_class}\">{sessions} ({failed})</td>\
         <td>{repaired}</td></tr>",
        url = html(&p.url),
        node = p
            .node
            .as_deref()
            .map(html)
            .unwrap_or_else(|| "-".to_string()),
        contact_abs = p
            .last_contact_ms
            .map(|ms| format!(" title=\"{}\"", utc(ms)))
            .unwrap_or_default(),
        contact = age(now, p.last_contact_ms),
        next = age(now, p.next_check_ms),
        depth = j.depth,
        oldest = j
            .oldest_unshipped_age_ms
            .map(span)
            .unwrap_or_else(|| "-".into()),
        fallbacks = fallbacks(now, p),
        checks = p.checks_total,
        sessions = p.sessions_total,
        failed = p.sessions_failed_total,
        repaired = html(&differences(&p.repaired)),
    );
}

fn page_peer_runs(o: &mut String, now: u64, p: &PeerView) {
    let _ = writeln!(o, "<h3>Last runs with <code>{}</code></h3>", html(&p.url));
    if p.runs.is_empty() {
        o.push_str("<p class=\"muted\">No runs yet.</p>\n");
        return;
    }
    o.push_str(
        "<table><tr><th>when</th><th>trigger</th><th>outcome</th><th>duration</th>\
         <th>rounds</th><th>bytes</th><th>differences repaired</th><th>error</th></tr>\n",
    );
    for r in &p.runs {
        let error = match &r.error {
            None => "<td>-</td>".to_string(),
            Some(e) => format!("<td class=\"bad\">{}</td>", html(e)),
        };
        let _ = writeln!(
            o,
            "<tr><td title=\"{abs}\">{when}</td><td>{trigger}</td>\
             <td class=\"{class}\">{outcome}</td><td class=\"n\">{duration}</td>\
             <td class=\"n\">{rounds}</td><td>{bytes}</td><td>{diff}</td>{error}</tr>",
            abs = utc(r.at_ms),
            when = age(now, Some(r.at_ms)),
            trigger = html(r.trigger.as_str()),
            class = outcome_class(r.outcome),
            outcome = html(r.outcome.as_str()),
            duration = duration(r.duration_ms),
            rounds = r.rounds,
            bytes = run_bytes(r),
            diff = html(&differences(&r.differences)),
        );
    }
    o.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::super::format::check;
    use super::*;

    #[test]
    fn snapshot_strings_are_entity_escaped() {
        check(html, &[("<script>&'\"", "&lt;script&gt;&amp;&#39;&quot;")]);
    }
}
