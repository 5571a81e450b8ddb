//! The tunnel: the exchange with the proxy that makes a connection to it carry bytes to and from
//! the target.

use std::io::{Read, Write};

use super::{http, socks5, Proxy, ProxyKind, Target};
use crate::error::Error;

/// Ask `proxy`, connected on `stream` (blocking, under the handshake deadline), for a tunnel to
/// `target:port`. When this returns `Ok`, `stream` carries bytes to and from the target.
pub(crate) fn tunnel<S: Read + Write>(
    stream: &mut S,
    proxy: &Proxy,
    target: Target<'_>,
    port: u16,
) -> Result<(), Error> {
    match proxy.kind {
        ProxyKind::HttpConnect => http::connect(stream, proxy, target, port),
        ProxyKind::Socks5 | ProxyKind::Socks5h => socks5::connect(stream, proxy, target, port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutKind;
    use std::io;

    #[test]
    fn a_socket_timeout_during_the_exchange_is_the_handshake_timeout() {
        struct Stalled;
        impl Read for Stalled {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::TimedOut.into())
            }
        }
        impl Write for Stalled {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        for proxy in ["http://p", "socks5h://p"] {
            let r = tunnel(
                &mut Stalled,
                &Proxy::parse(proxy).unwrap(),
                Target::Name("t"),
                80,
            );
            assert!(
                matches!(r, Err(Error::Timeout(TimeoutKind::Handshake))),
                "{r:?}"
            );
        }
    }
}
