//! URL -> DNS -> TCP -> [proxy tunnel] -> TLS -> WebSocket upgrade, every step after DNS bounded
//! by the handshake deadline.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tungstenite::protocol::WebSocket;
use url::{Host, Url};

use crate::error::{Error, TimeoutKind};
use crate::proxy::env::for_target;
use crate::proxy::tunnel::tunnel;
use crate::proxy::{Proxy, Target};
use crate::stream::{Stream, Transport};
use crate::tcp::TcpConn;
use crate::{Config, Handshake};

/// Open a client connection: the socket is non-blocking when this returns.
pub(crate) fn connect(url: &str, config: &Config) -> Result<(WebSocket<Stream>, Handshake), Error> {
    let span = tracing::info_span!("connect", url = %redacted(url));
    let _enter = span.enter();
    let started = Instant::now();
    let result = open(url, config);
    match &result {
        Ok((_, hs)) => tracing::info!(
            elapsed_us = started.elapsed().as_micros() as u64,
            subprotocol = hs.subprotocol(),
            "websocket open"
        ),
        Err(e) => tracing::warn!(error = %e, "connect failed"),
    }
    result
}

fn open(url: &str, config: &Config) -> Result<(WebSocket<Stream>, Handshake), Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    let tls = match parsed.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(Error::UnsupportedScheme {
                scheme: other.to_owned(),
            })
        }
    };
    let host = parsed.host().ok_or_else(|| invalid("no host"))?;
    let port = parsed
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let deadline = config.handshake_timeout().map(|d| Instant::now() + d);
    let proxy = for_target(config, tls, &host, port)?;

    // TLS verifies the target's name, through a proxy too.
    let server_name = match host {
        Host::Domain(name) => name.to_owned(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    };
    let conn = match &proxy {
        None => {
            let addrs = match host {
                Host::Domain(name) => resolve(name, port)?,
                Host::Ipv4(ip) => vec![SocketAddr::new(ip.into(), port)],
                Host::Ipv6(ip) => vec![SocketAddr::new(ip.into(), port)],
            };
            TcpConn::new(connect_tcp(&addrs, config, deadline)?, deadline)
        }
        Some(proxy) => through_proxy(proxy, &host, port, config, deadline)?,
    };
    let transport = if tls {
        Transport::Tls(crate::tls::handshake(&server_name, conn, config)?)
    } else {
        Transport::Plain(conn)
    };
    let stream = Stream::from(transport);

    let (mut ws, handshake) = crate::handshake::client(stream, &parsed, config)?;
    ws.get_mut().make_nonblocking()?;
    Ok((ws, handshake))
}

/// Connect to the proxy (its addresses, the same socket options and timeouts as a direct
/// connection) and have it open a tunnel to the target, under the handshake deadline.
fn through_proxy(
    proxy: &Proxy,
    host: &Host<&str>,
    port: u16,
    config: &Config,
    deadline: Option<Instant>,
) -> Result<TcpConn, Error> {
    let target = match *host {
        // SOCKS5 takes one address; like curl, we give it the first one the resolver returns.
        Host::Domain(name) if proxy.resolves_locally() => Target::Ip(resolve(name, port)?[0].ip()),
        Host::Domain(name) => Target::Name(name),
        Host::Ipv4(ip) => Target::Ip(ip.into()),
        Host::Ipv6(ip) => Target::Ip(ip.into()),
    };
    let unreachable = |source| Error::ProxyConnect {
        proxy: proxy.authority(),
        source,
    };
    let addrs = match proxy.host().parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, proxy.port())],
        Err(_) => resolve(proxy.host(), proxy.port()).map_err(|e| match e {
            Error::Resolve { source, .. } => unreachable(source),
            other => other,
        })?,
    };
    let tcp = connect_tcp(&addrs, config, deadline).map_err(|e| match e {
        Error::Connect { source, .. } => unreachable(source),
        other => other,
    })?;
    let mut conn = TcpConn::new(tcp, deadline);
    tunnel(&mut conn, proxy, target, port)?;
    Ok(conn)
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|source| Error::Resolve {
            host: host.to_owned(),
            source,
        })?;
    let addrs: Vec<_> = resolved.collect();
    if addrs.is_empty() {
        return Err(Error::Resolve {
            host: host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        });
    }
    Ok(addrs)
}

fn connect_tcp(
    addrs: &[SocketAddr],
    config: &Config,
    deadline: Option<Instant>,
) -> Result<TcpStream, Error> {
    let mut last = None;
    for &addr in addrs {
        let timeout = match (config.connect_timeout(), remaining(deadline)?) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match connect_one(addr, config, timeout) {
            Ok(tcp) => {
                tracing::debug!(%addr, "tcp connected");
                return Ok(tcp);
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "tcp connect failed");
                last = Some((addr, e));
            }
        }
    }
    // `resolve` never returns an empty list, so one attempt was made.
    let (addr, source) = last.expect("at least one address was tried");
    if crate::error::is_deadline(&source) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::Timeout(TimeoutKind::Handshake));
        }
        return Err(Error::Timeout(TimeoutKind::Connect));
    }
    Err(Error::Connect { addr, source })
}

fn connect_one(
    addr: SocketAddr,
    config: &Config,
    timeout: Option<Duration>,
) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Buffer sizes must be set before connect to take part in window scaling.
    if let Some(n) = config.send_buffer_size() {
        socket.set_send_buffer_size(n)?;
    }
    if let Some(n) = config.recv_buffer_size() {
        socket.set_recv_buffer_size(n)?;
    }
    match timeout {
        Some(t) => socket.connect_timeout(&addr.into(), t)?,
        None => socket.connect(&addr.into())?,
    }
    socket.set_tcp_nodelay(config.nodelay())?;
    if let Some(ttl) = config.ttl() {
        if addr.is_ipv4() {
            socket.set_ttl_v4(ttl)?;
        } else {
            socket.set_unicast_hops_v6(ttl)?;
        }
    }
    if let Some(idle) = config.keepalive() {
        socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
    }
    Ok(socket.into())
}

fn remaining(deadline: Option<Instant>) -> Result<Option<Duration>, Error> {
    match deadline {
        None => Ok(None),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(Error::Timeout(TimeoutKind::Handshake))
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// The URL for logs: without credentials (`ws://user:pass@host/` logs as `ws://host/`).
fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<invalid url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_never_reach_the_logs() {
        assert_eq!(super::redacted("ws://u:secret@h:1/p?q"), "ws://h:1/p?q");
        assert_eq!(super::redacted("wss://h/"), "wss://h/");
        assert_eq!(super::redacted("not a url secret"), "<invalid url>");
    }
}
