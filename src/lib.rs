//! # syncws: a synchronous WebSocket client
//!
//! WebSocket without an async runtime: a thread you own, callbacks or channels, and deadlines on
//! everything. Four front-ends share one core (a `Session` that owns the tungstenite socket), so
//! they behave the same: same config, same errors, same close semantics, same guarantees.
//!
//! | mode | runs on | you write | waits by | choose it for |
//! |---|---|---|---|---|
//! | [`BlockingClient`] | your thread | a [`Handler`], plus a [`CommandSender`] to stop it from other threads | OS poll on the socket | simple request/response and streaming clients |
//! | [`NonBlockingClient`] | your thread | a [`Handler`], plus a [`CommandSender`] for other threads | [`WaitStrategy`]: spin, sleep or readiness | latency-critical loops (spin), or owning the loop |
//! | [`ThreadedClient`] | a worker thread | a loop over `event_rx` | OS poll + waker | applications that want channels, not callbacks |
//! | [`ConnectionSet`] (also [`ClientSet`]) | your thread, for many connections, client and server alike | a [`Handler`] per connection ([`Context::id`] names it), a [`SetHandle`] to add or adopt connections from anywhere | one OS poll for every socket (epoll on Linux) + one waker + one timer heap | thousands of connections: fan-in, gateways, probes, load generators, servers on a few threads |
//!
//! ## Blocking
//!
//! ```no_run
//! use syncws::{BlockingClient, CloseInfo, Config, Context, Handler};
//!
//! struct Echo { left: usize }
//! impl Handler for Echo {
//!     fn on_activated(&mut self, ctx: &mut Context<'_>) {
//!         ctx.send_text("ping 0").unwrap();
//!     }
//!     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
//!         self.left -= 1;
//!         if self.left == 0 {
//!             ctx.close(1000, "done").unwrap();
//!         } else {
//!             ctx.send_text(&format!("ping {}", self.left)).unwrap();
//!         }
//!     }
//!     fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &CloseInfo) {
//!         println!("closed with {}", close.code);
//!     }
//! }
//!
//! let client = BlockingClient::connect("ws://127.0.0.1:9001", &Config::default())?;
//! client.run(&mut Echo { left: 10 });
//! # Ok::<(), syncws::Error>(())
//! ```
//!
//! ## Non-blocking
//!
//! See [`NonBlockingClient`]: the same [`Handler`], a [`WaitStrategy`] in the [`Config`], and
//! [`NonBlockingClient::handle`] for other threads.
//!
//! ## Threaded
//!
//! See [`ThreadedClient`]: `control_tx.send(Command::..)` in, `event_rx.recv()` out.
//!
//! ## Many connections on one thread
//!
//! See [`ConnectionSet`]: `add(url, &config, handler)` as often as you like, then `run()`; every
//! connection opens, talks and closes as its socket allows, none waits for another. It takes
//! accepted server connections too ([`ConnectionSet::adopt`], [`SetHandle::adopt`]). A panic
//! in one connection's hook ends that connection alone (closed with 1011, reported as
//! [`Error::Panicked`]); in the other modes a panic is the calling thread's, as any panic is.
//!
//! ## Server side
//!
//! [`ServerConnection`] is the same core on an accepted socket: a thread per connection
//! ([`ServerConnection::run`]) or many in a [`ConnectionSet`] ([`SetHandle::adopt`] from the
//! accept loop), the same [`Handler`], [`ServerConnection::handle`] for other threads
//! (broadcasts).
//! [`ServerConnection::accept`] upgrades in one call; [`ServerConnection::read_request`] first
//! hands you the request as an [`Incoming`] (path, query, headers, peer, offered
//! subprotocols), so one port can serve pages and WebSockets: [`Incoming::accept`] with an
//! [`Accept`] (subprotocol, headers), [`Incoming::reject`] with an HTTP status, or
//! [`Incoming::into_http`] for an [`HttpStream`] to answer plain HTTP. Frames a client sends
//! along with its request are kept and handled first. [`Config::server_defaults`] has limits
//! that fit a server (1 MiB queue, 10 s handshake and write timeouts).
//!
//! ```no_run
//! use std::io::Write;
//! use syncws::{Accept, Config, Context, Handler, ServerConnection};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
//!         let _ = ctx.send_text(text);
//!     }
//! }
//!
//! let config = Config::server_defaults();
//! let listener = std::net::TcpListener::bind("127.0.0.1:9001")?;
//! for tcp in listener.incoming() {
//!     let Ok(tcp) = tcp else { continue };
//!     let config = config.clone();
//!     // The handshake waits for the client: on the connection's thread, not the listener's.
//!     std::thread::spawn(move || -> Result<(), syncws::Error> {
//!         let incoming = ServerConnection::read_request(tcp, None, &config)?;
//!         if incoming.is_upgrade() {
//!             incoming.accept(Accept::new())?.run(&mut Echo);
//!         } else {
//!             let mut http = incoming.into_http();
//!             http.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")?;
//!             http.close()?;
//!         }
//!         Ok(())
//!     });
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Guarantees
//!
//! - **Nothing is lost on a graceful close.** Every message the peer sent before its Close
//!   reaches you before [`Handler::on_connection_closed`]; everything you sent before
//!   `close()` reaches the wire before our Close.
//! - **A send is queued exactly once.** When the socket is full the data waits in a bounded
//!   queue and goes out as it drains. From a hook, a send that would pass
//!   [`ConfigBuilder::max_queued_bytes`] fails with [`Error::QueueFull`] and queues nothing;
//!   [`Handler::on_writable`] says when the queue has drained. From another thread, a
//!   [`CommandSender`] waits (or says `Full`) while the connection cannot take more: the
//!   command channel is the bound, and nothing piles up behind it.
//! - **A stop always gets through.** [`CommandSender::close`] and
//!   [`CommandSender::force_quit`] travel beside the queued data, so a peer that stopped
//!   reading cannot hold them up; the close's deadline runs from the call.
//! - **Every accepted command is carried out or reported.** A send that returned `Ok` reaches
//!   the wire, or comes back as [`Error::Closed`] through `on_error` / [`Event::Error`].
//! - **Nothing hangs unless you ask it to.** The name lookup, connect, TLS, the upgrade, the
//!   close handshake and stalled writes ([`ConfigBuilder::write_timeout`], 30 s by default) all
//!   have deadlines ([`TimeoutKind`] says which one passed).
//! - **Bad input ends only that connection**, with the right close code (1007 invalid UTF-8 or
//!   compressed data, 1009 too large, 1002 protocol) and a typed [`Error`]; it never panics.
//! - **In a set, a panic ends only its own connection** (1011, [`Error::Panicked`], then
//!   `on_quit`); the others carry on. Elsewhere a panic is the calling thread's.
//! - `on_quit` / [`Event::Quit`] comes last, exactly once.
//!
//! ## Errors
//!
//! One enum, [`Error`]. Connect errors are distinct and matchable: [`Error::Connect`]
//! (refused), [`Error::Resolve`] (unknown host), [`Error::UnsupportedScheme`],
//! [`Error::Tls`] with a [`TlsFailure`] (another host's certificate, self-signed, ...),
//! [`Error::HandshakeRejected`] with the HTTP status, [`Error::Timeout`]; through a proxy:
//! [`Error::ProxyConnect`], [`Error::ProxyRefused`] with a [`ProxyStatus`] (HTTP 407/403/502,
//! SOCKS5 reply), [`Error::ProxyProtocol`], [`Error::InvalidProxy`]. On the server side, a
//! request the server refused is [`Error::BadRequest`] with the status the client was answered.
//!
//! ## Features
//!
//! - `rustls`: a second TLS backend, [`TlsBackend::Rustls`], beside the default native-tls.
//!
//! ## Liveness and reach
//!
//! Heartbeats ([`ConfigBuilder::ping_interval`]) find dead peers; [`Reconnect`] brings a client
//! back with backoff; [`Proxy`] tunnels through HTTP CONNECT or SOCKS5; [`Metrics`] counts
//! traffic, readable from any thread.
//!
//! ## Compression
//!
//! [`ConfigBuilder::deflate`] turns on permessage-deflate (RFC 7692) with a [`DeflateConfig`];
//! [`Handshake::deflate`] says what the server agreed. Compressed messages that would inflate past
//! the size limit are refused before the memory is spent ([`Error::MessageTooLarge`], 1009), and
//! corrupt ones end the connection with [`Error::InvalidCompressedData`] (1007). It is off by
//! default: it trades CPU for bytes, which pays on slow links only.
//!
//! ## CPU and latency
//!
//! Sends made while handling a burst are written in one system call just before the loop waits
//! (or once `write_buffer_size` bytes are queued), so a lone message is not delayed and a burst
//! does not pay one syscall per message. Readiness waiting costs ~0% CPU when idle; busy spin
//! gives the lowest latency at the price of a core.
//!
//! ## Platforms
//!
//! Readiness waiting goes through `rustix`, with a backend per platform family:
//!
//! | platform | a connection waits in | its waker | descriptors per connection | a [`ConnectionSet`] waits in |
//! |---|---|---|---|---|
//! | Linux | `poll(2)` (with `POLLRDHUP`) | eventfd | 2 | epoll, edge-triggered |
//! | macOS, the BSDs | `poll(2)` | pipe | 3 | `poll(2)`, level-triggered |
//! | Windows | `WSAPoll` | loopback socket pair | 3 (sockets) | `WSAPoll`, level-triggered |
//!
//! A set shares one waker between all its connections, so there a connection costs only its
//! socket ([`ServerConnection::DESCRIPTORS`] is the per-connection figure). Linux runs the
//! test suite with both its own backend and the macOS/BSD one (`RUSTFLAGS="--cfg
//! syncws_portable"`); macOS and Windows are compiled and linted, not run, in CI.
//!
//! ## Versioning
//!
//! Pre-1.0: minor versions may change the API. Public enums and the config are
//! `#[non_exhaustive]` so that adding variants and settings is not a breaking change.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod blocking;
mod close;
mod command;
mod config;
mod connect;
mod connection_set;
#[cfg(test)]
mod core_props;
mod deadline;
mod deflate;
mod dial;
mod driver;
mod error;
mod event;
mod frame;
// Entry points for the fuzz targets in fuzz/ (cargo-fuzz builds with `--cfg fuzzing`), and for
// the tests that replay their corpus: never part of the normal build or the docs.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(all(test, not(fuzzing)))]
mod fuzzing;
mod handler;
mod handshake;
mod heartbeat;
mod http_head;
mod http_stream;
mod incoming;
mod io_outcome;
mod linger;
mod metrics;
mod native_tls_failure;
mod nonblocking;
mod outbox;
mod proxy;
mod read_ahead;
mod reconnect;
mod resolver;
mod server;
mod session;
mod shared_frame;
mod stream;
mod sys;
mod tcp;
mod threaded;
mod tls;
mod wait;
mod waker;

pub use blocking::BlockingClient;
pub use close::{CloseInfo, Initiator};
pub use command::{Command, CommandSender};
pub use config::{Config, ConfigBuilder, Limits, Timeouts, WaitStrategy};
pub use connection_set::{ClientSet, ConnectionSet, SetHandle};
pub use deflate::{DeflateConfig, DeflateParams};
pub use error::{Error, ProxyStatus, TimeoutKind, TlsFailure};
pub use event::Event;
pub use handler::{ConnId, Context, Handler, SendFailure};
pub use handshake::Handshake;
pub use http_stream::HttpStream;
pub use incoming::{Accept, Incoming};
pub use metrics::Metrics;
pub use nonblocking::NonBlockingClient;
pub use proxy::{Proxy, ProxyKind};
pub use reconnect::{Reconnect, ReconnectAttempt, WhileDisconnected};
pub use server::ServerConnection;
pub use shared_frame::SharedFrame;
pub use threaded::ThreadedClient;
pub use tls::TlsBackend;

/// Channel errors returned by [`CommandSender`], which hand the command back.
pub use crossbeam_channel::{SendError, SendTimeoutError, TrySendError};
/// The `http` crate, whose types the server side shows: [`Incoming::request`] is an
/// `http::Request<()>`, [`Incoming::reject`] takes an `http::StatusCode`.
pub use http;
/// Close codes (`CloseCode::Normal` is 1000); any `u16` converts with `.into()`.
pub use tungstenite::protocol::frame::coding::CloseCode;
/// Owned messages for [`Context::send`], and the payload buffers of [`Event`] and [`Command`].
pub use tungstenite::{Bytes, Message, Utf8Bytes};

/// The README's examples, compiled as doc-tests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The guide's examples, compiled as doc-tests like the README's.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide.md")]
pub struct GuideDoctests;
