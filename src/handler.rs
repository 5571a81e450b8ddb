//! The one way a connection reports to user code, and what user code can do from inside a hook.

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message};

use crate::session::{Dispatch, Session};
use crate::{CloseInfo, Error, Handshake, Metrics, ReconnectAttempt, SharedFrame};

/// Callbacks for [`BlockingClient`](crate::BlockingClient),
/// [`NonBlockingClient`](crate::NonBlockingClient), [`ServerConnection`](crate::ServerConnection)
/// and the connections of a [`ConnectionSet`](crate::ConnectionSet). Every hook has a default
/// that does nothing, so a handler implements only what it needs.
///
/// Hooks run on the thread that drives the connection. Each one gets a [`Context`] through
/// which it can send, close or stop; sends made inside a hook are queued and written together
/// before the loop next waits, so answering a burst costs one system call, not one per message.
///
/// Order: `on_activated` first; then messages in the order they arrived; `on_connection_closed`
/// after every message the peer sent before its Close; `on_quit` last, exactly once, however the
/// connection ended.
///
/// A handler keeps what it needs between hooks in its own fields:
///
/// ```no_run
/// use syncws::{BlockingClient, CloseInfo, Config, Context, Error, Handler};
///
/// /// Subscribes, counts what arrives, and stops after `left` messages.
/// struct Feed {
///     left: usize,
///     errors: Vec<String>,
/// }
///
/// impl Handler for Feed {
///     fn on_activated(&mut self, ctx: &mut Context<'_>) {
///         // Also after each reconnect: subscribe again.
///         let _ = ctx.send_text(r#"{"subscribe":"trades"}"#);
///     }
///     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
///         println!("{text}");
///         self.left -= 1;
///         if self.left == 0 {
///             let _ = ctx.close(1000, "enough");
///         }
///     }
///     fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &CloseInfo) {
///         println!("closed with {}", close.code);
///     }
///     fn on_error(&mut self, _ctx: &mut Context<'_>, error: &Error) {
///         self.errors.push(error.to_string());
///     }
/// }
///
/// let client = BlockingClient::connect("wss://example.com/feed", &Config::default())?;
/// let mut feed = Feed { left: 100, errors: Vec::new() };
/// client.run(&mut feed);
/// # Ok::<(), syncws::Error>(())
/// ```
///
/// A panic in a hook: in a [`ConnectionSet`](crate::ConnectionSet) it ends only that
/// connection (closed with 1011; the handler then hears only `on_error` with
/// [`Error::Panicked`] and the other reports of the end, and `on_quit`); in the other modes it
/// unwinds out of `run` on the calling thread, as any panic does.
#[allow(unused_variables)]
pub trait Handler {
    /// The connection is open; the handshake is in [`Context::handshake`].
    fn on_activated(&mut self, ctx: &mut Context<'_>) {}
    /// A text message arrived (already checked to be UTF-8).
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {}
    /// A binary message arrived.
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {}
    /// A ping arrived; the pong is sent automatically.
    fn on_ping(&mut self, ctx: &mut Context<'_>, data: &[u8]) {}
    /// A pong arrived.
    fn on_pong(&mut self, ctx: &mut Context<'_>, data: &[u8]) {}
    /// The close handshake completed (or the peer started one, which is answered).
    fn on_connection_closed(&mut self, ctx: &mut Context<'_>, close: &CloseInfo) {}
    /// Something failed. Errors that end the connection come once, before `on_quit`; a command
    /// from another thread that could not be carried out is reported here too.
    fn on_error(&mut self, ctx: &mut Context<'_>, error: &Error) {}
    /// Nothing arrived: called when `read_timeout` passes without input, and, under the
    /// `BusySpin` and `Sleep` wait strategies, after every poll that found nothing.
    fn on_idle(&mut self, ctx: &mut Context<'_>) {}
    /// A reconnecting client lost its connection and will try again after `attempt.delay`
    /// (see [`ConfigBuilder::reconnect`](crate::ConfigBuilder::reconnect)). Calling
    /// [`Context::force_quit`] or [`Context::close`] here stops reconnecting; `on_activated`
    /// follows a successful attempt.
    fn on_reconnecting(&mut self, ctx: &mut Context<'_>, attempt: &ReconnectAttempt) {}
    /// A send from a hook was refused with [`Error::QueueFull`], and the queue has drained
    /// since: sending may resume. Called once per refusal episode.
    fn on_writable(&mut self, ctx: &mut Context<'_>) {}
    /// The connection is over; nothing more will be called.
    fn on_quit(&mut self) {}
}

/// A handler behind a pointer is a handler: `ConnectionSet<Box<dyn Handler + Send>>` mixes
/// kinds, and `ConnectionSet<&mut MyHandler>` lends handlers for the length of a run.
macro_rules! forward_handler {
    ($($ty:ty),*) => {$(
        impl<H: Handler + ?Sized> Handler for $ty {
            fn on_activated(&mut self, ctx: &mut Context<'_>) {
                (**self).on_activated(ctx);
            }
            fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
                (**self).on_text_message(ctx, text);
            }
            fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
                (**self).on_binary_message(ctx, data);
            }
            fn on_ping(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
                (**self).on_ping(ctx, data);
            }
            fn on_pong(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
                (**self).on_pong(ctx, data);
            }
            fn on_connection_closed(&mut self, ctx: &mut Context<'_>, close: &CloseInfo) {
                (**self).on_connection_closed(ctx, close);
            }
            fn on_error(&mut self, ctx: &mut Context<'_>, error: &Error) {
                (**self).on_error(ctx, error);
            }
            fn on_idle(&mut self, ctx: &mut Context<'_>) {
                (**self).on_idle(ctx);
            }
            fn on_reconnecting(&mut self, ctx: &mut Context<'_>, attempt: &ReconnectAttempt) {
                (**self).on_reconnecting(ctx, attempt);
            }
            fn on_writable(&mut self, ctx: &mut Context<'_>) {
                (**self).on_writable(ctx);
            }
            fn on_quit(&mut self) {
                (**self).on_quit();
            }
        }
    )*};
}

forward_handler!(Box<H>, &mut H);

/// A message [`Context::try_send`] could not queue, handed back with the reason.
#[derive(Debug)]
#[non_exhaustive]
pub struct SendFailure {
    /// Why it was not queued ([`Error::QueueFull`], [`Error::Closed`], ...).
    pub error: Error,
    /// The message, untouched.
    pub message: Message,
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "message of {} bytes not sent: {}",
            self.message.len(),
            self.error
        )
    }
}

impl std::error::Error for SendFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// What a hook can do with its connection.
///
/// Sends are queued in order and written before the loop next waits (or at once when
/// `write_buffer_size` bytes are waiting). A send never blocks and never duplicates: when the
/// socket is full the data stays queued and goes out as it drains.
pub struct Context<'a> {
    pub(crate) session: &'a mut Session,
    pub(crate) id: Option<ConnId>,
}

impl Context<'_> {
    /// Queue a text message.
    ///
    /// # Errors
    ///
    /// [`Error::QueueFull`] when the queue bound would be passed, [`Error::Closed`] once a
    /// close has started.
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.session.send(Message::Text(text.into()))
    }

    /// Queue a binary message. Errors as for [`send_text`](Self::send_text).
    ///
    /// # Errors
    ///
    /// As for [`send_text`](Self::send_text).
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.session
            .send(Message::Binary(Bytes::copy_from_slice(data)))
    }

    /// Queue a ping (at most 125 bytes).
    ///
    /// # Errors
    ///
    /// [`Error::ControlPayloadTooLong`] past 125 bytes; otherwise as for
    /// [`send_text`](Self::send_text).
    pub fn send_ping(&mut self, data: &[u8]) -> Result<(), Error> {
        self.session
            .send(Message::Ping(Bytes::copy_from_slice(data)))
    }

    /// Queue a pong (at most 125 bytes).
    ///
    /// # Errors
    ///
    /// [`Error::ControlPayloadTooLong`] past 125 bytes; otherwise as for
    /// [`send_text`](Self::send_text).
    pub fn send_pong(&mut self, data: &[u8]) -> Result<(), Error> {
        self.session
            .send(Message::Pong(Bytes::copy_from_slice(data)))
    }

    /// Queue a message framed once for many connections (see [`SharedFrame`]): a server
    /// connection without compression copies the finished frame as it is.
    ///
    /// # Errors
    ///
    /// As for [`send_text`](Self::send_text).
    pub fn send_shared(&mut self, frame: &SharedFrame) -> Result<(), Error> {
        self.session.send_shared(frame)
    }

    /// Queue an owned message without copying it (`Message::Text(String::into())`,
    /// `Message::Binary(Vec::into())`, ...). A `Message::Close` starts the close handshake, as
    /// [`close`](Self::close) does.
    ///
    /// A raw `Message::Frame` is refused: it would bypass every check the connection makes
    /// (control frame size, reserved bits, fragmentation, the close handshake) and could put a
    /// frame on the wire that makes the peer drop the connection.
    ///
    /// # Errors
    ///
    /// [`Error::RawFrame`] for `Message::Frame`, and nothing is sent; for a ping or pong as for
    /// [`send_ping`](Self::send_ping), for a close as for [`close`](Self::close); otherwise as
    /// for [`send_text`](Self::send_text).
    pub fn send(&mut self, message: Message) -> Result<(), Error> {
        match message {
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (f.code, f.reason.to_string()))
                    .unwrap_or((CloseCode::Normal, String::new()));
                self.session.close(code, &reason)
            }
            // The session writes raw frames itself (permessage-deflate), so the refusal is here,
            // where user code comes in.
            Message::Frame(_) => Err(Error::RawFrame),
            other => self.session.send(other),
        }
    }

    /// Queue an owned message, or hand it back with the reason it could not be queued (as
    /// crossbeam's `try_send` does): on [`Error::QueueFull`], keep it and send it again from
    /// [`Handler::on_writable`].
    ///
    /// # Errors
    ///
    /// [`SendFailure`] holding the error (as for [`send`](Self::send)) and the message.
    pub fn try_send(&mut self, message: Message) -> Result<(), SendFailure> {
        // Payloads are reference-counted: keeping a copy for the refusal copies nothing.
        let kept = message.clone();
        self.send(message).map_err(|error| SendFailure {
            error,
            message: kept,
        })
    }

    /// Start the close handshake: everything queued before goes out first, then our Close; the
    /// peer's answer (or the `close_timeout`) ends the connection. Calling it again is a no-op.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCloseCode`] for codes that may not be sent (1005, 1006, 1015, outside
    /// 1000-4999), [`Error::CloseReasonTooLong`] past 123 bytes.
    pub fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<(), Error> {
        self.session.close(code.into(), reason)
    }

    /// Drop the connection at once, without a close handshake. `on_quit` follows.
    pub fn force_quit(&mut self) {
        self.session.force_quit();
    }

    /// The opening handshake (status, headers, negotiated subprotocol), for client connections.
    pub fn handshake(&self) -> Option<&Handshake> {
        self.session.handshake()
    }

    /// This connection's counters (also readable from other threads through the client's
    /// `metrics()`).
    pub fn metrics(&self) -> &Metrics {
        self.session.metrics()
    }

    /// Whether messages can still be sent (no close has started).
    pub fn is_open(&self) -> bool {
        self.session.is_open()
    }

    /// Which connection of a [`ConnectionSet`](crate::ConnectionSet) this is (`None` in the
    /// other modes, which drive one connection each).
    pub fn id(&self) -> Option<ConnId> {
        self.id
    }
}

/// Which connection of a [`ConnectionSet`](crate::ConnectionSet) something is about: given by
/// [`ConnectionSet::add`](crate::ConnectionSet::add), [`ConnectionSet::adopt`](
/// crate::ConnectionSet::adopt) and their [`SetHandle`](crate::SetHandle) counterparts, and to
/// the connection's hooks as [`Context::id`]. Never reused by the set that gave it.
/// Defined here, beside the [`Context`] that carries it, so the core never imports the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The number behind the id (the order in which connections were added, from 0).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Adapts a user [`Handler`] to [`Dispatch`], lending payloads as `&str` / `&[u8]`; the id is
/// the connection's in a client set.
pub(crate) struct Callbacks<'h, H: ?Sized>(pub(crate) &'h mut H, pub(crate) Option<ConnId>);

impl<H: Handler + ?Sized> Dispatch for Callbacks<'_, H> {
    fn activated(&mut self, session: &mut Session) {
        self.0.on_activated(&mut Context {
            session,
            id: self.1,
        });
    }
    fn message(&mut self, session: &mut Session, message: Message) {
        match message {
            Message::Text(t) => self.0.on_text_message(
                &mut Context {
                    session,
                    id: self.1,
                },
                t.as_str(),
            ),
            Message::Binary(b) => self.0.on_binary_message(
                &mut Context {
                    session,
                    id: self.1,
                },
                &b,
            ),
            Message::Ping(p) => self.0.on_ping(
                &mut Context {
                    session,
                    id: self.1,
                },
                &p,
            ),
            Message::Pong(p) => self.0.on_pong(
                &mut Context {
                    session,
                    id: self.1,
                },
                &p,
            ),
            Message::Close(_) | Message::Frame(_) => {}
        }
    }
    fn closed(&mut self, session: &mut Session, close: CloseInfo) {
        self.0.on_connection_closed(
            &mut Context {
                session,
                id: self.1,
            },
            &close,
        );
    }
    fn error(&mut self, session: &mut Session, error: Error) {
        self.0.on_error(
            &mut Context {
                session,
                id: self.1,
            },
            &error,
        );
    }
    fn idle(&mut self, session: &mut Session) {
        self.0.on_idle(&mut Context {
            session,
            id: self.1,
        });
    }
    fn reconnecting(&mut self, session: &mut Session, attempt: ReconnectAttempt) {
        self.0.on_reconnecting(
            &mut Context {
                session,
                id: self.1,
            },
            &attempt,
        );
    }
    fn writable(&mut self, session: &mut Session) {
        self.0.on_writable(&mut Context {
            session,
            id: self.1,
        });
    }
    fn quit(&mut self) {
        self.0.on_quit();
    }
}

/// A set member's handler after one of its passes panicked (see `ConnectionSet`): it hears
/// only of its connection's end, `on_error`, each call caught; once one of those panics too
/// (`silenced`), nothing more. Messages (none arrive while the connection closes as failed),
/// idle, writable and reconnect reports are not handed on, and `on_quit` is the set's to call.
pub(crate) struct AfterPanic<'h, H: ?Sized> {
    pub(crate) handler: &'h mut H,
    pub(crate) id: Option<ConnId>,
    pub(crate) silenced: &'h mut bool,
}

impl<H: Handler + ?Sized> Dispatch for AfterPanic<'_, H> {
    fn activated(&mut self, _session: &mut Session) {}
    fn message(&mut self, _session: &mut Session, _message: Message) {}
    fn closed(&mut self, _session: &mut Session, _close: CloseInfo) {}
    fn error(&mut self, session: &mut Session, error: Error) {
        if *self.silenced {
            tracing::debug!(%error, "not reported: the handler panicked");
            return;
        }
        let (handler, id) = (&mut *self.handler, self.id);
        let reported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler.on_error(&mut Context { session, id }, &error);
        }));
        if reported.is_err() {
            tracing::error!(
                "on_error panicked after an earlier panic; only on_quit is called from now on"
            );
            *self.silenced = true;
        }
    }
    fn idle(&mut self, _session: &mut Session) {}
    fn reconnecting(&mut self, _session: &mut Session, _attempt: ReconnectAttempt) {}
    fn quit(&mut self) {}
}
