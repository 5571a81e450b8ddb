//! The server side of the same core: one accepted socket, driven like a client. The opening
//! handshake is ours (see `incoming`); this file opens the socket (TLS first) and starts the
//! session once the upgrade is answered.

use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::Role;

use crate::command::CommandSender;
use crate::deflate::outbound::Outbound;
use crate::driver::Driver;
use crate::handler::Callbacks;
use crate::session::Session;
use crate::stream::{Stream, Transport};
use crate::tcp::TcpConn;
use crate::{Accept, Config, DeflateParams, Error, Handler, Incoming};

/// A server-side WebSocket connection on an accepted socket, driven by the same core as the
/// clients: on a thread of its own ([`run`](Self::run) blocks in the OS poll on the socket plus
/// a waker), or, for thousands of connections on a few threads, adopted by a
/// [`ConnectionSet`](crate::ConnectionSet) ([`SetHandle::adopt`](crate::SetHandle::adopt) from
/// the accept loop; see there for an example). [`handle`](Self::handle) lets other threads send
/// to it either way, which is how a server broadcasts. Until then it holds its socket alone.
///
/// [`accept`](Self::accept) is the one-call path. To look at the request first (path, headers,
/// subprotocols), or to answer plain HTTP on the same port, use
/// [`read_request`](Self::read_request) and the [`Incoming`] it returns.
///
/// The handshake blocks until the client has sent its request (up to `handshake_timeout`), so
/// do it on the connection's own thread, as here: a client that connects and stays silent then
/// holds up only its own thread, never the accept loop.
///
/// ```no_run
/// use syncws::{Config, Context, Handler, ServerConnection};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
///         let _ = ctx.send_text(text);
///     }
/// }
///
/// let config = Config::server_defaults();
/// let listener = std::net::TcpListener::bind("127.0.0.1:9001")?;
/// for tcp in listener.incoming() {
///     let Ok(tcp) = tcp else { continue };
///     let config = config.clone();
///     std::thread::spawn(move || match ServerConnection::accept(tcp, None, &config) {
///         Ok(conn) => conn.run(&mut Echo),
///         Err(e) => eprintln!("handshake: {e}"),
///     });
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ServerConnection {
    driver: Box<Driver>,
    handle: CommandSender,
    deflate: Option<DeflateParams>,
    subprotocol: Option<String>,
}

impl ServerConnection {
    /// The file descriptors (sockets, on Windows) an open connection holds while it runs on a
    /// thread of its own: its socket and its waker's. 2 on Linux (an eventfd waker); 3 on
    /// other Unix (a pipe) and on Windows (a loopback socket pair). For sizing a server against
    /// the process's descriptor limit. In a [`ConnectionSet`](crate::ConnectionSet) it holds
    /// its socket alone (the set has one waker for all).
    pub const DESCRIPTORS: usize = crate::sys::DESCRIPTORS_PER_CONNECTION;

    /// Run the server handshake on an accepted socket and upgrade: [`read_request`](
    /// Self::read_request), then [`Incoming::accept`] with no subprotocol. A request that is
    /// not a WebSocket upgrade is answered 400.
    ///
    /// # Errors
    ///
    /// Those of [`read_request`](Self::read_request) and [`Incoming::accept`]: notably
    /// [`Error::BadRequest`] for a request that is not a valid upgrade (the client was answered
    /// with the status it carries),
    /// [`Error::Timeout`]`(`[`TimeoutKind::Handshake`](crate::TimeoutKind::Handshake)`)` when
    /// TLS, the request or our answer runs past `handshake_timeout`.
    pub fn accept(
        tcp: TcpStream,
        tls: Option<&native_tls::TlsAcceptor>,
        config: &Config,
    ) -> Result<Self, Error> {
        Self::read_request(tcp, tls, config)?.accept(Accept::new())
    }

    /// Read the request on an accepted socket, without answering it: TLS first when `tls` is
    /// given, then the request head (16 KiB at most), both bounded by the config's
    /// `handshake_timeout` from now. The [`Incoming`] shows the request and decides: upgrade,
    /// refuse, or answer plain HTTP.
    ///
    /// # Errors
    ///
    /// - [`Error::Timeout`]`(`[`TimeoutKind::Handshake`](crate::TimeoutKind::Handshake)`)` when
    ///   the TLS handshake or the request head is not done within `handshake_timeout`;
    /// - [`Error::Tls`] when the TLS handshake fails;
    /// - [`Error::BadRequest`] when the head is longer than 16 KiB or has too many headers
    ///   (answered 431), or is not HTTP/1.x (answered 400);
    /// - [`Error::ConnectionReset`] when the client closes before its head is complete;
    /// - [`Error::Io`] when the socket fails.
    pub fn read_request(
        tcp: TcpStream,
        tls: Option<&native_tls::TlsAcceptor>,
        config: &Config,
    ) -> Result<Incoming, Error> {
        let (stream, peer) = open(tcp, tls, config)?;
        Incoming::read(stream, peer, config)
    }

    /// The upgrade was answered: start the session, giving it what the client sent after its
    /// request (its first frames).
    pub(crate) fn start(
        mut stream: Stream,
        leftover: Vec<u8>,
        config: &Config,
        agreed: Option<DeflateParams>,
        subprotocol: Option<String>,
    ) -> Result<Self, Error> {
        stream.make_nonblocking()?;
        let outbound = match (&agreed, config.deflate()) {
            (Some(params), Some(settings)) => Outbound::new(params, Role::Server, settings),
            _ => None,
        };
        let ws =
            crate::handshake::websocket(stream, leftover, Role::Server, agreed.is_some(), config);
        let session = Session::server(ws, config, outbound);
        let (driver, handle) = Driver::accepted(session, config);
        Ok(ServerConnection {
            driver,
            handle,
            deflate: agreed,
            subprotocol,
        })
    }

    /// The subprotocol chosen in [`Accept::subprotocol`], if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The permessage-deflate parameters agreed with this client, or None when the connection
    /// is uncompressed (not enabled in the config, or not offered by the client).
    pub fn deflate(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref()
    }

    /// This connection's counters; the `Arc` can be read from any thread while it runs.
    pub fn metrics(&self) -> std::sync::Arc<crate::Metrics> {
        self.driver.session.metrics().clone()
    }

    /// A cloneable, thread-safe sender of [`Command`](crate::Command)s into this connection,
    /// usable at once: what it sends before the connection runs waits in the channel for its
    /// first pass.
    pub fn handle(&self) -> CommandSender {
        self.handle.clone()
    }

    /// Run until the connection ends, calling `handler`'s hooks on this thread, which waits
    /// in the OS poll on the socket and a waker made now (the connection's second
    /// descriptor, see [`DESCRIPTORS`](Self::DESCRIPTORS)).
    ///
    /// A panic in a hook unwinds out of `run`, as any panic on the caller's thread does (the
    /// socket is closed without a Close frame as the connection drops). In a
    /// [`ConnectionSet`](crate::ConnectionSet), by contrast, a panic ends only the connection
    /// whose hook panicked.
    pub fn run<H: Handler + ?Sized>(self, handler: &mut H) {
        let ServerConnection {
            mut driver, handle, ..
        } = self;
        drop(handle);
        if let Err(e) = driver.wake_by_readiness() {
            // Out of descriptors: the connection runs on, without a waker (sends from other
            // threads then wait for its socket's next event or deadline), and ends as failed.
            tracing::warn!(error = %e, "server connection: no waker");
            driver.session.fail(e.into(), Some(CloseCode::Error));
        }
        driver.run(&mut Callbacks(handler, None));
    }

    /// The connection's driver and the sender its handle clones, for a set to adopt.
    pub(crate) fn into_parts(self) -> (Box<Driver>, CommandSender) {
        (self.driver, self.handle)
    }
}

/// Take an accepted socket into handshake mode (blocking, bounded by `handshake_timeout` from
/// now) and run the TLS handshake when `tls` is given.
pub(crate) fn open(
    tcp: TcpStream,
    tls: Option<&native_tls::TlsAcceptor>,
    config: &Config,
) -> Result<(Stream, SocketAddr), Error> {
    tcp.set_nodelay(config.nodelay())?;
    let peer = tcp.peer_addr()?;
    let deadline = config
        .handshake_timeout()
        .map(|d| crate::deadline::after(Instant::now(), d));
    let conn = TcpConn::new(tcp, deadline);
    let transport = match tls {
        None => Transport::Plain(conn),
        Some(acceptor) => Transport::Tls(crate::tls::accept(acceptor, conn, &peer.to_string())?),
    };
    Ok((Stream::from(transport), peer))
}

#[cfg(test)]
mod size {
    /// A server moves the connection from the upgrade to the code that runs it; with the
    /// driver inline (2 KiB) every frame on the way held a copy, and an idle connection
    /// thread kept 32 KiB of touched stack instead of 16 (see the README's idle-10k figure).
    #[test]
    fn a_server_connection_is_small_to_move() {
        assert!(std::mem::size_of::<super::ServerConnection>() <= 256);
    }
}
