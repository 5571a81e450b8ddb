//! A message encoded once for many connections: a server's broadcast.

use std::sync::Arc;

use tungstenite::{Bytes, Message, Utf8Bytes};

use crate::frame;

/// A text or binary message framed once, to send to many connections without framing it again
/// for each (a chat room's broadcast). Cloning it copies nothing (one reference count), and it
/// is one pointer wide, so a [`Command`](crate::Command) carrying it stays small: every
/// connection's command channel holds `control_capacity` of them.
///
/// A server connection without compression copies the finished frame into its queue as it is.
/// A connection that must mask its frames (a client) or that compresses them (permessage-deflate
/// agreed: each connection has its own compression context) frames the payload itself, so any
/// connection can be given one.
///
/// ```
/// use syncws::{Command, SharedFrame};
///
/// let hello = SharedFrame::text(r#"{"ev":"msg","text":"hello"}"#);
/// // for handle in room_members { handle.send(Command::SendShared(hello.clone()))?; }
/// # let _ = Command::SendShared(hello);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFrame(Arc<Framed>);

#[derive(Debug, PartialEq, Eq)]
struct Framed {
    message: Message,
    /// The whole unmasked frame, header included.
    wire: Bytes,
}

impl SharedFrame {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        let text = text.into();
        let wire = unmasked(frame::TEXT, text.as_bytes());
        SharedFrame(Arc::new(Framed {
            message: Message::Text(text),
            wire,
        }))
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let wire = unmasked(frame::BINARY, &data);
        SharedFrame(Arc::new(Framed {
            message: Message::Binary(data),
            wire,
        }))
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.0.message.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message, for connections that frame it themselves.
    pub(crate) fn message(&self) -> &Message {
        &self.0.message
    }

    /// The finished unmasked frame.
    pub(crate) fn wire(&self) -> &Bytes {
        &self.0.wire
    }
}

fn unmasked(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(frame::wire_len(payload.len(), false));
    frame::encode(&mut out, opcode, false, payload, None);
    out.into()
}
