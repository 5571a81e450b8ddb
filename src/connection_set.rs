//! Many connections on one thread, in both roles: the fourth front-end. Each connection is a
//! [`Driver`], the same core as in the other modes: a client the set opens (`add`), or a server
//! connection it adopts once its handshake is done (`adopt`). This file only decides which
//! drivers to pass and when to wait: one OS wait for every socket (`sys::SetPoller`: epoll,
//! edge-triggered, on Linux; a level-triggered poll elsewhere, told what each member waits
//! for), one waker for every command sender, and one timer heap for every deadline. It also
//! keeps one member's panic from ending the others (`Member::pass`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::command::{CommandSender, Shared, Stop};
use crate::dial::parse_url;
use crate::driver::{Driver, Step};
use crate::handler::{AfterPanic, Callbacks, ConnId};
use crate::sys::{Events, Interest, SetPoller, Watch, WAKER_KEY};
use crate::wait::Woke;
use crate::waker::SetWaker;
use crate::{Config, Error, Handler, ServerConnection};

/// The longest single OS wait (epoll and poll take milliseconds in an `int`); a later deadline
/// is simply waited for again.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// One connection of the set.
#[derive(Debug)]
struct Member<H> {
    driver: Box<Driver>,
    handler: H,
    shared: Arc<Shared>,
    /// The earliest deadline this member has in the timer heap.
    timer: Option<Instant>,
    /// What the set's OS wait knows of this member's socket (see `sys::SetPoller::watch`).
    watch: Watch,
    /// On the run list for the next round.
    queued: bool,
    /// The last pass said `Wait`: what ends the wait goes to `Driver::woke`.
    waiting: bool,
    /// That pass dispatched messages.
    delivered: bool,
    /// What ended the wait so far (socket, command, deadline), merged.
    woke: Option<Woke>,
    /// A pass of this member panicked: it is closing (1011), and its handler hears only of
    /// its end (see [`AfterPanic`]). `silenced`: one of those calls panicked too.
    panicked: Option<Silenced>,
}

/// After a member's panic: whether its handler has panicked again since (then it is called
/// no more, but for `on_quit`).
#[derive(Debug, Default)]
struct Silenced(bool);

impl<H> Member<H> {
    fn new(driver: Box<Driver>, handler: H, shared: Arc<Shared>) -> Self {
        Member {
            driver,
            handler,
            shared,
            timer: None,
            watch: Watch::default(),
            queued: false,
            waiting: false,
            delivered: false,
            woke: None,
            panicked: None,
        }
    }
}

impl<H: Handler> Member<H> {
    /// One pass (after noting what ended the member's wait, `woke`), with a panic caught.
    ///
    /// Why catching it leaves the set consistent: the closure borrows this member's driver
    /// and handler and nothing of the set (its members, run list, timers, poller and waker
    /// are touched only after the pass returns), so the set's own state cannot be torn. The
    /// member's state may be: the panic may have struck in the handler or in the library
    /// midway through the pass. What it shares with other threads (`Shared`: a lock that
    /// guards plain flags, read through poisoning; atomics) holds no invariant a panic can
    /// break, and the channel is crossbeam's, which a panic does not corrupt. So the member
    /// is treated as suspect from then on ([`Member::panicked`]): its handler hears nothing
    /// but its end, each call caught, and a second panic in a pass drops it without further
    /// passes. Sends its hooks queued before the panic may be in the outbox and go out before
    /// the Close (a frame is written into the outbox in one go, with no hook between).
    fn pass(&mut self, id: ConnId, woke: Option<Woke>) -> Step {
        let Member {
            driver,
            handler,
            delivered,
            panicked,
            ..
        } = self;
        let outcome = catch_unwind(AssertUnwindSafe(|| match panicked {
            None => {
                let mut d = Callbacks(&mut *handler, Some(id));
                if let Some(woke) = woke {
                    driver.woke(&mut d, woke, *delivered);
                }
                driver.pass(&mut d)
            }
            Some(silenced) => {
                let mut d = AfterPanic {
                    handler: &mut *handler,
                    id: Some(id),
                    silenced: &mut silenced.0,
                };
                if let Some(woke) = woke {
                    driver.woke(&mut d, woke, false);
                }
                driver.pass(&mut d)
            }
        }));
        match outcome {
            Ok(step) => step,
            Err(payload) => self.panicked(id, payload),
        }
    }

    /// A pass panicked. The first time, the connection starts closing with 1011 and the panic
    /// is reported as [`Error::Panicked`]; the next passes carry out the close (the Close
    /// frame, then lingering until the peer's answer or `close_timeout`) with a dispatcher
    /// that hands the handler only its end. A panic during those passes (the library's, since
    /// the handler's own calls are caught one by one) ends the member at once.
    fn panicked(&mut self, id: ConnId, payload: Box<dyn std::any::Any + Send>) -> Step {
        let message = panic_message(payload);
        if self.panicked.is_some() {
            tracing::error!(
                conn = %id,
                panic = %message,
                "a closing set member panicked again; dropped"
            );
            return Step::Done;
        }
        tracing::error!(
            conn = %id,
            panic = %message,
            "a set member panicked; closing it with 1011"
        );
        self.panicked = Some(Silenced::default());
        let driver = &mut self.driver;
        match catch_unwind(AssertUnwindSafe(|| {
            driver.panicked(Error::Panicked { message })
        })) {
            Ok(()) => Step::Again,
            Err(again) => {
                tracing::error!(
                    conn = %id,
                    panic = %panic_message(again),
                    "closing a panicked set member panicked; dropped"
                );
                Step::Done
            }
        }
    }

    /// The member is over: what its end reports (commands never carried out, messages never
    /// sent), then `on_quit`, exactly once, whatever panics on the way.
    fn end(mut self, id: ConnId) {
        let Member {
            driver,
            handler,
            panicked,
            ..
        } = &mut self;
        let reported = catch_unwind(AssertUnwindSafe(|| match panicked {
            None => driver.finish_reports(&mut Callbacks(&mut *handler, Some(id))),
            Some(silenced) => driver.finish_reports(&mut AfterPanic {
                handler: &mut *handler,
                id: Some(id),
                silenced: &mut silenced.0,
            }),
        }));
        if let Err(payload) = reported {
            tracing::error!(
                conn = %id,
                panic = %panic_message(payload),
                "reporting a set member's end panicked; what was left is not reported"
            );
        }
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| handler.on_quit())) {
            tracing::error!(conn = %id, panic = %panic_message(payload), "on_quit panicked");
        }
        // Its socket closes as it drops, which takes it out of epoll.
    }
}

/// What a panic said (`panic!("...")` gives a `&str` or a `String`). The payload is dropped
/// here, and a payload whose own drop panics is forgotten instead of unwinding on.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
        std::mem::forget(again);
    }
    message
}

/// What other threads ask of the set.
enum SetCommand<H> {
    Add(u64, Box<Member<H>>),
    CloseAll(CloseCode, String),
    Stop,
}

/// What the set shares with its handles.
#[derive(Debug)]
struct Core {
    waker: Arc<SetWaker>,
    next_id: AtomicU64,
}

impl Core {
    /// A new member, not yet connected: its first pass starts the dial.
    fn member<H>(
        self: &Arc<Self>,
        url: &str,
        config: &Config,
        handler: H,
    ) -> Result<(u64, CommandSender, Member<H>), Error> {
        parse_url(url)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Shared::in_set(self.waker.clone(), id);
        let (driver, sender) = Driver::dialing(url, config, shared.clone());
        Ok((id, sender, Member::new(driver, handler, shared)))
    }

    /// An accepted server connection as a new member: from now on its senders (the sender
    /// returned, and every one its `handle` gave before) wake this set.
    fn adopted<H>(
        self: &Arc<Self>,
        conn: ServerConnection,
        handler: H,
    ) -> (u64, CommandSender, Member<H>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (mut driver, sender) = conn.into_parts();
        let shared = driver
            .join_set(self.waker.clone(), id)
            // A `ServerConnection` is consumed by `run` or `adopt`, so nothing woke it before.
            .expect("a server connection not yet run has no wake of its own");
        (id, sender, Member::new(driver, handler, shared))
    }
}

/// Many connections driven by one thread, in either role: client connections the set opens
/// ([`add`](Self::add)) and server connections it adopts once their handshake is done
/// ([`adopt`](Self::adopt)), on the calling thread, in [`run`](Self::run), with no async
/// runtime. (Its earlier name, [`ClientSet`], from before it took server connections, names
/// the same type.)
///
/// Each connection has its own handler value (`H`, any [`Handler`]; use
/// `Box<dyn Handler + Send>` to mix kinds) and gets the same hooks and [`Context`](
/// crate::Context) as in the other modes, plus its [`ConnId`] in [`Context::id`](
/// crate::Context::id). Opening a client connection (name lookup, TCP, TLS, the upgrade)
/// proceeds as its lookup and socket allow, interleaved with the traffic of the others, each
/// bounded by its own `connect_timeout` and `handshake_timeout`; a server or a DNS server that
/// never answers holds only its own connection's slot. Everything else is per connection as in
/// the other modes: close handshake, heartbeat, idle timeout, backpressure, reconnecting with
/// backoff (clients, once a connection has been open; the first connect is one attempt, as
/// `connect` is elsewhere: if it fails, `on_error` then `on_quit`), permessage-deflate,
/// proxies, both TLS backends, metrics.
///
/// The set waits in one OS poll for all its sockets (epoll, edge-triggered, on Linux; `poll`
/// elsewhere, `WSAPoll` on Windows) and one waker for all its command senders, so a
/// connection costs its socket and nothing else in descriptors. Every connection's deadlines
/// are kept in one timer heap. [`Config::wait_strategy`] does not apply here.
///
/// Connections are added with [`add`](Self::add) and [`adopt`](Self::adopt) before or between
/// runs, and with a [`SetHandle`] from anywhere, including the set's own hooks and other
/// threads, while it runs. Each hands back the connection's [`CommandSender`], through which
/// any thread sends to it, closes it or drops it.
///
/// **A panic ends only its own connection.** A panic in one connection's hooks (or in the
/// library while it drives that connection) is caught at that connection's pass: the
/// connection is closed with 1011 (a Close frame if the socket can still take one, then the
/// usual wait for the peer's answer, up to `close_timeout`), reported as [`Error::Panicked`],
/// and the others carry on, as a tokio task's panic ends only that task. After a panic the
/// handler hears only of its connection's end: `on_error` with [`Error::Panicked`] and the
/// other reports of its end (sends never carried out), then `on_quit`, each call itself
/// guarded; once one of those panics too, only `on_quit` is still called. Nothing else of that
/// handler runs again, and it does not reconnect. The panic hook still runs for each panic
/// (the default one prints it to stderr), and with `panic = "abort"` a panic ends the process,
/// as anywhere. The single-connection modes leave a panic to the caller's thread.
///
/// Host names are looked up off the set's thread: the system resolver has no non-blocking
/// interface, so lookups run on a small pool of threads shared by the process (started on the
/// first lookup, at most 4 threads: further lookups wait their turn, however many connections
/// are added; connections to one host share its lookup), which wakes each connection once its
/// answer is in. A lookup counts against the connection's `connect_timeout`
/// ([`TimeoutKind::Resolve`](crate::TimeoutKind::Resolve)) and `handshake_timeout`, and a
/// close or drop ends it at once for the connection (the lookup itself finishes in the pool,
/// and its answer is dropped). IP addresses need no lookup.
///
/// Clients:
///
/// ```no_run
/// use syncws::{Config, ConnectionSet, Context, Handler};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn on_activated(&mut self, ctx: &mut Context<'_>) {
///         ctx.send_text("hello").unwrap();
///     }
///     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
///         println!("{:?} got {text}", ctx.id());
///         ctx.close(1000, "done").unwrap();
///     }
/// }
///
/// let mut set = ConnectionSet::new()?;
/// for _ in 0..1000 {
///     set.add("ws://127.0.0.1:9001", &Config::default(), Echo)?;
/// }
/// set.run(); // returns once every connection has quit
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A server: the set runs on a thread of its own, until told to stop; an accept loop reads each
/// request (which waits for the client, up to `handshake_timeout`: a short-lived handshake
/// thread per connection keeps a silent client from holding up the others) and hands the
/// upgraded connection to the set through a [`SetHandle`]. [`adopt`](Self::adopt) has a
/// complete example.
///
/// ```no_run
/// use syncws::{Accept, Config, ConnectionSet, Context, Handler, ServerConnection};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
///         let _ = ctx.send_text(text);
///     }
/// }
///
/// let mut set = ConnectionSet::new()?;
/// let handle = set.handle();
/// // Waits for connections while it has none; `handle.stop()` ends it once it is empty.
/// std::thread::spawn(move || set.run_until_stopped());
///
/// let config = Config::server_defaults();
/// let listener = std::net::TcpListener::bind("127.0.0.1:9001")?;
/// for tcp in listener.incoming() {
///     let Ok(tcp) = tcp else { continue };
///     let (handle, config) = (handle.clone(), config.clone());
///     std::thread::spawn(move || -> Result<(), syncws::Error> {
///         let incoming = ServerConnection::read_request(tcp, None, &config)?;
///         let conn = incoming.accept(Accept::new())?;
///         handle.adopt(conn, Echo)?;
///         Ok(())
///     });
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ConnectionSet<H: Handler> {
    core: Arc<Core>,
    tx: Sender<SetCommand<H>>,
    rx: Receiver<SetCommand<H>>,
    poller: SetPoller,
    members: HashMap<u64, Member<H>>,
    /// Members to pass in the next round.
    run: Vec<u64>,
    /// Deadlines (lazily deleted: an entry counts only while it is its member's `timer`).
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    woken: Vec<u64>,
    /// A [`SetHandle::stop`] came: the next `run_until_stopped` returns once the set is empty.
    stop: bool,
}

/// The set under its earlier name, from before it took server connections: the same type.
pub type ClientSet<H> = ConnectionSet<H>;

impl<H: Handler> fmt::Debug for ConnectionSet<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSet")
            .field("connections", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> ConnectionSet<H> {
    /// An empty set: its OS wait (an epoll instance, on Linux) and its waker, nothing else until
    /// connections are added.
    ///
    /// # Errors
    ///
    /// When the OS refuses either descriptor (the process is out of them).
    pub fn new() -> io::Result<Self> {
        let waker = Arc::new(SetWaker::new()?);
        let poller = SetPoller::new(waker.waker())?;
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(ConnectionSet {
            core: Arc::new(Core {
                waker,
                next_id: AtomicU64::new(0),
            }),
            tx,
            rx,
            poller,
            members: HashMap::new(),
            run: Vec::new(),
            timers: BinaryHeap::new(),
            woken: Vec::new(),
            stop: false,
        })
    }

    /// Add a connection to `url`, driven by `handler`. It starts opening at the set's next
    /// pass (in [`run`](Self::run)); every hook of `handler` runs on the set's thread.
    ///
    /// Returns its id and the [`CommandSender`] that sends to it from anywhere (commands sent
    /// before it is open are carried out once it is, after `on_activated`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] and [`Error::UnsupportedScheme`]: checked here; every later
    /// failure (DNS, refused, TLS, timeouts, a rejected upgrade) goes to the handler's
    /// `on_error`, followed by `on_quit`.
    pub fn add(
        &mut self,
        url: &str,
        config: &Config,
        handler: H,
    ) -> Result<(ConnId, CommandSender), Error> {
        let (id, sender, member) = self.core.member(url, config, handler)?;
        self.insert(id, member);
        Ok((ConnId(id), sender))
    }

    /// Take an accepted server connection (its handshake done: [`ServerConnection::accept`],
    /// [`Incoming::accept`](crate::Incoming::accept)), driven by `handler` on the set's thread
    /// from the set's next pass (`on_activated` first, as in
    /// [`ServerConnection::run`]). It behaves as `run` would drive it (close handshake,
    /// heartbeat, idle timeout, backpressure, metrics), but waits in the set's OS poll, and
    /// costs its socket alone in descriptors: it never gets a waker of its own. A server
    /// connection never reconnects.
    ///
    /// Returns its id and a [`CommandSender`]; senders its
    /// [`handle`](ServerConnection::handle) gave out before are the same and go on working.
    /// From another thread (an accept loop), use [`SetHandle::adopt`].
    ///
    /// ```
    /// use syncws::{Accept, BlockingClient, Config, ConnectionSet, Context, Handler, ServerConnection};
    ///
    /// struct Echo;
    /// impl Handler for Echo {
    ///     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
    ///         let _ = ctx.send_text(text);
    ///     }
    /// }
    ///
    /// // The set, on a thread of its own until stopped.
    /// let mut set = ConnectionSet::new()?;
    /// let handle = set.handle();
    /// let set_thread = std::thread::spawn(move || set.run_until_stopped());
    ///
    /// // The accept loop: the handshake, then the connection goes to the set.
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let url = format!("ws://{}/", listener.local_addr()?);
    /// let accepting = handle.clone();
    /// std::thread::spawn(move || {
    ///     let config = Config::server_defaults();
    ///     for tcp in listener.incoming() {
    ///         let Ok(tcp) = tcp else { continue };
    ///         match ServerConnection::read_request(tcp, None, &config)
    ///             .and_then(|incoming| incoming.accept(Accept::new()))
    ///         {
    ///             Ok(conn) => drop(accepting.adopt(conn, Echo)),
    ///             Err(e) => eprintln!("handshake: {e}"),
    ///         }
    ///     }
    /// });
    ///
    /// // A client: one message, its echo, close.
    /// struct Once(Option<String>);
    /// impl Handler for Once {
    ///     fn on_activated(&mut self, ctx: &mut Context<'_>) {
    ///         ctx.send_text("hello").unwrap();
    ///     }
    ///     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
    ///         self.0 = Some(text.to_owned());
    ///         ctx.close(1000, "done").unwrap();
    ///     }
    /// }
    /// let mut once = Once(None);
    /// BlockingClient::connect(&url, &Config::default())?.run(&mut once);
    /// assert_eq!(once.0.as_deref(), Some("hello"));
    ///
    /// // Shutting down: close what is open, and end the set's run once it is empty.
    /// handle.close_all(1001, "shutting down")?;
    /// handle.stop()?;
    /// set_thread.join().unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt(&mut self, conn: ServerConnection, handler: H) -> (ConnId, CommandSender) {
        let (id, sender, member) = self.core.adopted(conn, handler);
        self.insert(id, member);
        (ConnId(id), sender)
    }

    /// A cloneable, thread-safe handle that adds and adopts connections, closes them all and
    /// stops the set, from the set's own hooks or from other threads; it wakes the set.
    pub fn handle(&self) -> SetHandle<H> {
        SetHandle {
            core: self.core.clone(),
            tx: self.tx.clone(),
        }
    }

    /// Connections in the set (open, opening, closing, or between reconnect attempts).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the set holds no connection.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Drive every connection on this thread until none is left: the last one has quit and
    /// no add is waiting. Connections added through a [`SetHandle`] after that start at the
    /// next `run`.
    ///
    /// To end early, close the connections ([`SetHandle::close_all`], or each one's
    /// [`CommandSender`]); `run` returns once the last has quit.
    pub fn run(&mut self) {
        self.drive(false);
    }

    /// Drive every connection on this thread, as [`run`](Self::run) does, but while the set
    /// is empty wait for connections to be added or adopted (through a [`SetHandle`]) instead
    /// of returning: the way a server's set runs. Returns once [`SetHandle::stop`] has been
    /// called and the set is empty (a stop asked for before this call ends it as soon as the
    /// set is empty; each stop ends one such run).
    ///
    /// A graceful shutdown is [`SetHandle::close_all`] (1001, say), then
    /// [`SetHandle::stop`]: the run returns once every connection has finished its close.
    pub fn run_until_stopped(&mut self) {
        self.drive(true);
    }

    fn drive(&mut self, until_stopped: bool) {
        let span = tracing::debug_span!("connection_set");
        let _enter = span.enter();
        // Here, not in the set: an epoll event holds a pointer-sized union, which would make
        // the set impossible to move to another thread.
        let mut events = Events::new();
        loop {
            self.take_commands();
            self.take_woken();
            self.expire_timers(Instant::now());
            let round = std::mem::take(&mut self.run);
            for &id in &round {
                self.step(id);
            }
            // Keep the allocation of the longer list.
            if self.run.is_empty() && round.capacity() > self.run.capacity() {
                self.run = round;
                self.run.clear();
            }
            if self.run.is_empty() && self.members.is_empty() && self.rx.is_empty() {
                // Deadlines of connections that have ended.
                self.timers.clear();
                if !until_stopped || std::mem::take(&mut self.stop) {
                    return;
                }
            }
            if let Err(e) = self.wait(&mut events) {
                // Only a broken OS wait or waker gets here: nothing could be waited for again.
                tracing::error!(error = %e, "connection set: waiting failed; dropping every connection");
                self.fail_all(e);
                if until_stopped && self.members.is_empty() {
                    // Nothing left to end, and no way to wait for more.
                    return;
                }
            }
        }
    }

    fn insert(&mut self, id: u64, mut member: Member<H>) {
        member.queued = true;
        self.members.insert(id, member);
        self.run.push(id);
    }

    /// Adds and close-alls from handles.
    fn take_commands(&mut self) {
        while let Ok(command) = self.rx.try_recv() {
            match command {
                SetCommand::Add(id, member) => self.insert(id, *member),
                SetCommand::Stop => self.stop = true,
                SetCommand::CloseAll(code, reason) => {
                    for member in self.members.values() {
                        // Refused only by a connection that has ended already.
                        let _ = member.shared.request(Stop::Close(code, reason.clone()));
                    }
                }
            }
        }
    }

    /// Members whose senders woke the set (commands, stops).
    fn take_woken(&mut self) {
        let mut woken = std::mem::take(&mut self.woken);
        self.core.waker.take_woken(&mut woken);
        for id in woken.drain(..) {
            self.mark(id, Woke::Command);
        }
        self.woken = woken;
    }

    fn expire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(member) = self.members.get_mut(&id) {
                if member.timer == Some(at) {
                    member.timer = None;
                    self.mark(id, Woke::Deadline);
                }
            }
        }
    }

    /// Put a member on the run list, noting what ended its wait.
    fn mark(&mut self, id: u64, woke: Woke) {
        let Some(member) = self.members.get_mut(&id) else {
            // Ended since (a stale event or wake).
            return;
        };
        member.woke = Some(match member.woke {
            Some(before) => strongest(before, woke),
            None => woke,
        });
        if !member.queued {
            member.queued = true;
            self.run.push(id);
        }
    }

    /// One pass of one member (a panic in it caught: see [`Member::pass`]), then arrange what
    /// it waits for.
    fn step(&mut self, id: u64) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        member.queued = false;
        member.shared.set_parked(false);
        let woke = member.woke.take().filter(|_| member.waiting);
        member.waiting = false;
        let step = member.pass(ConnId(id), woke);
        match step {
            Step::Done => {
                if let Some(member) = self.members.remove(&id) {
                    member.end(ConnId(id));
                }
            }
            Step::Again => {
                member.queued = true;
                self.run.push(id);
            }
            Step::Wait {
                deadline,
                delivered,
                read,
                ..
            } => {
                member.waiting = true;
                member.delivered = delivered;
                let interest = Interest {
                    read,
                    write: member.driver.session.write_blocked(),
                };
                self.arrange(id, interest, false, deadline);
            }
            Step::Paused { deadline } => {
                // Not for a `Handler`, which always takes messages; waits like `Wait`, without
                // reading.
                member.waiting = true;
                member.delivered = false;
                let interest = Interest {
                    read: false,
                    write: member.driver.session.write_blocked(),
                };
                self.arrange(id, interest, false, deadline);
            }
            // With no socket (a backoff, a name being looked up), only the member's wake (a
            // command, a stop, the resolver's answer) or the deadline runs it again.
            Step::Reconnecting { socket, deadline } => {
                let interest = socket.map(Interest::from).unwrap_or_default();
                self.arrange(id, interest, socket.is_some(), deadline);
            }
        }
    }

    /// After a pass that waits: the socket watched for `interest` (registered again when
    /// `dialing`: a dial may have moved to another socket), the deadline in the heap, and the
    /// member parked, unless a command came meanwhile.
    fn arrange(&mut self, id: u64, interest: Interest, dialing: bool, deadline: Option<Instant>) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        if let Some((socket, epoch)) = member.driver.socket() {
            let watched =
                self.poller
                    .watch(&mut member.watch, id, socket, epoch, dialing, interest);
            if let Err(e) = watched {
                tracing::warn!(error = %e, "client set: cannot watch a socket");
                // A dial's socket: that attempt fails (the next one may find room again).
                member.driver.socket_failed(e.into(), false);
                member.queued = true;
                self.run.push(id);
                return;
            }
        }
        if let Some(at) = deadline {
            // An earlier entry fires first and the pass then gives the later deadline again,
            // so only an earlier deadline needs a new entry.
            if member.timer.is_none_or(|t| at < t) {
                member.timer = Some(at);
                self.timers.push(Reverse((at, id)));
            }
        }
        // Park first, then look: a sender that pushes after the look sees the flag and
        // wakes the set (see `Shared::notify`).
        member.shared.set_parked(true);
        if member.driver.has_work() {
            member.shared.set_parked(false);
            member.woke = Some(Woke::Command);
            member.queued = true;
            self.run.push(id);
        }
    }

    /// Wait in the OS until a socket is ready, a sender wakes the set, or the next deadline;
    /// not at all while members are on the run list.
    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        let now = Instant::now();
        let waker = &self.core.waker;
        waker.set_parked(true);
        let busy = !self.run.is_empty() || waker.has_woken() || !self.rx.is_empty();
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            self.timers
                .peek()
                .map(|Reverse((at, _))| at.saturating_duration_since(now))
        };
        let timeout = timeout.map(|t| {
            // Whole milliseconds, rounded up: a wait that ends before the deadline would only
            // come back to wait again.
            let t = t.min(LONGEST_WAIT);
            let ms = u64::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            Duration::from_millis(ms)
        });
        // The members parked on their sockets, and what for (only a level-triggered poll
        // walks this; epoll has them registered).
        let waiting = self
            .members
            .iter()
            .filter(|(_, m)| !m.queued)
            .filter_map(|(&id, m)| {
                let interest = m.watch.interest()?;
                let (socket, _) = m.driver.socket()?;
                Some((id, socket, interest))
            });
        let waited = self
            .poller
            .wait(events, self.core.waker.waker(), waiting, timeout);
        waker.set_parked(false);
        waited?;
        for (key, woke) in events.drain() {
            if key == WAKER_KEY {
                self.core.waker.waker().drain();
                continue;
            }
            self.mark(key, woke);
        }
        Ok(())
    }

    fn fail_all(&mut self, e: io::Error) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            if let Some(member) = self.members.get_mut(&id) {
                let error = io::Error::new(e.kind(), e.to_string());
                member.driver.socket_failed(error.into(), true);
            }
            self.mark(id, Woke::Command);
        }
    }
}

/// Of two reasons a wait ended, the one that says most about the socket.
fn strongest(a: Woke, b: Woke) -> Woke {
    let rank = |w: Woke| match w {
        Woke::PeerClosed => 4,
        Woke::Activity => 3,
        Woke::Poll => 2,
        Woke::Command => 1,
        Woke::Deadline => 0,
    };
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

/// A set dropped with connections left (never run, or its run not finished): each is ended
/// as if its run had ended it: a best-effort Close 1001 to its peer, every command its sender
/// had sent reported to its handler (`on_error` with [`Error::Closed`]), then `on_quit`
/// (panics caught, as in a run).
impl<H: Handler> Drop for ConnectionSet<H> {
    fn drop(&mut self) {
        // Adds that never reached the set are members too.
        while let Ok(command) = self.rx.try_recv() {
            if let SetCommand::Add(id, member) = command {
                self.members.insert(id, *member);
            }
        }
        for (id, mut member) in self.members.drain() {
            let driver = &mut member.driver;
            if catch_unwind(AssertUnwindSafe(|| driver.session.abandon())).is_err() {
                tracing::error!(conn = %ConnId(id), "closing a dropped set's member panicked");
            }
            member.end(ConnId(id));
        }
    }
}

/// Adds and adopts connections into a [`ConnectionSet`], closes them all and stops the set,
/// from any thread (the set's own hooks included). Cloneable; each call wakes the set.
pub struct SetHandle<H> {
    core: Arc<Core>,
    tx: Sender<SetCommand<H>>,
}

impl<H> Clone for SetHandle<H> {
    fn clone(&self) -> Self {
        SetHandle {
            core: self.core.clone(),
            tx: self.tx.clone(),
        }
    }
}

impl<H> fmt::Debug for SetHandle<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetHandle").finish_non_exhaustive()
    }
}

impl<H> SetHandle<H> {
    /// Add a connection, as [`ConnectionSet::add`] does: it starts opening at the set's next
    /// pass (at once if it is running; at its next [`run`](ConnectionSet::run) if not).
    ///
    /// # Errors
    ///
    /// As for [`ConnectionSet::add`], and [`Error::Closed`] once the set has been dropped.
    pub fn add(
        &self,
        url: &str,
        config: &Config,
        handler: H,
    ) -> Result<(ConnId, CommandSender), Error> {
        let (id, sender, member) = self.core.member(url, config, handler)?;
        self.tx
            .send(SetCommand::Add(id, Box::new(member)))
            .map_err(|_| Error::Closed)?;
        let _ = self.core.waker.wake_set();
        Ok((ConnId(id), sender))
    }

    /// Hand an accepted server connection to the set, as [`ConnectionSet::adopt`] does, from
    /// any thread: typically the accept loop (or a handshake thread), while the set runs on
    /// its own thread. It starts at the set's next pass (at once if it is running; at its next
    /// run if not).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the set has been dropped: the connection is then closed (a
    /// best-effort Close 1001) and `handler` dropped without any of its hooks running, as an
    /// `add` the set never took.
    pub fn adopt(
        &self,
        conn: ServerConnection,
        handler: H,
    ) -> Result<(ConnId, CommandSender), Error> {
        let (id, sender, member) = self.core.adopted(conn, handler);
        if let Err(refused) = self.tx.send(SetCommand::Add(id, Box::new(member))) {
            if let SetCommand::Add(_, mut member) = refused.into_inner() {
                member.driver.session.abandon();
            }
            return Err(Error::Closed);
        }
        let _ = self.core.waker.wake_set();
        Ok((ConnId(id), sender))
    }

    /// End the set's [`run_until_stopped`](ConnectionSet::run_until_stopped) once the set is
    /// empty (at once if it is). Nothing is closed: call [`close_all`](Self::close_all) first
    /// for that. Connections added afterwards still run, and keep it running until they quit.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the set has been dropped.
    pub fn stop(&self) -> Result<(), Error> {
        self.tx.send(SetCommand::Stop).map_err(|_| Error::Closed)?;
        let _ = self.core.waker.wake_set();
        Ok(())
    }

    /// Start the close handshake of every connection in the set now, with `code` and
    /// `reason`, as each one's [`CommandSender::close`] would (sends accepted before it go
    /// out first); connections between reconnect attempts stop reconnecting. Connections
    /// added afterwards are not affected.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCloseCode`] or [`Error::CloseReasonTooLong`]; [`Error::Closed`] once
    /// the set has been dropped.
    pub fn close_all(&self, code: impl Into<CloseCode>, reason: &str) -> Result<(), Error> {
        let code = code.into();
        crate::close::check_close(code, reason)?;
        self.tx
            .send(SetCommand::CloseAll(code, reason.to_owned()))
            .map_err(|_| Error::Closed)?;
        let _ = self.core.waker.wake_set();
        Ok(())
    }
}
