//! Reconciliation between two replicas: the wire formats (session rounds, journal batches),
//! the responder, the initiator's session (a state machine that does no network I/O), and a
//! driver that runs a session over any transport. Only `net` knows HTTP.

pub mod driver;
pub mod journal_wire;
pub mod replica;
pub mod responder;
pub mod session;
pub mod wire;

pub use driver::{in_process, run, run_with_progress, DriveError};
pub use replica::Replica;
pub use session::{Session, SessionError, SyncReport};
