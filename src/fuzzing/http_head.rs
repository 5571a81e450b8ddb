//! The HTTP head reader (`http_head`), fed the way a non-blocking socket feeds it.

use super::input::{blank_line_end, End, Input, Wire};
use crate::http_head::{parse_request, parse_response, HeadError, HeadReader, CHUNK};
use crate::io_outcome::{io_outcome, IoOutcome};

/// What the reader must end with, from the whole input (the reference).
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    /// A head, ending at this offset.
    Head(usize),
    TooLarge,
    Closed,
    /// Still waiting for the rest (the peer went quiet).
    Waiting,
}

/// Choices: the limit (1 to 381 bytes, or the server's 16 KiB, or the client's 64 KiB) and
/// whether the peer closes or goes quiet at the end; how the bytes are cut. The rest is what
/// the peer sends.
///
/// Checks: the reader ends exactly as the reference says (a head when the first blank line ends
/// within the limit, too large when the input passes the limit without one, closed or waiting
/// otherwise); it never holds more than the limit plus one read; a head is the input up to and
/// including the first blank line, and head + leftover is exactly what it read (nothing lost,
/// nothing invented); the parsers take any head without panicking.
pub fn http_head(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte();
    let cuts = input.byte();
    let limit = match choice & 0x7f {
        0 => crate::incoming::MAX_REQUEST_HEAD,
        1 => 64 << 10,
        k => usize::from(k) * 3,
    };
    let end = if choice & 0x80 == 0 {
        End::Closed
    } else {
        End::Quiet
    };
    let bytes = input.rest();

    let first_end = blank_line_end(bytes);
    let expected = match first_end {
        Some(e) if e <= limit => Expected::Head(e),
        _ if bytes.len() >= limit => Expected::TooLarge,
        _ if end == End::Closed => Expected::Closed,
        _ => Expected::Waiting,
    };

    let mut wire = Wire::new(bytes, end, cuts, 0);
    let mut reader = HeadReader::new(limit);
    let outcome = loop {
        let r = reader.read(&mut wire);
        assert!(
            reader.buffered() < limit + CHUNK && wire.pos < limit + CHUNK,
            "holds {} bytes (read {}) for a limit of {limit}",
            reader.buffered(),
            wire.pos
        );
        match r {
            Err(HeadError::Io(e)) if io_outcome(&e) == IoOutcome::WouldBlock => {
                if wire.drained() {
                    break None;
                }
            }
            other => break Some(other),
        }
    };
    match outcome {
        None => assert_eq!(expected, Expected::Waiting),
        Some(Ok(head)) => {
            assert_eq!(expected, Expected::Head(head.head.len()));
            assert_eq!(head.head, &bytes[..head.head.len()]);
            assert_eq!([&head.head[..], &head.leftover].concat(), wire.consumed());
            assert!(
                head.leftover.len() < CHUNK,
                "at most one read past the head"
            );
            // Parsing never panics; a complete parse is a complete head to httparse too.
            if parse_request(&head.head).is_ok() {
                let mut headers = [httparse::EMPTY_HEADER; crate::http_head::MAX_HEADERS];
                let parsed = httparse::Request::new(&mut headers).parse(&head.head);
                assert!(
                    matches!(parsed, Ok(httparse::Status::Complete(n)) if n == head.head.len())
                );
            }
            let _ = parse_response(&head.head);
        }
        Some(Err(HeadError::TooLarge { limit: said })) => {
            assert_eq!(said, limit);
            assert_eq!(expected, Expected::TooLarge);
        }
        Some(Err(HeadError::Closed)) => {
            assert_eq!(expected, Expected::Closed);
            assert_eq!(wire.pos, bytes.len(), "closed only at the end");
        }
        Some(Err(HeadError::Io(e))) => panic!("the wire fails in no other way: {e}"),
    }
}
