//! The companion chat server of syncws: thread per connection on the library's core, rooms with
//! sequence numbers and durable history, recovery after reconnect, matchmaking, an explicit
//! slow-consumer policy, limits and metrics.
//!
//! - [`server`]: listeners, accept loops, a thread per connection, shutdown;
//! - [`http`]: plain HTTP on the same port (`/healthz`, `/metrics`, later the pages);
//! - [`conn`]: one connection's handler (parsing, rate limit, `ping`, `hello`);
//! - [`hub`]: the one thread that owns rooms, members, sequence numbers and matchmaking, and
//!   writes the store in grouped commits before anything is delivered;
//! - [`store`]: SQLite (WAL): rooms, last sequence numbers, history;
//! - [`protocol`]: the JSON frames; [`eventlog`]: JSON lines; [`metrics`]: counters;
//!   [`devcert`]: the TLS identity.

pub mod conn;
pub mod devcert;
pub mod eventlog;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod options;
pub mod protocol;
pub mod server;
pub mod store;

pub use options::Options;
pub use server::Server;
