//! Every flag, with its default shown in `--help`; each can also be set from the environment
//! variable named after it (`--max-per-ip` is `CHAT_MAX_PER_IP`), the flag winning when both
//! are given.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The companion chat server of syncws: rooms with sequence numbers and durable history,
/// recovery after reconnect, matchmaking, limits and metrics, thread per connection.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-server", version)]
pub struct Options {
    /// Plain ws:// and HTTP listener ("off" for none). Port 0 picks a free port.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// TLS wss:// and HTTPS listener ("off" for none).
    #[arg(long, env = "CHAT_TLS_LISTEN", default_value = "127.0.0.1:8443")]
    pub tls_listen: String,
    /// TLS certificate (PEM); without it a development certificate is generated in the data
    /// directory.
    #[arg(long, env = "CHAT_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8).
    #[arg(long, env = "CHAT_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Where the store, the event log and the development certificate live (created if
    /// missing, readable by the server's user alone: 0700, files 0600).
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "chat-data")]
    pub data_dir: PathBuf,

    /// Largest message a client may send, in bytes (larger: close 1009).
    #[arg(long, env = "CHAT_MAX_MESSAGE", default_value_t = 64 * 1024)]
    pub max_message: usize,
    /// Bytes queued for one connection before it counts as a slow consumer (close 4008).
    #[arg(long, env = "CHAT_OUTBOX_BYTES", default_value_t = 1024 * 1024)]
    pub outbox_bytes: usize,
    /// Messages per second one connection may send (token bucket refill rate).
    #[arg(long, env = "CHAT_RATE", default_value_t = 20.0)]
    pub rate: f64,
    /// Messages one connection may send at once (token bucket size).
    #[arg(long, env = "CHAT_BURST", default_value_t = 40.0)]
    pub burst: f64,
    /// Rate-limited messages in a row after which the connection is closed with 1008.
    #[arg(long, env = "CHAT_RATE_ABUSE", default_value_t = 200)]
    pub rate_abuse: u32,
    /// WebSocket connections open at once, all listeners together (more: HTTP 503 before the
    /// upgrade). Lowered to what the file descriptor limit holds, if it is lower.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Sockets open at once from one client address (an IPv6 client: its /64), upgraded or
    /// not, all listeners together; more are refused when accepted (503, no thread). Behind a
    /// reverse proxy on the same host every client has the proxy's address: raise this.
    #[arg(long, env = "CHAT_MAX_PER_IP", default_value_t = 64)]
    pub max_per_ip: usize,
    /// Sockets in their handshake (TLS, the HTTP request, plain HTTP requests) at once, all
    /// listeners together; more are refused when accepted (503, no thread).
    #[arg(long, env = "CHAT_MAX_HANDSHAKES", default_value_t = 256)]
    pub max_handshakes: usize,
    /// Seconds an accepted socket may stay silent before its first byte (then it is closed).
    #[arg(long, env = "CHAT_FIRST_BYTE_TIMEOUT", default_value_t = 3.0)]
    pub first_byte_timeout: f64,
    /// Seconds a client has for TLS and its HTTP request.
    #[arg(long, env = "CHAT_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Seconds without a message from a client before it is closed (1000 "idle"); 0: never.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value_t = 600)]
    pub idle_timeout: u64,
    /// Seconds between pings to each client; 0: no heartbeat.
    #[arg(long, env = "CHAT_PING_INTERVAL", default_value_t = 25)]
    pub ping_interval: u64,
    /// Seconds a client has to answer a ping before it counts as dead.
    #[arg(long, env = "CHAT_PONG_TIMEOUT", default_value_t = 10)]
    pub pong_timeout: u64,
    /// Rooms one connection may be in at once.
    #[arg(long, env = "CHAT_MAX_ROOMS", default_value_t = 100)]
    pub max_rooms: usize,
    /// Messages kept per room.
    #[arg(long, env = "CHAT_HISTORY_MAX", default_value_t = 1000)]
    pub history_max: u64,
    /// Hours a message is kept.
    #[arg(long, env = "CHAT_HISTORY_HOURS", default_value_t = 24 * 7)]
    pub history_hours: u64,
    /// Sync every commit to the disk (survives power loss; slower). Without it, everything
    /// committed survives a crash of the server.
    #[arg(long, env = "CHAT_DURABLE")]
    pub durable: bool,
    /// Size of one event log file before the next is started, in bytes.
    #[arg(long, env = "CHAT_LOG_FILE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub log_file_bytes: u64,
    /// Stack size of each connection's thread, in KiB.
    #[arg(long, env = "CHAT_THREAD_STACK_KIB", default_value_t = 256)]
    pub thread_stack_kib: usize,
    /// Run connection threads under the kernel's normal time-sharing policy instead of
    /// SCHED_BATCH. By default (Linux) they are batch threads: a connection woken by the hub
    /// waits for the hub to finish handing out its batch instead of preempting it, which on a
    /// small machine is the difference between the hub keeping up and falling seconds behind.
    #[arg(long, env = "CHAT_NO_BATCH_THREADS")]
    pub no_batch_threads: bool,
    /// Serve chat connections from N event-driven threads, each a syncws `ConnectionSet`
    /// (connections spread across them by id), instead of a thread per connection. 0: a
    /// thread per connection (the default). The handshake still runs on a short-lived thread
    /// of its own; `/echo` always has a thread per connection. At most 1024.
    #[arg(long, env = "CHAT_EVENT_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub event_threads: u16,
    /// Serve the browser pages' files from this directory, read on every request (for working
    /// on them: `--web-dir chat/web`), instead of the copies compiled into the binary.
    #[arg(long, env = "CHAT_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Require an HS256 JWT signed with this secret (at least 32 bytes; a shorter or empty one
    /// refuses to start) for the WebSocket upgrade (`?token=` or `Authorization: Bearer`); its
    /// `sub` is the nick. A valid token also opens `/report`, `/logs` and `/metrics` from other
    /// hosts (without --admin-listen they answer only this host otherwise).
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// With --jwt-secret: tokens must carry this `aud` (a token that names no audience, or
    /// another, is refused). Without it, tokens that name any audience are refused.
    #[arg(long, env = "CHAT_JWT_AUDIENCE", requires = "jwt_secret")]
    pub jwt_audience: Option<String>,
    /// Serve `/report`, `/logs` and `/metrics` on this address (e.g. 127.0.0.1:9090), to anyone
    /// who can reach it, with no token, and no longer on the chat ports. `/healthz` stays on the
    /// chat ports too, for load balancers. Without it, those pages are on the chat ports for
    /// requests from this host only (or with a --jwt-secret token).
    #[arg(long, env = "CHAT_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Seconds between two samples of the server's counters for `/report` (in stats.db).
    #[arg(long, env = "CHAT_STATS_EVERY", default_value_t = 5)]
    pub stats_every: u64,
    /// Serve `/echo` (every message back as it came; for conformance runs such as Autobahn's
    /// fuzzing client): the chat's token, heartbeat and idle timeout apply, with its own few
    /// slots (`--echo-max-connections`) and message size (`--echo-max-message`).
    #[arg(long, env = "CHAT_ECHO")]
    pub echo: bool,
    /// Largest message on `/echo`, in bytes (Autobahn's cases need 16 MiB).
    #[arg(long, env = "CHAT_ECHO_MAX_MESSAGE", default_value_t = 1 << 20)]
    pub echo_max_message: usize,
    /// `/echo` connections open at once.
    #[arg(long, env = "CHAT_ECHO_MAX_CONNECTIONS", default_value_t = 8)]
    pub echo_max_connections: usize,
    /// Cluster mode: share rooms, their seqs, history, messages and presence with every node
    /// on this Redis (redis://HOST:PORT[/DB]), matchmaking too.
    #[arg(long, env = "CHAT_REDIS")]
    pub redis: Option<String>,
}

impl Options {
    /// The defaults, as `chat-server` with no arguments.
    pub fn defaults() -> Options {
        Options::parse_from(["chat-server"])
    }

    pub fn opt_secs(secs: u64) -> Option<Duration> {
        (secs > 0).then(|| Duration::from_secs(secs))
    }
}
