//! Formatting the HTML page and the terminal view share: ages, durations, sizes and dates in
//! words, and the few phrases both show (a journal, a session, the mode); the character
//! escaping the page shares with the metrics text; the unit scaling `merkmail stats` shares.
//! Every age is measured against the snapshot's own `now_ms`: no clock here.

use std::fmt::Write;

use super::{Mode, PeerView, RepairedView, RunView, StatusView};

/// A span in its largest whole unit: `42s`, `5m`, `3h`, `2d`.
pub(super) fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `at` relative to `now`: `3s ago`, `2m ago`, `in 40s`; `never` when unknown.
pub(super) fn age(now_ms: u64, at_ms: Option<u64>) -> String {
    match at_ms {
        None => "never".to_string(),
        Some(at) if at <= now_ms => format!("{} ago", span(now_ms - at)),
        Some(at) => format!("in {}", span(at - now_ms)),
    }
}

/// A run's or the daemon's duration: `850ms`, `2.4s`, `42s`, `3m 12s`, `5h 3m`, `2d 4h`.
pub(super) fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..10_000 => format!("{}.{}s", s, (ms % 1000) / 100),
        10_000..60_000 => format!("{s}s"),
        60_000..3_600_000 => pair(s / 60, "m", s % 60, "s"),
        3_600_000..86_400_000 => pair(s / 3600, "h", (s % 3600) / 60, "m"),
        _ => pair(s / 86_400, "d", (s % 86_400) / 3600, "h"),
    }
}

/// The daemon's uptime, known in whole seconds: `under 1s`, then as [`duration`] (not `0ms`,
/// which would claim a precision the count does not have).
pub(super) fn uptime(s: u64) -> String {
    match s {
        0 => "under 1s".to_string(),
        _ => duration(s.saturating_mul(1000)),
    }
}

/// `3m 12s`, or `3m` when the smaller unit is zero.
fn pair(big: u64, big_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `1.2 MiB`.
pub(super) fn bytes(n: u64) -> String {
    size_in_units(n, 1024, &["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"])
}

/// `n` bytes with one decimal in powers of `base` (1000 or 1024), `units` naming `base`¹,
/// `base`², …: `512 B`, `1.5 KiB`, `142.6 MB`. Below `base`, whole bytes.
pub fn size_in_units(n: u64, base: u64, units: &[&str]) -> String {
    if n < base || units.is_empty() {
        return format!("{n} B");
    }
    let base = base as f64;
    let mut value = n as f64 / base;
    let mut unit = 0;
    // Move up while the value would print as `base`.0 or more in this unit.
    while value >= base - 0.05 && unit + 1 < units.len() {
        value /= base;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// `s` with every character that `table` names replaced by its escape.
pub(super) fn escape(s: &str, table: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match table.iter().find(|(from, _)| *from == c) {
            Some((_, to)) => out.push_str(to),
            None => out.push(c),
        }
    }
    out
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian calendar).
pub(super) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil, shifted so that years start on 1 March.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The non-zero kinds of difference in words: `3 copied to peer, 1 expunged`; `-` when none.
pub(super) fn differences(r: &RepairedView) -> String {
    let words = [
        (r.copied_to_peer, "copied to peer"),
        (r.copied_from_peer, "copied from peer"),
        (r.expunged, "expunged"),
        (r.flag_updates, "flag updates"),
        (r.uid_clashes_renumbered, "UID clashes renumbered"),
        (r.mailboxes_changed, "mailboxes changed"),
        (r.bodies_repaired, "damaged bodies repaired"),
    ];
    let parts: Vec<String> = words
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}

/// The journal toward a peer in a few words: `empty`, `7 (oldest 2m)`, plus `OVERFLOWED`.
pub(super) fn journal(p: &PeerView) -> String {
    let j = &p.journal;
    let mut s = if j.depth == 0 {
        "empty".to_string()
    } else {
        match j.oldest_unshipped_age_ms {
            Some(ms) => format!("{} (oldest {})", j.depth, span(ms)),
            None => j.depth.to_string(),
        }
    };
    if j.overflowed {
        s.push_str(" OVERFLOWED");
    }
    s
}

pub(super) fn session(now_ms: u64, p: &PeerView) -> String {
    match &p.session {
        None => "-".to_string(),
        Some(s) => format!(
            "{} {}, {} rounds, {}, for {}",
            s.direction,
            s.trigger,
            s.rounds,
            bytes(s.bytes),
            span(now_ms.saturating_sub(s.started_ms))
        ),
    }
}

pub(super) fn fallbacks(now_ms: u64, p: &PeerView) -> String {
    let j = &p.journal;
    match j.last_sync_fallback_ms {
        Some(at) if j.sync_fallbacks_total > 0 => {
            format!(
                "{} (last {})",
                j.sync_fallbacks_total,
                age(now_ms, Some(at))
            )
        }
        _ => j.sync_fallbacks_total.to_string(),
    }
}

/// The replication mode and, in `sync` mode, its timeout and how often writes fell back.
pub(super) fn mode(v: &StatusView) -> String {
    let mut s = v.mode.to_string();
    if v.mode == Mode::Sync {
        let _ = write!(s, " (timeout {})", duration(v.sync_timeout_ms));
    }
    if v.sync_fallbacks_total > 0 {
        let _ = write!(s, ", {} writes fell back to async", v.sync_fallbacks_total);
    }
    s
}

pub(super) fn store_counts(v: &StatusView) -> String {
    let c = &v.counts;
    format!(
        "{} users, {} mailboxes, {} messages ({}), {} bodies ({}), {} tombstones",
        c.users,
        c.mailboxes,
        c.messages,
        bytes(c.message_bytes),
        c.bodies,
        bytes(c.body_bytes),
        c.tombstones
    )
}

pub(super) fn run_bytes(r: &RunView) -> String {
    let mut s = format!(
        "{} out / {} in",
        bytes(r.bytes_sent),
        bytes(r.bytes_received)
    );
    if r.body_bytes_sent + r.body_bytes_received > 0 {
        let _ = write!(
            s,
            "; bodies {} out / {} in",
            bytes(r.body_bytes_sent),
            bytes(r.body_bytes_received)
        );
    }
    s
}

/// Checks `f` against a table of inputs and the text each must give.
#[cfg(test)]
pub(super) fn check<T: Copy + std::fmt::Debug>(f: impl Fn(T) -> String, cases: &[(T, &str)]) {
    for (input, expected) in cases {
        assert_eq!(f(*input), *expected, "input {input:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let now = 1_000_000_000;
        check(
            |at: Option<u64>| age(now, at),
            &[
                (None, "never"),
                (Some(now), "0s ago"),
                (Some(now - 3_400), "3s ago"),
                (Some(now - 125_000), "2m ago"),
                (Some(now - 5 * 3_600_000), "5h ago"),
                (Some(now - 3 * 86_400_000), "3d ago"),
                (Some(now + 40_000), "in 40s"),
            ],
        );
    }

    #[test]
    fn an_uptime_under_a_second_says_so() {
        check(
            uptime,
            &[(0, "under 1s"), (1, "1.0s"), (42, "42s"), (192, "3m 12s")],
        );
    }

    #[test]
    fn durations_keep_two_units() {
        check(
            duration,
            &[
                (0, "0ms"),
                (850, "850ms"),
                (2_450, "2.4s"),
                (42_999, "42s"),
                (192_000, "3m 12s"),
                (18_180_000, "5h 3m"),
                (187_200_000, "2d 4h"),
                (60_000, "1m"),
                (7_200_000, "2h"),
            ],
        );
    }

    #[test]
    fn sizes_use_binary_units() {
        check(
            bytes,
            &[
                (0, "0 B"),
                (1023, "1023 B"),
                (1024, "1.0 KiB"),
                (1536, "1.5 KiB"),
                (1_258_291, "1.2 MiB"),
                (1024 * 1024 - 1, "1.0 MiB"),
                (5 * 1024 * 1024 * 1024, "5.0 GiB"),
                (u64::MAX, "16.0 EiB"),
            ],
        );
    }

    #[test]
    fn utc_dates() {
        check(
            utc,
            &[
                (0, "1970-01-01 00:00:00 UTC"),
                (951_782_400_000, "2000-02-29 00:00:00 UTC"),
                (1_700_000_000_123, "2023-11-14 22:13:20 UTC"),
                (4_102_444_799_000, "2099-12-31 23:59:59 UTC"),
            ],
        );
    }

    #[test]
    fn differences_list_only_what_happened() {
        check(
            |r: RepairedView| differences(&r),
            &[
                (RepairedView::default(), "-"),
                (
                    RepairedView {
                        copied_to_peer: 3,
                        expunged: 1,
                        ..Default::default()
                    },
                    "3 copied to peer, 1 expunged",
                ),
            ],
        );
    }
}
