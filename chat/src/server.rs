//! Listeners, the accept loops, one thread per connection, and the shutdown.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use serde_json::json;
use syncws::{Accept, Config, ConnectionSet, DeflateConfig, Incoming, ServerConnection, SetHandle};

use crate::auth::Auth;
use crate::conn::{ChatConn, Shared};
use crate::devcert::{self, BoxError, TlsFiles};
use crate::eventlog::EventLog;
use crate::http;
use crate::hub::{self, HubOptions, Request};
use crate::limits::{Kind, Limits, Refused, Slot};
use crate::metrics::Metrics;
use crate::options::Options;
use crate::store::{Retention, Store};

/// Sockets the admin port takes at once (its own pool).
const ADMIN_SOCKETS: usize = 16;

/// A running server.
pub struct Server {
    /// Where `ws://` is served, if it is.
    pub ws_addr: Option<SocketAddr>,
    /// Where `wss://` is served, if it is.
    pub wss_addr: Option<SocketAddr>,
    /// The TLS certificate in use (generated or given).
    pub tls_files: Option<TlsFiles>,
    metrics: Arc<Metrics>,
    log: EventLog,
    hub: Sender<Request>,
    hub_thread: Option<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    accept_threads: Vec<JoinHandle<()>>,
    live: Arc<Live>,
    /// `--event-threads`: each set's handle and thread.
    event_threads: Vec<(SetHandle<ChatConn>, JoinHandle<()>)>,
    /// Where `/report` and `/logs` are served, with `--admin-listen`.
    pub admin_addr: Option<SocketAddr>,
    /// Samples the counters for `/report`; takes a last sample when dropped.
    sampler: Option<crate::stats::Sampler>,
}

/// What every listener's accept loop and connection threads share: one id counter and one
/// set of limits for the whole server, so no two connections anywhere share an id and two
/// listeners never double a limit.
struct Context {
    chat_config: Config,
    /// `--echo`: the echo's settings; None: `/echo` is not served.
    echo_config: Option<Config>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    stack: usize,
    batch_threads: bool,
    auth: Option<Arc<Auth>>,
    live: Arc<Live>,
    /// `--event-threads`: the sets that run chat connections (empty: a thread each).
    sets: Vec<SetHandle<ChatConn>>,
    /// How long an accepted socket may stay silent before its first byte.
    first_byte: Duration,
    /// Refusals at the accept loop, logged at most once a second (a flood must not fill the
    /// event log): when the last was logged, and how many were not.
    refusals_logged_ms: AtomicI64,
    refusals_unlogged: AtomicU64,
}

/// One listener: what it serves, over what, under which limits (the chat listeners share
/// theirs; the admin port has its own, so a flood on the chat ports never locks the operator
/// out).
struct Listener {
    ctx: Arc<Context>,
    tls: Option<native_tls::TlsAcceptor>,
    site: Arc<http::Site>,
    limits: Arc<Limits>,
}

/// Connection threads still running (shutdown waits for them).
#[derive(Default)]
struct Live {
    threads: Mutex<usize>,
    changed: std::sync::Condvar,
}

impl Live {
    fn enter(self: &Arc<Self>) -> LiveGuard {
        *self.threads.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        LiveGuard(self.clone())
    }

    /// Wait until no connection thread runs, or `timeout`; returns how many still run.
    fn wait_empty(&self, timeout: Duration) -> usize {
        let guard = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        *self.0.threads.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.changed.notify_all();
    }
}

impl Server {
    /// Open the store and the log, bind the listeners and start serving.
    pub fn start(options: &Options) -> Result<Server, BoxError> {
        // A message is framed as JSON, which may double its text (quotes, backslashes): every
        // frame must fit a connection's queue, or it could never be delivered to anyone.
        if options.outbox_bytes < 4 * options.max_message {
            return Err(format!(
                "--outbox-bytes ({}) must be at least 4 x --max-message ({}): a message's frame must fit a connection's queue",
                options.outbox_bytes, options.max_message
            )
            .into());
        }
        // Before anything is made or bound: a secret too short to keep anyone out.
        let auth = match options.jwt_secret.as_deref() {
            Some(secret) => Some(Arc::new(Auth::new(
                secret,
                options.jwt_audience.as_deref(),
            )?)),
            None => None,
        };
        crate::private::create_dir(&options.data_dir)
            .map_err(|e| format!("data directory {}: {e}", options.data_dir.display()))?;
        let store = Store::open(
            &options.data_dir.join("chat.db"),
            Retention {
                max_messages: options.history_max.max(1),
                max_age: Duration::from_secs(options.history_hours.max(1) * 3600),
            },
            options.durable,
        )
        .map_err(|e| format!("store {}: {e}", options.data_dir.join("chat.db").display()))?;
        let log = EventLog::open(&options.data_dir.join("log"), options.log_file_bytes)
            .map_err(|e| format!("event log: {e}"))?;
        let metrics = Arc::new(Metrics::default());
        let (hub_tx, hub_rx) = bounded(65_536);
        let cluster = match options.redis.as_deref() {
            Some(url) => {
                let hub = hub_tx.clone();
                Some(crate::cluster::Cluster::start(
                    url,
                    options.history_max,
                    Box::new(move |heard| hub.send(Request::Heard(heard)).is_ok()),
                )?)
            }
            None => None,
        };
        let health: Vec<Arc<AtomicBool>> = cluster
            .as_ref()
            .map(|c| vec![c.commands_up.clone(), c.subscriber_up.clone()])
            .unwrap_or_default();
        let hub_thread = hub::spawn(
            store,
            cluster,
            metrics.clone(),
            log.clone(),
            HubOptions::from_options(options),
            hub_rx,
        )?;

        let tls = match options.tls_listen.as_str() {
            "off" | "" => None,
            _ => Some(devcert::acceptor(
                &options.data_dir,
                options.cert.as_deref(),
                options.key.as_deref(),
            )?),
        };
        let (tls, tls_files) = match tls {
            Some((a, f)) => (Some(a), Some(f)),
            None => (None, None),
        };
        let handshake = Some(Duration::from_secs(options.handshake_timeout.max(1)));
        let chat_config = Config::server_builder()
            .max_message_size(Some(options.max_message))
            .max_frame_size(Some(options.max_message))
            .max_queued_bytes(options.outbox_bytes)
            // Chat frames are small, and tungstenite keeps this buffer, touched, for the life
            // of a connection: 4 KiB instead of 16 is 12 KiB less per idle connection. Larger
            // messages still arrive in large reads (the library reads ahead while bulk arrives).
            .read_buffer_size(4 << 10)
            .handshake_timeout(handshake)
            .ping_interval(Options::opt_secs(options.ping_interval))
            .pong_timeout(Duration::from_secs(options.pong_timeout.max(1)))
            .build()?;
        // `/echo` (for conformance runs) only with `--echo`: the same token as chat, the same
        // heartbeat, an idle close, and its own few slots, so it is never a way around the
        // chat's limits.
        let echo_config = if options.echo {
            let max = options.echo_max_message.max(125);
            Some(
                Config::server_builder()
                    .max_message_size(Some(max))
                    .max_frame_size(Some(max))
                    .max_queued_bytes(2 * max)
                    .handshake_timeout(handshake)
                    .ping_interval(Options::opt_secs(options.ping_interval))
                    .pong_timeout(Duration::from_secs(options.pong_timeout.max(1)))
                    .read_timeout(Options::opt_secs(options.idle_timeout))
                    .deflate(Some(DeflateConfig::new()))
                    .build()?,
            )
        } else {
            None
        };
        let limits = json!({
            "max_message": options.max_message,
            "rate": options.rate,
            "burst": options.burst,
            "outbox_bytes": options.outbox_bytes,
            "history_max": options.history_max,
            "max_rooms": options.max_rooms.max(1),
            "history_page": crate::protocol::MAX_HISTORY_PAGE,
            "idle_timeout": options.idle_timeout,
            "ping_interval": options.ping_interval,
            // What each op costs of the rate limit (see Op::cost): a message, a join without
            // since, a ping: 1.
            "costs": {"history_per_25": 1, "join_since": 5, "rooms": 5, "who": 2},
        });
        let live = Arc::new(Live::default());
        let stats_path = options.data_dir.join("stats.db");
        let sampler = crate::stats::Sampler::start(
            stats_path.clone(),
            metrics.clone(),
            Duration::from_secs(options.stats_every.max(1)),
        )
        .map_err(|e| format!("stats {}: {e}", stats_path.display()))?;
        let admin = options
            .admin_listen
            .as_deref()
            .filter(|a| !matches!(*a, "off" | ""));
        let site_for = |role| {
            Arc::new(http::Site {
                metrics: metrics.clone(),
                web: crate::web::Web {
                    dir: options.web_dir.clone(),
                },
                stats: stats_path.clone(),
                log_dir: options.data_dir.join("log"),
                auth: auth.clone(),
                role,
                health: health.clone(),
            })
        };
        let chat_site = site_for(http::Role::Chat {
            operator_pages: admin.is_none(),
        });
        // Every socket needs two descriptors once upgraded (the socket and its waker): beyond
        // what the descriptor limit holds a connection would fail half-open (a reset), so the
        // limits stay inside it and refuse with a 503 instead.
        // A socket in its handshake holds one descriptor; an upgraded one two. Upgraded
        // connections are held to what the descriptor limit allows (beyond it a connection
        // would fail half-open, where a 503 is the honest refusal); sockets in their handshake
        // are few and short-lived, and come to a quarter of it at most.
        // With --event-threads a chat connection holds its socket alone (its set has the
        // waker); `/echo` connections have a thread and a waker each.
        let echo_slots = if options.echo {
            options.echo_max_connections
        } else {
            0
        };
        let fd_room = fd_capacity(options.event_threads > 0, echo_slots);
        let max_handshakes = options.max_handshakes.clamp(1, (fd_room / 2).max(1));
        let max_chat = options.max_connections.min(fd_room);
        let chat_limits = Limits::new(options.max_per_ip, max_handshakes, max_chat, echo_slots);
        let event_threads = (0..usize::from(options.event_threads))
            .map(|n| start_event_thread(n, !options.no_batch_threads))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("cannot start the event threads: {e}"))?;
        let ctx = Arc::new(Context {
            chat_config,
            echo_config,
            shared: Arc::new(Shared {
                hub: hub_tx.clone(),
                metrics: metrics.clone(),
                log: log.clone(),
                limits: limits.clone(),
                rate: options.rate,
                burst: options.burst.max(1.0),
                rate_abuse: options.rate_abuse.max(1),
            }),
            next_id: AtomicU64::new(1),
            stack: options.thread_stack_kib.max(64) << 10,
            batch_threads: !options.no_batch_threads,
            auth: auth.clone(),
            live: live.clone(),
            sets: event_threads.iter().map(|(h, _)| h.clone()).collect(),
            first_byte: Duration::from_millis(
                (options.first_byte_timeout.max(0.001) * 1000.0) as u64,
            ),
            refusals_logged_ms: AtomicI64::new(0),
            refusals_unlogged: AtomicU64::new(0),
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let mut accept_threads = Vec::new();
        let mut bind = |addr: &str,
                        tls: Option<native_tls::TlsAcceptor>,
                        site: Arc<http::Site>,
                        limits: Arc<Limits>|
         -> Result<Option<SocketAddr>, BoxError> {
            if matches!(addr, "off" | "") {
                return Ok(None);
            }
            let listener = listen(addr).map_err(|e| format!("listen on {addr}: {e}"))?;
            let local = listener.local_addr()?;
            let served = Arc::new(Listener {
                ctx: ctx.clone(),
                tls,
                site,
                limits,
            });
            let stopping = stopping.clone();
            accept_threads.push(
                std::thread::Builder::new()
                    .name("chat-accept".into())
                    .spawn(move || accept_loop(&listener, &served, &stopping))?,
            );
            Ok(Some(local))
        };
        let ws_addr = bind(
            &options.listen,
            None,
            chat_site.clone(),
            chat_limits.clone(),
        )?;
        let wss_addr = bind(&options.tls_listen, tls, chat_site.clone(), chat_limits)?;
        let admin_addr = match admin {
            // The operator's own few slots: a flood on the chat ports cannot lock them out.
            Some(addr) => bind(
                addr,
                None,
                site_for(http::Role::Admin),
                Limits::new(ADMIN_SOCKETS, ADMIN_SOCKETS, 0, 0),
            )?,
            None => None,
        };
        let fd_limit = open_files_limit();
        tracing::info!(
            fd_limit,
            connections_allowed = max_chat,
            "limits: {} WebSocket connections overall, {} sockets per client address, {} in their handshake at once; the file descriptor limit allows {}",
            options.max_connections,
            options.max_per_ip,
            max_handshakes,
            fd_room
        );
        log.record(
            "start",
            json!({"ws": ws_addr.map(|a| a.to_string()), "wss": wss_addr.map(|a| a.to_string())}),
        );
        Ok(Server {
            ws_addr,
            wss_addr,
            tls_files,
            metrics,
            log,
            hub: hub_tx,
            hub_thread: Some(hub_thread),
            stopping,
            accept_threads,
            live,
            event_threads,
            admin_addr,
            sampler: Some(sampler),
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Wait until everything recorded in the event log so far is in its file.
    pub fn flush_log(&self) {
        self.log.flush();
    }

    /// Stop accepting, close every connection with 1001, wait for them (up to `grace`), let the
    /// hub finish its last commit, and return.
    pub fn shutdown(mut self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake each accept loop with a connection of our own.
        for addr in [self.ws_addr, self.wss_addr, self.admin_addr]
            .into_iter()
            .flatten()
        {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        for t in self.accept_threads.drain(..) {
            let _ = t.join();
        }
        let (done_tx, done_rx) = bounded(1);
        let mut hub_done = false;
        if self.hub.send(Request::Shutdown(done_tx)).is_ok() {
            let left = self.live.wait_empty(grace);
            if left > 0 {
                tracing::warn!(left, "connections still open after the grace period");
            }
            hub_done = done_rx.recv_timeout(grace).is_ok();
            // Every connection has quit: the event threads' sets are empty and end at once.
            for (set, thread) in self.event_threads.drain(..) {
                if set.stop().is_ok() && left == 0 {
                    let _ = thread.join();
                }
            }
        }
        // The last sample, with the totals of this run.
        drop(self.sampler.take());
        self.log.record("stop", json!({}));
        self.log.flush();
        drop(self.hub);
        match self.hub_thread.take() {
            // It has made its last commit and ended its loop.
            Some(t) if hub_done => {
                let _ = t.join();
            }
            // A connection that outlived the grace period still holds the hub's channel; every
            // commit is already done (each batch commits before it delivers), so leave it.
            Some(_) => tracing::warn!("the hub is still waiting for connections; not joined"),
            None => {}
        }
    }
}

/// Chat connections the descriptor limit holds: each holds its socket and its waker (2
/// descriptors on Linux, 3 where the waker is a pipe), or its socket alone in an event
/// thread's set; the process keeps a few (listeners, the store, the log, the sets' wakers) and
/// the echo's slots theirs.
fn fd_capacity(in_sets: bool, echo_slots: usize) -> usize {
    let per_connection = if in_sets {
        1
    } else {
        syncws::ServerConnection::DESCRIPTORS
    };
    open_files_limit()
        .saturating_sub(64)
        .saturating_sub(echo_slots * syncws::ServerConnection::DESCRIPTORS)
        / per_connection
}

/// The soft limit on open descriptors (RLIMIT_NOFILE; none is unlimited), on every Unix;
/// elsewhere 1024.
fn open_files_limit() -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, Resource};
        getrlimit(Resource::Nofile)
            .current
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }
    #[cfg(not(unix))]
    {
        1024
    }
}

fn accept_loop(listener: &TcpListener, served: &Arc<Listener>, stopping: &AtomicBool) {
    for tcp in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let tcp = match tcp {
            Ok(t) => t,
            Err(e) => {
                // Out of descriptors, most likely: say so and let connections end.
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Ok(peer) = tcp.peer_addr() else {
            continue;
        };
        // Admission first: a socket a limit refuses costs no thread.
        let slot = match served.limits.accept(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refuse_at_accept(tcp, peer, served, why);
                continue;
            }
        };
        let ctx = &served.ctx;
        let guard = ctx.live.enter();
        let served2 = served.clone();
        let spawned = std::thread::Builder::new()
            .name("chat-conn".into())
            .stack_size(ctx.stack)
            .spawn(move || {
                let _guard = guard;
                if served2.ctx.batch_threads {
                    batch_policy();
                }
                serve(tcp, slot, &served2);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a connection thread");
        }
    }
}

/// A socket refused by the limits before anything was spent on it: a 503 on a plain listener
/// (one small write that a fresh socket's buffer always takes; a TLS client would not read
/// it), then the close. Counted always; logged at most once a second, with how many were not.
fn refuse_at_accept(mut tcp: TcpStream, peer: SocketAddr, served: &Listener, why: Refused) {
    let ctx = &served.ctx;
    Metrics::inc(&ctx.shared.metrics.connections_refused_total);
    if served.tls.is_none() && tcp.set_nonblocking(true).is_ok() {
        let body = format!("{}; try again later\n", why.why());
        let _ = tcp.write_all(
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let now = crate::now_ms();
    let last = ctx.refusals_logged_ms.load(Ordering::Relaxed);
    if now - last >= 1000
        && ctx
            .refusals_logged_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let unlogged = ctx.refusals_unlogged.swap(0, Ordering::Relaxed);
        tracing::info!(peer = %peer, why = why.why(), unlogged, "connection refused");
        ctx.shared.log.record(
            "refused",
            json!({"peer": peer.to_string(), "why": why.why(), "also_refused": unlogged}),
        );
    } else {
        ctx.refusals_unlogged.fetch_add(1, Ordering::Relaxed);
    }
}

/// Put the calling thread under SCHED_BATCH (nice unchanged). With thousands of connection
/// threads on a few cores, every frame the hub hands out wakes one; under the normal policy
/// the woken thread preempts the hub at once, so the hub spends its time being switched out
/// mid-batch (a fifth of it, measured) and falls behind. A batch thread is never woken *into*
/// the CPU: it runs when the hub's batch is handed out or its slice ends. Where the policy is
/// not available the thread simply keeps the normal one.
fn batch_policy() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        use thread_priority::{ThreadPriority, ThreadPriorityOsValue};
        let set = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        );
        if let Err(e) = set {
            tracing::debug!(error = ?e, "SCHED_BATCH refused; the connection keeps the normal policy");
        }
    }
}

/// One accepted socket: its first byte, TLS and the request head, then the route. Each step
/// is a function of its own, never inlined, so this frame stays small under every one of them
/// (see `upgrade_chat`).
fn serve(tcp: TcpStream, slot: Slot, served: &Listener) {
    if !first_byte(&tcp, served) {
        return;
    }
    let Some(incoming) = read_request(tcp, served) else {
        return;
    };
    let upgrade = incoming.is_upgrade();
    let admin = served.site.role == http::Role::Admin;
    let echo = served.ctx.echo_config.is_some();
    match (incoming.path(), upgrade && !admin) {
        ("/", true) => upgrade_chat(incoming, slot, served),
        ("/echo", true) if echo => upgrade_echo(incoming, slot, served),
        _ => answer_http(incoming, served),
    }
}

/// Wait, briefly, for the client's first byte (`--first-byte-timeout`, shorter than the
/// handshake's): a socket that says nothing gives its thread and its slot back soon.
#[inline(never)]
fn first_byte(tcp: &TcpStream, served: &Listener) -> bool {
    let ctx = &served.ctx;
    let mut byte = [0u8; 1];
    let said = tcp.set_read_timeout(Some(ctx.first_byte)).is_ok()
        && matches!(tcp.peek(&mut byte), Ok(n) if n > 0)
        && tcp.set_read_timeout(None).is_ok();
    if !said {
        Metrics::inc(&ctx.shared.metrics.handshake_failures_total);
        Metrics::inc(&ctx.shared.metrics.first_byte_timeouts_total);
        tracing::debug!("no first byte in time");
    }
    said
}

#[inline(never)]
fn read_request(tcp: TcpStream, served: &Listener) -> Option<Box<Incoming>> {
    let ctx = &served.ctx;
    match ServerConnection::read_request(tcp, served.tls.as_ref(), &ctx.chat_config) {
        Ok(i) => Some(Box::new(i)),
        Err(e) => {
            Metrics::inc(&ctx.shared.metrics.handshake_failures_total);
            // A request that does not parse is quoted in the error: never its token.
            let error = e.to_string();
            let error = crate::auth::redact(&error);
            tracing::debug!(%error, "before the upgrade");
            ctx.shared
                .log
                .record("handshake_failed", json!({ "error": error }));
            None
        }
    }
}

#[inline(never)]
fn answer_http(incoming: Box<Incoming>, served: &Listener) {
    Metrics::inc(&served.ctx.shared.metrics.http_requests_total);
    http::answer(*incoming, &served.site);
}

#[inline(never)]
fn refuse_busy(incoming: Incoming, ctx: &Context, why: Refused) {
    Metrics::inc(&ctx.shared.metrics.connections_refused_total);
    ctx.shared.log.record(
        "refused",
        json!({"peer": incoming.peer_addr().to_string(), "why": why.why()}),
    );
    http::refuse(
        incoming,
        "503 Service Unavailable",
        "Retry-After: 5\r\n",
        &format!("{}; try again later\n", why.why()),
    );
}

#[inline(never)]
fn refuse_unauthorized(incoming: Incoming, ctx: &Context, why: &str) {
    Metrics::inc(&ctx.shared.metrics.connections_unauthorized_total);
    ctx.shared.log.record(
        "unauthorized",
        json!({"peer": incoming.peer_addr().to_string(), "why": why}),
    );
    http::refuse(
        incoming,
        "401 Unauthorized",
        "WWW-Authenticate: Bearer\r\n",
        &format!("{why}\n"),
    );
}

/// A chat connection: admitted and upgraded (`admit_chat`), then run (`run_chat`). Two
/// functions that are never inlined here, so the deepest call chain a connection thread ever
/// runs (the upgrade, down into the driver's set-up) does not sit under the frame that runs
/// the chat: every page of stack a connection once touched stays in its RSS for its life.
#[inline(never)]
fn upgrade_chat(incoming: Box<Incoming>, slot: Slot, served: &Listener) {
    if let Some(admitted) = admit_chat(incoming, slot, served) {
        run_chat(admitted, served);
    }
}

/// An upgraded chat connection and what it was admitted with.
struct Admitted {
    conn: ServerConnection,
    nick: Option<String>,
    /// The nick came from a token and cannot be changed.
    fixed: bool,
    peer: std::net::SocketAddr,
    _slot: Slot,
}

/// The token's subject when `--jwt-secret` is set (None: no token needed), or the 401 sent.
fn authorize(incoming: Incoming, ctx: &Context) -> Result<(Incoming, Option<String>), ()> {
    let Some(auth) = &ctx.auth else {
        return Ok((incoming, None));
    };
    match auth.check(&incoming).and_then(|sub| {
        crate::protocol::check_nick(&sub)
            .map(|()| sub)
            .map_err(|_| "the token's sub is not a valid nick".to_owned())
    }) {
        Ok(sub) => Ok((incoming, Some(sub))),
        Err(why) => {
            refuse_unauthorized(incoming, ctx, &why);
            Err(())
        }
    }
}

#[inline(never)]
fn admit_chat(incoming: Box<Incoming>, mut slot: Slot, served: &Listener) -> Option<Admitted> {
    let ctx = &served.ctx;
    let peer = incoming.peer_addr();
    // `?nick=ann`: named from the start (a bad nick is ignored; `hello` can set one later).
    let nick = incoming.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "nick")
            .map(|(_, v)| v.into_owned())
            .filter(|n| crate::protocol::check_nick(n).is_ok())
    });
    let (incoming, subject) = authorize(*incoming, ctx).ok()?;
    let fixed = subject.is_some();
    let nick = subject.or(nick);
    if let Err(why) = slot.upgrade(Kind::Chat) {
        refuse_busy(incoming, ctx, why);
        return None;
    }
    match incoming.accept(Accept::new()) {
        Ok(conn) => Some(Admitted {
            conn,
            nick,
            fixed,
            peer,
            _slot: slot,
        }),
        Err(e) => {
            Metrics::inc(&ctx.shared.metrics.handshake_failures_total);
            tracing::debug!(error = %e, "upgrade failed");
            None
        }
    }
}

#[inline(never)]
fn run_chat(admitted: Admitted, served: &Listener) {
    let ctx = &served.ctx;
    let Admitted {
        conn,
        nick,
        fixed,
        peer,
        _slot,
    } = admitted;
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let metrics = &ctx.shared.metrics;
    Metrics::inc(&metrics.connections);
    Metrics::inc(&metrics.connections_total);
    ctx.shared.log.record(
        "connect",
        json!({"id": id, "peer": peer.to_string(), "tls": served.tls.is_some()}),
    );
    let mut chat = ChatConn::new(
        id,
        nick,
        peer.to_string(),
        conn.handle(),
        conn.metrics(),
        ctx.shared.clone(),
    );
    if fixed {
        chat = chat.fix_nick();
    }
    if ctx.sets.is_empty() {
        conn.run(&mut chat);
        return;
    }
    // An event thread runs it from here: what this thread held for the connection goes with
    // it, and this thread ends.
    let set = &ctx.sets[(id % ctx.sets.len() as u64) as usize];
    let chat = chat.holding(Box::new((_slot, ctx.live.enter())));
    if let Err(e) = set.adopt(conn, chat) {
        tracing::warn!(id, error = %e, "an event thread is gone; connection dropped");
    }
}

/// `--event-threads`: a thread running a set of chat connections until the server stops it.
fn start_event_thread(
    n: usize,
    batch: bool,
) -> std::io::Result<(SetHandle<ChatConn>, JoinHandle<()>)> {
    let mut set = ConnectionSet::<ChatConn>::new()?;
    let handle = set.handle();
    let thread = std::thread::Builder::new()
        .name(format!("chat-events-{n}"))
        .spawn(move || {
            if batch {
                batch_policy();
            }
            set.run_until_stopped();
        })?;
    Ok((handle, thread))
}

/// The plain echo for conformance runs (Autobahn's fuzzingclient), with `--echo`: every text
/// and binary message back as it came, compressed when the client offers permessage-deflate.
/// It takes the chat's token and one of the echo's own few slots, and is closed when idle.
#[inline(never)]
fn upgrade_echo(incoming: Box<Incoming>, mut slot: Slot, served: &Listener) {
    let ctx = &served.ctx;
    let Some(config) = &ctx.echo_config else {
        return answer_http(incoming, served);
    };
    let Ok((incoming, _)) = authorize(*incoming, ctx) else {
        return;
    };
    if let Err(why) = slot.upgrade(Kind::Echo) {
        return refuse_busy(incoming, ctx, why);
    }
    // The echo needs its own limits (large messages, compression): the request head was read
    // under the chat's, which are the same for the head.
    let incoming = incoming.with_config(config);
    match incoming.accept(Accept::new()) {
        Ok(conn) => conn.run(&mut Echo),
        Err(e) => tracing::debug!(error = %e, "echo upgrade failed"),
    }
}

struct Echo;

impl syncws::Handler for Echo {
    fn on_text_message(&mut self, ctx: &mut syncws::Context<'_>, text: &str) {
        let _ = ctx.send_text(text);
    }
    fn on_binary_message(&mut self, ctx: &mut syncws::Context<'_>, data: &[u8]) {
        let _ = ctx.send_binary(data);
    }
    fn on_idle(&mut self, ctx: &mut syncws::Context<'_>) {
        let _ = ctx.close(1000, "idle timeout");
    }
}

/// Queued connections the kernel keeps for us while the accept loop is busy (capped by
/// `net.core.somaxconn`). std's 128 drops the SYNs of a connect storm, and each dropped client
/// then waits a second for its retransmission.
const LISTEN_BACKLOG: i32 = 4096;

fn listen(addr: &str) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address");
    for a in addr.to_socket_addrs()? {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(a),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        match socket
            .bind(&a.into())
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(()) => return Ok(socket.into()),
            Err(e) => last = e,
        }
    }
    Err(last)
}
