//! Progress on stderr for long commands (`import-maildir`, `export-maildir`, `verify`, `sync`,
//! and any other work that reports [`Progress`]): the layers below report counts through a
//! callback, and a [`Meter`] here renders them.
//!
//! - stderr a terminal: one line that updates in place (indicatif), with a bar once the total
//!   is known and the elapsed time kept fresh between reports;
//! - otherwise: a plain line every `MERKMAIL_PROGRESS_INTERVAL_MS` (default 5 000 ms) while
//!   the work runs, even if no report came meanwhile, and always a last line with the final
//!   counts. With an interval of 0, every report prints a line (the tests use that).
//!
//! Nothing goes to stdout, so `--json` output stays clean; `--quiet` makes a meter that
//! prints nothing.

use crate::model::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The environment variable that sets the interval of plain progress lines, in ms.
pub(super) const INTERVAL_VAR: &str = "MERKMAIL_PROGRESS_INTERVAL_MS";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How often a terminal's line is redrawn when no report comes (the elapsed time moves on).
const TICK: Duration = Duration::from_millis(200);

/// What a meter shows: `what: 41 000 of 100 000 messages, 300 MB, 12 s`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Label {
    /// The work, first on the line: `import`, `sync`.
    pub what: &'static str,
    /// What is counted: `messages`, `bodies`.
    pub unit: &'static str,
    /// Said while the total is not known (`total not known yet`).
    pub unknown: &'static str,
}

impl Label {
    pub(super) fn new(what: &'static str, unit: &'static str) -> Label {
        Label {
            what,
            unit,
            unknown: "total not known yet",
        }
    }

    /// The same label with another note for the time the total is unknown.
    pub(super) fn unknown_until(self, unknown: &'static str) -> Label {
        Label { unknown, ..self }
    }

    /// The counts part of a line: `41 000 of 100 000 messages, 300 MB`.
    fn counts(&self, p: &Progress) -> String {
        match p.total {
            Some(total) => format!(
                "{} of {} {}, {}",
                number(p.done),
                number(total),
                self.unit,
                bytes(p.bytes)
            ),
            None => format!(
                "{} {} so far ({}), {}",
                number(p.done),
                self.unit,
                self.unknown,
                bytes(p.bytes)
            ),
        }
    }

    /// A whole plain line.
    pub(super) fn line(&self, p: &Progress, elapsed: Duration) -> String {
        format!("{}: {}, {}", self.what, self.counts(p), span(elapsed))
    }
}

struct Plain {
    label: Label,
    started: Instant,
    interval: Duration,
    last: Progress,
    printed: Instant,
    /// The report the last line showed.
    shown: Option<Progress>,
}

impl Plain {
    fn print(&mut self) {
        self.printed = Instant::now();
        self.shown = Some(self.last);
        let line = self.label.line(&self.last, self.started.elapsed());
        // A closed or full stderr is no reason to stop the work.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

enum Render {
    Off,
    Bar {
        bar: ProgressBar,
        label: Label,
        known: bool,
    },
    Plain {
        state: Arc<Mutex<Plain>>,
        /// Dropping the sender stops the ticker.
        stop: Option<mpsc::Sender<()>>,
        ticker: Option<JoinHandle<()>>,
    },
}

/// Renders one piece of work's progress on stderr; [`Meter::finish`] prints the last line.
pub(super) struct Meter {
    render: Render,
    /// The latest report.
    last: Progress,
    finished: bool,
}

fn lock(state: &Mutex<Plain>) -> MutexGuard<'_, Plain> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Meter {
    /// A meter for `label`'s work, starting now; with `quiet`, one that shows nothing.
    pub(super) fn start(label: Label, quiet: bool) -> Meter {
        let render = if quiet {
            Render::Off
        } else if std::io::stderr().is_terminal() {
            // Set up hidden, so the first line drawn is a whole one.
            let bar = ProgressBar::hidden();
            bar.set_style(style(false));
            bar.set_prefix(label.what);
            bar.set_message(label.counts(&Progress::default()));
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(TICK);
            Render::Bar {
                bar,
                label,
                known: false,
            }
        } else {
            Self::plain(label, interval())
        };
        Meter {
            render,
            last: Progress::default(),
            finished: false,
        }
    }

    fn plain(label: Label, interval: Duration) -> Render {
        let now = Instant::now();
        let state = Arc::new(Mutex::new(Plain {
            label,
            started: now,
            interval,
            last: Progress::default(),
            printed: now,
            shown: None,
        }));
        if interval.is_zero() {
            // Every report prints; no ticker.
            return Render::Plain {
                state,
                stop: None,
                ticker: None,
            };
        }
        // A line every interval even while no report comes (one long transaction, one long
        // round): the ticker prints when the last line is an interval old.
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = Arc::clone(&state);
        let ticker = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                // Stops when the meter drops its sender.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let mut plain = lock(&shared);
                    if plain.printed.elapsed() >= plain.interval {
                        plain.print();
                    }
                }
            })
            .ok();
        Render::Plain {
            state,
            stop: Some(stop),
            ticker,
        }
    }

    /// Takes a report: shown at once on a terminal, as a line if one is due otherwise.
    pub(super) fn update(&mut self, p: Progress) {
        self.last = p;
        match &mut self.render {
            Render::Off => {}
            Render::Bar { bar, label, known } => {
                // The message first: a bar drawn with the old, longer message would wrap.
                bar.set_message(label.counts(&p));
                if let Some(total) = p.total {
                    if !*known {
                        *known = true;
                        bar.set_style(style(true));
                    }
                    // A second sync session, or mail appended during an export, moves it.
                    bar.set_length(total);
                }
                bar.set_position(p.done);
            }
            Render::Plain { state, .. } => {
                let mut plain = lock(state);
                plain.last = p;
                if plain.printed.elapsed() >= plain.interval {
                    plain.print();
                }
            }
        }
    }

    /// A callback for the layers below, which report through `&mut dyn FnMut(Progress)`.
    pub(super) fn observer(&mut self) -> impl FnMut(Progress) + '_ {
        |p| self.update(p)
    }

    /// The work is over: the last line, with the counts of the latest report (the work's
    /// own last one carries its final counts).
    pub(super) fn finish(mut self) {
        self.finished = true;
        self.stop_ticker();
        match &self.render {
            Render::Off => {}
            Render::Bar { bar, .. } => bar.finish(),
            Render::Plain { state, .. } => {
                // The last line carries the final counts; it is not repeated if the latest
                // report is already on a line.
                let mut plain = lock(state);
                if plain.shown != Some(plain.last) {
                    plain.print();
                }
            }
        }
    }

    fn stop_ticker(&mut self) {
        if let Render::Plain { stop, ticker, .. } = &mut self.render {
            drop(stop.take());
            if let Some(t) = ticker.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Meter {
    /// Work that failed leaves its last line as it stood (the error follows it).
    fn drop(&mut self) {
        self.stop_ticker();
        if let (Render::Bar { bar, .. }, false) = (&self.render, self.finished) {
            bar.abandon();
        }
    }
}

/// The plain lines' interval: `MERKMAIL_PROGRESS_INTERVAL_MS`, or 5 s when unset or not a
/// number.
fn interval() -> Duration {
    std::env::var(INTERVAL_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_INTERVAL, Duration::from_millis)
}

/// The terminal line: a spinner while the total is unknown, a bar once it is.
fn style(known: bool) -> ProgressStyle {
    let template = if known {
        "{prefix}: [{bar:24}] {msg}, {elapsed}"
    } else {
        "{prefix}: {spinner} {msg}, {elapsed}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ")
}

/// `41 000`: a count with its thousands apart.
pub(super) fn number(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// `300 MB`, `1.5 GB`, `512 B`: decimal units, one decimal below 10.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.5 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if value < 9.95 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// `12 s`, `3 min 12 s`, `2 h 5 min`.
pub(super) fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_bytes_and_spans_read_as_the_issue_writes_them() {
        assert_eq!(number(0), "0");
        assert_eq!(number(999), "999");
        assert_eq!(number(41_000), "41 000");
        assert_eq!(number(1_234_567), "1 234 567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1_500), "1.5 kB");
        assert_eq!(bytes(300_000_000), "300 MB");
        assert_eq!(bytes(999_999), "1.0 MB");
        assert_eq!(bytes(735_000_000_000), "735 GB");
        assert_eq!(span(Duration::from_millis(12_400)), "12 s");
        assert_eq!(span(Duration::from_secs(192)), "3 min 12 s");
        assert_eq!(span(Duration::from_secs(7_500)), "2 h 5 min");
    }

    #[test]
    fn a_line_says_the_total_or_that_it_is_not_known() {
        let label = Label::new("sync", "messages");
        let known = Progress::of(41_000, 100_000, 300_000_000);
        assert_eq!(
            label.line(&known, Duration::from_secs(12)),
            "sync: 41 000 of 100 000 messages, 300 MB, 12 s"
        );
        let unknown = Progress {
            done: 1_200,
            total: None,
            bytes: 30_000_000,
        };
        assert_eq!(
            label
                .unknown_until("comparing the trees")
                .line(&unknown, Duration::from_secs(3)),
            "sync: 1 200 messages so far (comparing the trees), 30 MB, 3 s"
        );
    }
}
