//! What an I/O error means: the one place that reads an `io::Error`'s kind, and the one payload
//! we put in them ourselves ([`deadline_passed`]). Everything else asks [`io_outcome`] (a dial's
//! TCP connect also asks [`connect_pending`]); what an outcome means to the library's errors is
//! decided in `error` (the handshake's `is_deadline`/`handshake_io`, an established
//! connection's `classify`).
//!
//! No dependencies inside the crate, so the socket code (`tcp`, `outbox`) can use it without
//! reaching the error types and, through them, the configuration.

use std::fmt;
use std::io;

/// What an I/O error means to the code that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoOutcome {
    /// A signal interrupted the call before anything moved: call again.
    Interrupted,
    /// The socket cannot move bytes now. Non-blocking: wait for readiness. Blocking with a
    /// timeout: the platform's way (EAGAIN) of saying the timeout passed, see
    /// `error::is_deadline`.
    WouldBlock,
    /// A [`TcpConn`](crate::tcp::TcpConn) deadline passed ([`deadline_passed`]): during the
    /// opening handshake, or a server's plain HTTP exchange, or its lingering close.
    Deadline,
    /// Something else ran out of time: a connect timeout, a socket timeout reported as such, or
    /// the kernel giving up on the peer (ETIMEDOUT after retransmissions or keepalive probes).
    TimedOut,
    /// The stream ended where more was expected (UnexpectedEof; rustls's report of a TCP end
    /// without TLS close_notify).
    Ended,
    /// The connection broke: reset by the peer (ECONNRESET), aborted under us (ECONNABORTED;
    /// Windows reports some resets this way), or written to after the peer closed (EPIPE; Rust
    /// ignores SIGPIPE).
    Reset,
    /// Anything else.
    Failed,
}

/// Decide what `e` means: see [`IoOutcome`].
pub(crate) fn io_outcome(e: &io::Error) -> IoOutcome {
    // Ours first: a layer may have changed the kind but keeps the payload.
    if e.get_ref().is_some_and(|inner| inner.is::<Deadline>()) {
        return IoOutcome::Deadline;
    }
    match e.kind() {
        io::ErrorKind::Interrupted => IoOutcome::Interrupted,
        io::ErrorKind::WouldBlock => IoOutcome::WouldBlock,
        io::ErrorKind::TimedOut => IoOutcome::TimedOut,
        io::ErrorKind::UnexpectedEof => IoOutcome::Ended,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => IoOutcome::Reset,
        _ => IoOutcome::Failed,
    }
}

/// Whether `e` only says that a non-blocking connect is still under way: `EINPROGRESS` from
/// `connect(2)` (`WSAEWOULDBLOCK` from Winsock's `connect`, which std reports as `WouldBlock`),
/// or `ENOTCONN` from asking the socket for its peer before the connection is made. Asked only
/// of a socket being connected, where `ENOTCONN` means nothing else.
pub(crate) fn connect_pending(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error())
        || e.kind() == io::ErrorKind::NotConnected
        // On Unix a connect that would block (EAGAIN) is a failure of its own (no local port
        // left, for one), not a connect under way.
        || (cfg!(windows) && e.kind() == io::ErrorKind::WouldBlock)
}

/// The error for a blocking read or write whose deadline has passed: kind `TimedOut` (what
/// [`HttpStream`](crate::HttpStream) users are told to expect), carrying [`Deadline`] so that
/// [`io_outcome`] knows it for ours.
pub(crate) fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, Deadline)
}

/// The payload of [`deadline_passed`]'s error. Private: only [`io_outcome`] looks for it.
#[derive(Debug)]
struct Deadline;

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What `io::Error::from(ErrorKind::TimedOut)` says, which this error replaced.
        f.write_str("timed out")
    }
}

impl std::error::Error for Deadline {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_deadline_is_known_by_its_payload_whatever_the_kind() {
        let e = deadline_passed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(io_outcome(&e), IoOutcome::Deadline);
        assert_eq!(
            e.to_string(),
            io::Error::from(io::ErrorKind::TimedOut).to_string()
        );
        // A layer that re-wraps the payload under another kind.
        let inner = e.into_inner().unwrap();
        let rewrapped = io::Error::other(inner);
        assert_eq!(io_outcome(&rewrapped), IoOutcome::Deadline);
    }

    #[test]
    fn a_connect_under_way_is_known_and_nothing_else_is() {
        assert!(connect_pending(&io::Error::from_raw_os_error(
            rustix::io::Errno::INPROGRESS.raw_os_error()
        )));
        assert!(connect_pending(&io::ErrorKind::NotConnected.into()));
        // Winsock's way of saying EINPROGRESS; a failure of its own on Unix.
        assert_eq!(
            connect_pending(&io::ErrorKind::WouldBlock.into()),
            cfg!(windows)
        );
        for e in [
            io::Error::from_raw_os_error(rustix::io::Errno::CONNREFUSED.raw_os_error()),
            io::ErrorKind::TimedOut.into(),
        ] {
            assert!(!connect_pending(&e), "{e:?}");
        }
    }

    #[test]
    fn each_kind_has_one_outcome() {
        use io::ErrorKind::*;
        for (kind, outcome) in [
            (Interrupted, IoOutcome::Interrupted),
            (WouldBlock, IoOutcome::WouldBlock),
            (TimedOut, IoOutcome::TimedOut),
            (UnexpectedEof, IoOutcome::Ended),
            (ConnectionReset, IoOutcome::Reset),
            (ConnectionAborted, IoOutcome::Reset),
            (BrokenPipe, IoOutcome::Reset),
            (ConnectionRefused, IoOutcome::Failed),
            (InvalidData, IoOutcome::Failed),
            (PermissionDenied, IoOutcome::Failed),
        ] {
            assert_eq!(io_outcome(&kind.into()), outcome, "{kind:?}");
            // Someone else's payload does not change what the kind says.
            assert_eq!(io_outcome(&io::Error::new(kind, "x")), outcome, "{kind:?}");
        }
    }
}
