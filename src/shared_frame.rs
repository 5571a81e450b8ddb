//! A message encoded once for many connections: a server's broadcast.

use tungstenite::{Bytes, Message, Utf8Bytes};

use crate::frame;

/// A text or binary message framed once, to send to many connections without framing it again
/// for each (a chat room's broadcast). Cloning it copies nothing: the payload and the frame are
/// reference-counted.
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
pub struct SharedFrame {
    message: Message,
    /// The whole unmasked frame, header included.
    wire: Bytes,
}

impl SharedFrame {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        let text = text.into();
        let wire = unmasked(frame::TEXT, text.as_bytes());
        SharedFrame {
            message: Message::Text(text),
            wire,
        }
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let wire = unmasked(frame::BINARY, &data);
        SharedFrame {
            message: Message::Binary(data),
            wire,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.message.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message, for connections that frame it themselves.
    pub(crate) fn message(&self) -> &Message {
        &self.message
    }

    /// The finished unmasked frame.
    pub(crate) fn wire(&self) -> &Bytes {
        &self.wire
    }
}

fn unmasked(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(frame::wire_len(payload.len(), false));
    frame::encode(&mut out, opcode, false, payload, None);
    out.into()
}
