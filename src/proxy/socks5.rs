//! The SOCKS5 exchange (RFC 1928, with RFC 1929 username/password authentication): ask a SOCKS5
//! proxy to connect to the target.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};

use super::{io_error, protocol, refused, Proxy, Target};
use crate::error::{Error, ProxyStatus};

const SOCKS_VERSION: u8 = 5;
const SOCKS_NO_AUTH: u8 = 0x00;
const SOCKS_USER_PASS: u8 = 0x02;
const SOCKS_NO_ACCEPTABLE: u8 = 0xff;
const SOCKS_CONNECT: u8 = 0x01;
const SOCKS_IPV4: u8 = 0x01;
const SOCKS_DOMAIN: u8 = 0x03;
const SOCKS_IPV6: u8 = 0x04;

/// Ask the SOCKS5 proxy `proxy`, connected on `stream`, to connect to `target:port`.
pub(super) fn connect<S: Read + Write>(
    stream: &mut S,
    proxy: &Proxy,
    target: Target<'_>,
    port: u16,
) -> Result<(), Error> {
    let send = |stream: &mut S, bytes: &[u8]| {
        stream
            .write_all(bytes)
            .and_then(|()| stream.flush())
            .map_err(|e| io_error(proxy, e))
    };
    let recv = |stream: &mut S, buf: &mut [u8]| -> Result<(), Error> {
        stream.read_exact(buf).map_err(|e| io_error(proxy, e))
    };

    // RFC 1928 section 3: offer no authentication, and username/password when we have them.
    let greeting: &[u8] = match proxy.credentials {
        Some(_) => &[SOCKS_VERSION, 2, SOCKS_NO_AUTH, SOCKS_USER_PASS],
        None => &[SOCKS_VERSION, 1, SOCKS_NO_AUTH],
    };
    send(stream, greeting)?;
    let mut choice = [0u8; 2];
    recv(stream, &mut choice)?;
    if choice[0] != SOCKS_VERSION {
        return Err(protocol(
            proxy,
            format!("not a SOCKS5 server (version byte {:#04x})", choice[0]),
        ));
    }
    match (choice[1], &proxy.credentials) {
        (SOCKS_NO_AUTH, _) => {}
        (SOCKS_USER_PASS, Some(c)) => {
            // RFC 1929; `Proxy::parse` keeps both under 256 bytes.
            let mut auth = Vec::with_capacity(3 + c.username.len() + c.password.len());
            auth.extend_from_slice(&[1, c.username.len() as u8]);
            auth.extend_from_slice(c.username.as_bytes());
            auth.push(c.password.len() as u8);
            auth.extend_from_slice(c.password.as_bytes());
            send(stream, &auth)?;
            let mut status = [0u8; 2];
            recv(stream, &mut status)?;
            // The version byte of this reply varies between servers (1, or 5); only the status
            // matters, as in curl.
            if status[1] != 0 {
                return Err(refused(proxy, ProxyStatus::Socks5AuthRejected));
            }
        }
        (SOCKS_NO_ACCEPTABLE, _) => {
            return Err(refused(proxy, ProxyStatus::Socks5NoAcceptableAuth))
        }
        (other, _) => {
            return Err(protocol(
                proxy,
                format!(
                    "the proxy chose authentication method {other:#04x}, which we did not offer"
                ),
            ))
        }
    }

    // Section 4: CONNECT.
    let mut request = vec![SOCKS_VERSION, SOCKS_CONNECT, 0];
    match target {
        Target::Ip(IpAddr::V4(ip)) => {
            request.push(SOCKS_IPV4);
            request.extend_from_slice(&ip.octets());
        }
        Target::Ip(IpAddr::V6(ip)) => {
            request.push(SOCKS_IPV6);
            request.extend_from_slice(&ip.octets());
        }
        Target::Name(name) => {
            let len = u8::try_from(name.len()).map_err(|_| {
                protocol(
                    proxy,
                    format!(
                        "host name of {} bytes does not fit in SOCKS5's 255",
                        name.len()
                    ),
                )
            })?;
            request.extend_from_slice(&[SOCKS_DOMAIN, len]);
            request.extend_from_slice(name.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    send(stream, &request)?;

    // Section 6: the reply. A server that refuses may hang up right after the code, so the code
    // is read (and acted on) before the bound address.
    let mut head = [0u8; 2];
    recv(stream, &mut head)?;
    if head[0] != SOCKS_VERSION {
        return Err(protocol(
            proxy,
            format!("bad version byte {:#04x} in the CONNECT reply", head[0]),
        ));
    }
    if head[1] != 0 {
        return Err(refused(proxy, ProxyStatus::Socks5(head[1])));
    }
    let mut rsv_atyp = [0u8; 2];
    recv(stream, &mut rsv_atyp)?;
    let bound = match rsv_atyp[1] {
        SOCKS_IPV4 => {
            let mut addr = [0u8; 4 + 2];
            recv(stream, &mut addr)?;
            let port = u16::from_be_bytes([addr[4], addr[5]]);
            SocketAddr::from(([addr[0], addr[1], addr[2], addr[3]], port)).to_string()
        }
        SOCKS_IPV6 => {
            let mut addr = [0u8; 16 + 2];
            recv(stream, &mut addr)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&addr[..16]);
            let port = u16::from_be_bytes([addr[16], addr[17]]);
            SocketAddr::from((ip, port)).to_string()
        }
        SOCKS_DOMAIN => {
            let mut len = [0u8; 1];
            recv(stream, &mut len)?;
            let mut addr = vec![0u8; usize::from(len[0]) + 2];
            recv(stream, &mut addr)?;
            let (name, port) = addr.split_at(addr.len() - 2);
            format!(
                "{}:{}",
                String::from_utf8_lossy(name),
                u16::from_be_bytes([port[0], port[1]])
            )
        }
        other => {
            return Err(protocol(
                proxy,
                format!("unknown address type {other:#04x} in the CONNECT reply"),
            ))
        }
    };
    tracing::debug!(proxy = %proxy.authority(), %bound, "socks5 tunnel open");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::duplex::Duplex;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn run(
        proxy: &str,
        target: Target<'_>,
        port: u16,
        input: &[u8],
    ) -> (Duplex, Result<(), Error>) {
        let proxy = Proxy::parse(proxy).unwrap();
        let mut stream = Duplex::new(input);
        let result = connect(&mut stream, &proxy, target, port);
        (stream, result)
    }

    fn socks_ok_reply(atyp_and_addr: &[u8]) -> Vec<u8> {
        let mut reply = vec![5, 0, 0];
        reply.extend_from_slice(atyp_and_addr);
        reply.extend_from_slice(&[0x1f, 0x90]);
        reply
    }

    #[test]
    fn socks5_sends_each_address_type_and_reads_each_bound_address_exactly() {
        let trailing = b"after";
        for (target, request_addr) in [
            (
                Target::Ip(Ipv4Addr::new(10, 1, 2, 3).into()),
                vec![1, 10, 1, 2, 3],
            ),
            (Target::Ip(Ipv6Addr::LOCALHOST.into()), {
                let mut v = vec![4];
                v.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
                v
            }),
            (Target::Name("ws.example"), {
                let mut v = vec![3, 10];
                v.extend_from_slice(b"ws.example");
                v
            }),
        ] {
            for bound in [
                vec![1, 127, 0, 0, 1],
                {
                    let mut v = vec![4];
                    v.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
                    v
                },
                {
                    let mut v = vec![3, 5];
                    v.extend_from_slice(b"relay");
                    v
                },
            ] {
                let mut input = vec![5, 0];
                input.extend(socks_ok_reply(&bound));
                input.extend_from_slice(trailing);
                let (s, r) = run("socks5h://p", target, 9001, &input);
                r.unwrap_or_else(|e| panic!("{target:?} {bound:?}: {e}"));
                let mut expected = vec![5, 1, 0, 5, 1, 0];
                expected.extend_from_slice(&request_addr);
                expected.extend_from_slice(&9001u16.to_be_bytes());
                assert_eq!(s.output, expected, "{target:?}");
                assert_eq!(
                    s.unread(),
                    trailing.len(),
                    "{bound:?}: the reply is read exactly"
                );
            }
        }
    }

    #[test]
    fn socks5_authenticates_with_username_and_password() {
        let mut input = vec![5, 2, 1, 0];
        input.extend(socks_ok_reply(&[1, 0, 0, 0, 0]));
        let (s, r) = run("socks5://us%3Ar:pw@p", Target::Name("t"), 80, &input);
        r.unwrap();
        let mut expected = vec![5, 2, 0, 2, 1, 4];
        expected.extend_from_slice(b"us:r");
        expected.push(2);
        expected.extend_from_slice(b"pw");
        expected.extend_from_slice(&[5, 1, 0, 3, 1, b't', 0, 80]);
        assert_eq!(s.output, expected);
        // The server may skip authentication even when we offer it.
        let mut input = vec![5, 0];
        input.extend(socks_ok_reply(&[1, 0, 0, 0, 0]));
        run("socks5://u:p@p", Target::Name("t"), 80, &input)
            .1
            .unwrap();
    }

    #[test]
    fn socks5_refusals_are_typed_with_readable_reasons() {
        let status = |proxy: &str, input: &[u8]| match run(proxy, Target::Name("t"), 80, input).1 {
            Err(Error::ProxyRefused { status, .. }) => status,
            other => panic!("{input:?}: {other:?}"),
        };
        assert_eq!(
            status("socks5h://p", &[5, 0xff]),
            ProxyStatus::Socks5NoAcceptableAuth
        );
        assert_eq!(
            status("socks5h://u:p@p", &[5, 2, 1, 1]),
            ProxyStatus::Socks5AuthRejected
        );
        assert_eq!(status("socks5h://p", &[5, 0, 5, 5]), ProxyStatus::Socks5(5));
        let e = Error::ProxyRefused {
            proxy: "127.0.0.1:1080".into(),
            status: ProxyStatus::Socks5(2),
        };
        assert_eq!(
            e.to_string(),
            "proxy 127.0.0.1:1080 refused the tunnel: \
             SOCKS5 reply 2: connection not allowed by ruleset"
        );
        assert!(ProxyStatus::Socks5(0x42).to_string().contains("unassigned"));
    }

    #[test]
    fn socks5_garbage_is_a_protocol_error() {
        for (proxy, input, expected) in [
            ("socks5h://p", &[4u8, 0][..], "not a SOCKS5 server"),
            ("socks5h://p", &[5, 2], "did not offer"),
            ("socks5h://p", &[5, 0, 5, 0, 0, 9], "unknown address type"),
            ("socks5h://p", &[5, 0, 4, 0], "bad version byte"),
            (
                "socks5h://p",
                &[5, 0, 5, 0, 0, 1, 127],
                "closed the connection",
            ),
            ("socks5h://p", &[5], "closed the connection"),
        ] {
            match run(proxy, Target::Name("t"), 80, input).1 {
                Err(e @ Error::ProxyProtocol { .. }) => {
                    assert!(e.to_string().contains(expected), "{input:?}: {e}")
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        let long = "a".repeat(256);
        let r = run("socks5h://p", Target::Name(&long), 80, &[5, 0]).1;
        assert!(matches!(r, Err(Error::ProxyProtocol { reason, .. }) if reason.contains("255")));
    }
}
