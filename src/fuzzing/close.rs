//! The check of a Close frame's code and reason (`close::check_close`), against RFC 6455 7.4.

use tungstenite::protocol::frame::coding::CloseCode;

use crate::close::check_close;
use crate::Error;

/// The input is a Close frame's payload: a code (two bytes, big-endian), then the reason.
///
/// Checks: `check_close` accepts exactly the codes RFC 6455 7.4 lets an endpoint send (7.4.1's
/// 1000-1003 and 1007-1011, the IANA-registered 1012 and 1013, and 3000-4999) with a reason of
/// at most 123 bytes (the 125-byte control frame limit less the code); reasons that are not
/// UTF-8 cannot reach it (it takes `&str`) and are refused by the reference. Refusals are the
/// typed errors that name what was wrong.
pub fn close(data: &[u8]) {
    let [hi, lo, reason @ ..] = data else {
        // No code: a Close without a payload (1005 to the receiver), nothing to check.
        return;
    };
    let code = u16::from_be_bytes([*hi, *lo]);
    let Ok(reason) = std::str::from_utf8(reason) else {
        assert!(!may_send(code, reason), "a reason that is not UTF-8");
        return;
    };
    let verdict = check_close(CloseCode::from(code), reason);
    assert_eq!(
        verdict.is_ok(),
        may_send(code, reason.as_bytes()),
        "{code} {reason:?}"
    );
    match verdict {
        Ok(()) => {}
        Err(Error::InvalidCloseCode(c)) => {
            assert_eq!(c, code);
            assert!(!allowed(code));
        }
        Err(Error::CloseReasonTooLong(n)) => {
            assert_eq!(n, reason.len());
            assert!(allowed(code) && n > 123);
        }
        Err(e) => panic!("{e:?}"),
    }
}

/// RFC 6455 7.4: whether an endpoint may send `code` with `reason` in a Close frame.
fn may_send(code: u16, reason: &[u8]) -> bool {
    allowed(code) && reason.len() <= 123 && std::str::from_utf8(reason).is_ok()
}

/// 7.4.1 defines 1000-1011; of those 1004 is reserved and 1005 and 1006 must never be sent.
/// 7.4.2 reserves 1000-2999 for the protocol and registered extensions (IANA has registered
/// 1012 Service Restart, 1013 Try Again Later and 1014 Bad Gateway; 1015 must never be sent),
/// and gives 3000-3999 to registered and 4000-4999 to private use. 1014 is left out on
/// purpose: tungstenite, which reads our peers' frames and those of our own server, fails a
/// connection whose Close carries it, so sending it would turn a clean close into a protocol
/// error.
fn allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}
