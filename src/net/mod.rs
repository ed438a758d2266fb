//! HTTP: the server with its routes, auth and limits; the mail API; the client. The only
//! module that knows HTTP.
//!
//! - [`server`]: `run(listener, state, shutdown)`, the accept loop with graceful shutdown, and
//!   [`ServerState`] (the store and the configured [`Limits`]).
//! - `router` (private): auth, body limits, deadlines and dispatch; `mail` (private): the mail
//!   API under `/v1/mail/`; [`peer`]: the reconciliation routes under `/v1/sync/`.
//! - [`json`]: the JSON shapes the mail API answers with, shared with the CLI so the local and
//!   the remote commands print the same bytes.
//! - [`client`]: a small async HTTP/1.1 client (timeouts, a response cap, a bearer token,
//!   https) and a blocking wrapper; [`tls`]: rustls configured from PEM files, for the
//!   listener and the client; [`remote`]: the mail API as typed calls, for the CLI's `--url`.
//! - [`peer_client`]: the peer API as typed calls with a typed error, for the daemon and
//!   `merkmail sync`; [`routes`]: the peer API's paths, content types and header, named once.
//!
//! docs/HTTP.md describes every route.

pub mod client;
mod error;
pub mod json;
mod mail;
pub mod peer;
pub mod peer_client;
pub mod remote;
mod request;
mod router;
pub mod routes;
pub mod server;
pub mod sync;
pub mod tls;

pub use error::{reply, ApiError, Reply};
pub use server::{Limits, ServerState};
