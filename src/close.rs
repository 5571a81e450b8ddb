//! What a close handshake carries: who started it, the peer's code and reason, and the one check
//! of what we may send.

use tungstenite::protocol::frame::coding::CloseCode;

use crate::Error;

/// Who started a close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Initiator {
    /// This side called `close`.
    Local,
    /// The peer sent the first Close frame.
    Remote,
}

/// A completed close handshake: the peer's code and reason, and who started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code the peer sent (1005 `Status` when its Close frame carried none).
    pub code: CloseCode,
    /// The reason the peer sent (may be empty).
    pub reason: String,
    /// Who sent the first Close frame.
    pub initiator: Initiator,
}

/// The one check of a close code and reason we may send.
pub(crate) fn check_close(code: CloseCode, reason: &str) -> Result<(), Error> {
    if !code.is_allowed() {
        return Err(Error::InvalidCloseCode(code.into()));
    }
    if reason.len() > 123 {
        return Err(Error::CloseReasonTooLong(reason.len()));
    }
    Ok(())
}
