//! The proxy exchanges (`proxy::http`, `proxy::socks5`), run the way a dial runs them on a
//! non-blocking socket (`tunnel::Exchange`, replayed as the answer arrives in pieces) and the
//! blocking way, against references written from RFC 9110 9.3.6 and RFC 1928/1929.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::input::{blank_line_end, End, Input, Wire};
use crate::error::{Error, ProxyStatus};
use crate::proxy::tunnel::{tunnel, Exchange, Progress};
use crate::proxy::{Proxy, Target};

/// What an exchange ends with, as far as the checks care.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Open,
    Refused(ProxyStatus),
    /// `Error::ProxyProtocol`: the proxy said something the protocol does not allow, or hung up
    /// in the middle.
    Protocol,
}

fn outcome(r: &Result<(), Error>) -> Outcome {
    match r {
        Ok(()) => Outcome::Open,
        Err(Error::ProxyRefused { status, .. }) => Outcome::Refused(*status),
        Err(Error::ProxyProtocol { .. }) => Outcome::Protocol,
        Err(e) => panic!("an in-memory exchange fails in no other way: {e:?}"),
    }
}

/// A host name of 328 bytes: too long for SOCKS5's one length byte.
const LONG_NAME: &str = concat!(
    "a123456789b123456789c123456789d123456789e123456789f123456789g123456789h123456789",
    "i123456789j123456789k123456789l123456789m123456789n123456789o123456789p123456789",
    "q123456789r123456789s123456789t123456789u123456789v123456789w123456789x123456789",
    "y123456789z123456789A123456789B123456789C123456789D123456789E123456789F123456789",
    ".example"
);
const _: () = assert!(LONG_NAME.len() > 255);

fn target(choice: u8) -> Target<'static> {
    match choice & 3 {
        0 => Target::Name("ws.example"),
        1 => Target::Ip(Ipv4Addr::new(10, 1, 2, 3).into()),
        2 => Target::Ip(Ipv6Addr::LOCALHOST.into()),
        _ => Target::Name(LONG_NAME),
    }
}

/// Run the exchange with `proxy` over `reply` both ways; returns the non-blocking run's
/// outcome and how much of `reply` it read, after checking that the blocking run on the whole
/// reply wrote the same bytes.
fn run(proxy: &Proxy, target: Target<'_>, reply: &[u8], cuts: (u8, u8)) -> (Outcome, usize) {
    let mut wire = Wire::new(reply, End::Closed, cuts.0, cuts.1);
    let mut exchange = Exchange::default();
    let mut rounds = 0;
    let nonblocking = loop {
        match exchange.advance(&mut wire, proxy, target, 9001) {
            Ok(Progress::Blocked { .. }) => {
                rounds += 1;
                // Every other call of the wire moves a byte.
                assert!(rounds < 4 * (reply.len() + 1024), "no progress");
            }
            Ok(Progress::Open) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let mut blocking = Duplex {
        input: reply,
        output: Vec::new(),
    };
    let whole = tunnel(&mut blocking, proxy, target, 9001);
    let result = outcome(&nonblocking);
    // Both ways say the same to the proxy as far as the non-blocking one got.
    let n = wire.written.len().min(blocking.output.len());
    assert_eq!(wire.written[..n], blocking.output[..n]);
    if result == Outcome::Open || outcome(&whole) == Outcome::Open {
        assert_eq!(wire.written, blocking.output);
    }
    (result, wire.pos)
}

/// Choices: credentials or not, the target (a name, IPv4, IPv6, a name too long for SOCKS5),
/// how the proxy's bytes are cut and how the socket takes ours. The rest is the proxy's answer.
///
/// Checks: the exchange ends as RFC 9110's CONNECT says (open on a whole 2xx head and nothing
/// after it, refused with the status otherwise, a protocol error for anything that is not an
/// HTTP response head or a hang-up before its end), however the answer is cut; the request is
/// written once, whole, in order; the head is never read past 16 KiB and one read.
pub fn proxy_http(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte();
    let cuts = (input.byte(), input.byte());
    let proxy = if choice & 0x10 == 0 {
        "http://p:3128"
    } else {
        "http://Aladdin:open%20sesame@p:3128"
    };
    let proxy = Proxy::parse(proxy).expect("a valid proxy url");
    let reply = input.rest();
    let (result, read) = run(&proxy, target(choice), reply, cuts);

    const LIMIT: usize = 16 << 10;
    let consumed = &reply[..read];
    let expected = match blank_line_end(consumed) {
        Some(end) if end <= LIMIT => match crate::http_head::parse_response(&consumed[..end]) {
            Err(_) => Outcome::Protocol,
            Ok((status, _)) if !status.is_success() => Outcome::Refused(ProxyStatus::Http(status)),
            // Bytes past the head cannot be the target's yet: refused, not lost.
            Ok(_) if end < read => Outcome::Protocol,
            Ok(_) => Outcome::Open,
        },
        _ => {
            assert!(read < LIMIT + crate::http_head::CHUNK, "read {read}");
            // Too large, or the proxy hung up first.
            assert!(read == reply.len() || read >= LIMIT, "read {read}");
            Outcome::Protocol
        }
    };
    assert_eq!(result, expected, "{:?}", String::from_utf8_lossy(consumed));
}

/// Choices: the kind (`socks5`, `socks5h`) and credentials, the target, how the proxy's bytes
/// are cut and how the socket takes ours. The rest is the proxy's answer.
///
/// Checks: the exchange ends as RFC 1928/1929 say for that answer (the method chosen, the
/// authentication status, the reply code, the bound address of each type), however it is cut;
/// an opened tunnel has read exactly the proxy's reply and nothing of what follows; what is
/// written is the same as the blocking exchange writes.
pub fn proxy_socks5(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte();
    let cuts = (input.byte(), input.byte());
    let credentials = choice & 0x10 != 0;
    let proxy = match (credentials, choice & 0x20 != 0) {
        (false, false) => "socks5h://p",
        (false, true) => "socks5://127.0.0.1:1080",
        (true, false) => "socks5h://us%3Ar:pw@p",
        (true, true) => "socks5://u:p@127.0.0.1",
    };
    let proxy = Proxy::parse(proxy).expect("a valid proxy url");
    let target = target(choice);
    let reply = input.rest();
    let (result, read) = run(&proxy, target, reply, cuts);
    let fits = !matches!(target, Target::Name(n) if n.len() > 255);
    let (expected, length) = socks5_reference(reply, credentials, fits);
    assert_eq!(result, expected);
    if let Some(length) = length {
        assert_eq!(read, length, "read exactly the reply");
    }
}

/// RFC 1928 (and 1929 with `credentials`): what a client must make of `reply`, and, when the
/// tunnel opens, the reply's length. Tolerated as the library chose: any version byte in the
/// RFC 1929 status reply, any reserved byte in the CONNECT reply.
fn socks5_reference(reply: &[u8], credentials: bool, fits: bool) -> (Outcome, Option<usize>) {
    let mut at = 0;
    let mut take = |n: usize| {
        let got = reply.get(at..at + n);
        at += n;
        got
    };
    let ended = (Outcome::Protocol, None);
    let Some(&[version, method]) = take(2) else {
        return ended;
    };
    if version != 5 {
        return (Outcome::Protocol, None);
    }
    match method {
        0 => {}
        2 if credentials => match take(2) {
            Some(&[_, 0]) => {}
            Some(_) => return (Outcome::Refused(ProxyStatus::Socks5AuthRejected), None),
            None => return ended,
        },
        0xff => return (Outcome::Refused(ProxyStatus::Socks5NoAcceptableAuth), None),
        _ => return (Outcome::Protocol, None),
    }
    if !fits {
        return (Outcome::Protocol, None);
    }
    let Some(&[version, code]) = take(2) else {
        return ended;
    };
    if version != 5 {
        return (Outcome::Protocol, None);
    }
    if code != 0 {
        return (Outcome::Refused(ProxyStatus::Socks5(code)), None);
    }
    let Some(&[_reserved, kind]) = take(2) else {
        return ended;
    };
    let address = match kind {
        1 => take(4 + 2),
        4 => take(16 + 2),
        3 => match take(1) {
            Some(&[len]) => take(usize::from(len) + 2),
            _ => None,
        },
        _ => return (Outcome::Protocol, None),
    };
    match address {
        Some(_) => (Outcome::Open, Some(at)),
        None => ended,
    }
}

/// A blocking stream: reads the whole answer as asked, records writes.
struct Duplex<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
