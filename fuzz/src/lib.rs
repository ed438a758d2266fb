//! The checks behind merkmail's fuzz targets, one module per area. Each `check`-like function
//! takes the raw input and panics when an invariant breaks. The modules depend only on
//! merkmail and crates merkmail itself depends on, so `tests/fuzz_regressions.rs` includes the
//! very same files (by path) and replays minimized inputs with stable `cargo test`.

pub mod config;
pub mod fixture;
pub mod http;
pub mod maildir;
pub mod store_ops;
pub mod wire;
