//! The status snapshot and its renderings, one per audience: the snapshot itself is `GET
//! /status`'s JSON; [`metrics`] is Prometheus text for `GET /metrics`, [`page`] a self-contained
//! HTML page for `GET /`, and [`human`] the terminal view of `merkmail status`.
//!
//! Pure: no tokio, no hyper, no redb, no clock, no file system. Every age is measured against
//! the snapshot's own `now_ms`, so the same snapshot always renders the same bytes
//! (tests/status_fixture.rs holds them to golden files). net serves it, the daemon builds it,
//! the CLI prints it: all import it downward.
//!
//! - [`snapshot`]: the types ([`StatusView`] and its parts).
//! - [`kinds`]: the closed sets of words in it ([`Outcome`], [`Trigger`], [`Direction`],
//!   [`Mode`]).
//! - `prometheus`, `html`, `terminal` (private): the renderings; `format` (private): the words
//!   for ages, sizes and dates the page and the terminal share.

mod format;
mod html;
pub mod kinds;
mod prometheus;
pub mod snapshot;
mod terminal;

pub use format::size_in_units;
pub use html::page;
pub use kinds::{Direction, Mode, Outcome, Trigger};
pub use prometheus::metrics;
pub use snapshot::{
    CountsView, JournalView, MaildirView, PeerView, RepairedView, RunView, SessionView, StatusView,
};
pub use terminal::human;
