//! The companion chat server of syncws: thread per connection on the library's core, rooms with
//! sequence numbers and durable history, recovery after reconnect, matchmaking, an explicit
//! slow-consumer policy, limits and metrics.
//!
//! - [`server`]: listeners, accept loops, a thread per connection, shutdown;
//! - [`http`]: plain HTTP on the same port: the pages ([`web`]: the chat page's files and the
//!   operator pages' script and style; [`report`]: `/report` from [`stats`], the samples a
//!   thread takes; [`logs`]: `/logs`), `/healthz`, `/metrics`, and who may see the operator's
//!   pages; [`auth`]: `--jwt-secret`, and tokens kept out of logs;
//! - [`conn`]: one connection's handler (parsing, rate limit, `ping`, `hello`);
//! - [`hub`]: the one thread that owns rooms, members, sequence numbers and matchmaking, and
//!   writes the store in grouped commits before anything is delivered;
//! - [`store`]: SQLite (WAL): rooms, last sequence numbers, history; [`cluster`]: the same
//!   through Redis for several nodes (`--redis`);
//! - [`protocol`]: the JSON frames; [`eventlog`]: JSON lines; [`metrics`]: counters;
//!   [`devcert`]: the TLS identity; [`private`]: the data directory's modes (0700, 0600).

pub mod auth;
pub mod cluster;
pub mod conn;
pub mod devcert;
pub mod eventlog;
pub mod http;
pub mod hub;
pub mod limits;
pub mod logs;
pub mod matchmaking;
pub mod metrics;
pub mod options;
pub mod private;
pub mod protocol;
pub mod report;
pub mod server;
pub mod stats;
pub mod store;
pub mod web;

pub use options::Options;
pub use server::Server;

/// Milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
