//! The daemon: what `merkmail serve` runs beside the HTTP server — the background consistency
//! checker, the replication journal's shippers and applier, fast resync after failures — and
//! what it shows its operator.
//!
//! - [`view`]: the status snapshot (`/status`), plain data.
//! - [`render`]: the snapshot as Prometheus text, an HTML page and a terminal view.

pub mod config;
pub mod render;
pub mod schedule;
pub mod view;
