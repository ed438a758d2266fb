//! merkmail keeps replicated mail stores identical.
//!
//! Code map (see docs/ARCHITECTURE.md for the boundaries):
//! - [`model`]: users, mailboxes, messages, flags, stamps; pure.
//! - [`merkle`]: the tree's layout, hashing and incremental update; pure.
//! - [`store`]: the redb store, the only module that touches redb.
//! - [`maildir`]: Maildir++ import and export.
//! - [`sync`]: reconciliation: wire format, responder, the initiator's session, driver.
//! - [`net`]: HTTP, the only module that knows it: the server, the mail API, the client.
//! - [`status`]: the status snapshot and its renderings (JSON, Prometheus, HTML, terminal); pure.
//! - [`daemon`]: the background checker, the journal's shippers, and the status snapshot's source.

pub mod daemon;
pub mod maildir;
pub mod merkle;
pub mod model;
pub mod net;
pub mod status;
pub mod store;
pub mod sync;
