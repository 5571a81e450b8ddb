//! The server side of the same core: one accepted socket, driven like a client.

use std::net::TcpStream;
use std::time::Instant;

use http::header::SEC_WEBSOCKET_EXTENSIONS;
use http::HeaderValue;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::Role;

use crate::command::CommandSender;
use crate::deflate::inbound::Inbound;
use crate::deflate::outbound::Outbound;
use crate::driver::Driver;
use crate::error::TimeoutKind;
use crate::handler::Callbacks;
use crate::session::Session;
use crate::stream::{Stream, TcpConn, Transport};
use crate::{Config, DeflateParams, Error, Handler, WaitStrategy};

/// A server-side WebSocket connection on an accepted socket, driven by the same core as the
/// clients (thread per connection: [`run`](Self::run) blocks in the OS poll on the socket plus a
/// waker). [`handle`](Self::handle) lets other threads send to it, which is how a server
/// broadcasts.
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
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// for tcp in listener.incoming() {
///     let conn = ServerConnection::accept(tcp?, None, &Config::default())?;
///     std::thread::spawn(move || conn.run(&mut Echo));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ServerConnection {
    driver: Driver,
    handle: CommandSender,
    deflate: Option<DeflateParams>,
}

impl ServerConnection {
    /// Run the server handshake on an accepted socket: TLS first when `tls` is given, then the
    /// HTTP upgrade, both bounded by the config's `handshake_timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`], [`Error::InvalidHandshake`] for a bad upgrade request,
    /// [`Error::Timeout`]`(`[`TimeoutKind::Handshake`]`)` when the TLS handshake or the upgrade
    /// runs past `handshake_timeout`.
    pub fn accept(
        tcp: TcpStream,
        tls: Option<&native_tls::TlsAcceptor>,
        config: &Config,
    ) -> Result<Self, Error> {
        tcp.set_nodelay(config.nodelay)?;
        let deadline = config.handshake_timeout.map(|d| Instant::now() + d);
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let conn = TcpConn::new(tcp, deadline);
        let stream = match tls {
            None => Stream::from(Transport::Plain(conn)),
            Some(acceptor) => match acceptor.accept(conn) {
                Ok(s) => Stream::from(Transport::Tls(Box::new(s))),
                Err(native_tls::HandshakeError::WouldBlock(_)) => {
                    return Err(Error::Timeout(TimeoutKind::Handshake))
                }
                // Our deadline shows up as an io error inside the TLS library's.
                Err(native_tls::HandshakeError::Failure(e))
                    if crate::tls::chain_has_timeout(&e) =>
                {
                    return Err(Error::Timeout(TimeoutKind::Handshake))
                }
                Err(native_tls::HandshakeError::Failure(e)) => {
                    return Err(Error::Tls {
                        host: peer,
                        failure: crate::TlsFailure::classify(&e),
                        source: Box::new(e),
                    })
                }
            },
        };
        // permessage-deflate: answer the first offer we can meet (when enabled).
        let mut agreed = None;
        // The error type is tungstenite's (an HTTP response), fixed by its callback trait.
        #[allow(clippy::result_large_err)]
        let negotiate = |request: &Request, mut response: Response| {
            if let Some(settings) = &config.deflate {
                let offers = request
                    .headers()
                    .get_all(SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                if let Some((params, answer)) = crate::deflate::server_accept(settings, offers) {
                    if let Ok(value) = HeaderValue::from_str(&answer) {
                        response
                            .headers_mut()
                            .insert(SEC_WEBSOCKET_EXTENSIONS, value);
                        agreed = Some(params);
                    }
                }
            }
            Ok(response)
        };
        let accepted =
            tungstenite::accept_hdr_with_config(stream, negotiate, Some(config.websocket_config()));
        let mut ws = match accepted {
            Ok(ws) => ws,
            Err(HandshakeError::Interrupted(_)) => {
                return Err(Error::Timeout(TimeoutKind::Handshake))
            }
            Err(HandshakeError::Failure(tungstenite::Error::Io(e)))
                if crate::error::is_deadline(&e) =>
            {
                return Err(Error::Timeout(TimeoutKind::Handshake))
            }
            Err(HandshakeError::Failure(e)) => return Err(Error::InvalidHandshake(e.to_string())),
        };
        ws.get_mut().make_nonblocking()?;
        // A client sends nothing between its request and our answer (RFC 6455 4.1), so no
        // frame can have been read ahead of the inflating layer.
        let outbound = match (&agreed, &config.deflate) {
            (Some(params), Some(settings)) => {
                ws.get_mut()
                    .set_inbound(Inbound::new(Role::Server, config, &[]));
                Outbound::new(params, Role::Server, settings)
            }
            _ => None,
        };
        let session = Session::server(ws, config, outbound);
        let (driver, handle, _) = Driver::new(session, WaitStrategy::Readiness, config, None)?;
        Ok(ServerConnection {
            driver,
            handle,
            deflate: agreed,
        })
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

    /// A cloneable, thread-safe sender of [`Command`](crate::Command)s into this connection.
    pub fn handle(&self) -> CommandSender {
        self.handle.clone()
    }

    /// Run until the connection ends, calling `handler`'s hooks on this thread.
    pub fn run<H: Handler + ?Sized>(self, handler: &mut H) {
        let ServerConnection { driver, handle, .. } = self;
        drop(handle);
        driver.run(&mut Callbacks(handler));
    }
}
