//! What a [`ThreadedClient`](crate::ThreadedClient) reports on `event_rx`.

use tungstenite::{Bytes, Utf8Bytes};

use crate::{CloseInfo, Error, Handshake, ReconnectAttempt};

/// One thing that happened on a threaded connection, in the order it happened. The same
/// sequence a [`Handler`](crate::Handler) sees: `Activated` first, `Quit` last and exactly once;
/// after `Quit` the channel reports disconnection.
///
/// Payloads are the received buffers themselves (reference-counted, not copied);
/// `Utf8Bytes` derefs to `&str` and `Bytes` to `&[u8]`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The connection is open.
    Activated(Box<Handshake>),
    /// A text message.
    TextMessage(Utf8Bytes),
    /// A binary message.
    BinaryMessage(Bytes),
    /// A ping (already answered).
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The close handshake completed, with the peer's code and reason.
    ConnectionClosed(CloseInfo),
    /// Something failed (see [`Handler::on_error`](crate::Handler::on_error)).
    Error(Error),
    /// The connection was lost and the client will try again after the attempt's delay (see
    /// [`ConfigBuilder::reconnect`](crate::ConfigBuilder::reconnect)); `Activated` follows a
    /// success. Send [`Command::Close`](crate::Command::Close) or `ForceQuit` to stop.
    Reconnecting(ReconnectAttempt),
    /// The connection is over; nothing follows.
    Quit,
}
