//! Admission: what a socket may cost before it is refused.
//!
//! Every socket a listener accepts takes a slot here in the accept loop, before a thread, a
//! TLS handshake or a byte of its request is spent on it: one per client address (an IPv6
//! client counts by its /64, which one subscriber usually holds whole) and one of the few
//! that may be in their handshake at once. An upgraded connection trades its handshake slot
//! for a slot of its kind (chat or echo), each kind bounded on its own. The counts are shared
//! by every listener of the server, so two listeners never double a limit. A socket refused
//! here costs the accept loop one small write and a close.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The address a limit counts by: an IPv4 address (an IPv4-mapped IPv6 one too), or an IPv6
/// /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    ClientKey(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

/// What an upgraded connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Echo,
}

/// Why a socket or an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client's address holds `--max-per-ip` sockets already.
    PerClient,
    /// `--max-handshakes` sockets are in their handshake already.
    Handshakes,
    /// Every connection slot of the kind is taken (`--max-connections`, or the echo's).
    Connections,
}

impl Refused {
    /// For the event log and the 503's body.
    pub fn why(self) -> &'static str {
        match self {
            Refused::PerClient => "too many connections from this address",
            Refused::Handshakes => "too many connections in their handshake",
            Refused::Connections => "connection limit",
        }
    }
}

#[derive(Debug)]
pub struct Limits {
    counts: Mutex<Counts>,
    max_per_client: usize,
    max_handshakes: usize,
    max_chat: usize,
    max_echo: usize,
}

#[derive(Debug, Default)]
struct Counts {
    per_client: HashMap<ClientKey, usize>,
    handshakes: usize,
    chat: usize,
    echo: usize,
}

impl Limits {
    pub fn new(
        max_per_client: usize,
        max_handshakes: usize,
        max_chat: usize,
        max_echo: usize,
    ) -> Arc<Limits> {
        Arc::new(Limits {
            counts: Mutex::new(Counts::default()),
            max_per_client: max_per_client.max(1),
            max_handshakes: max_handshakes.max(1),
            max_chat,
            max_echo,
        })
    }

    /// A slot for a socket just accepted from `ip`, in its handshake.
    pub fn accept(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let key = ClientKey::of(ip);
        let mut counts = self.lock();
        let from_client = counts.per_client.get(&key).copied().unwrap_or(0);
        if from_client >= self.max_per_client {
            return Err(Refused::PerClient);
        }
        if counts.handshakes >= self.max_handshakes {
            return Err(Refused::Handshakes);
        }
        counts.handshakes += 1;
        *counts.per_client.entry(key).or_insert(0) += 1;
        Ok(Slot {
            limits: self.clone(),
            key,
            stage: Stage::Handshake,
        })
    }

    /// Sockets open now: in their handshake, chat, echo.
    pub fn open(&self) -> (usize, usize, usize) {
        let c = self.lock();
        (c.handshakes, c.chat, c.echo)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Handshake,
    Upgraded(Kind),
}

/// One socket's place under the limits, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    key: ClientKey,
    stage: Stage,
}

impl Slot {
    /// Trade the handshake slot for a connection slot of `kind`, if one is free.
    pub fn upgrade(&mut self, kind: Kind) -> Result<(), Refused> {
        if self.stage != Stage::Handshake {
            return Ok(());
        }
        let mut counts = self.limits.lock();
        let (open, max) = match kind {
            Kind::Chat => (&mut counts.chat, self.limits.max_chat),
            Kind::Echo => (&mut counts.echo, self.limits.max_echo),
        };
        if *open >= max {
            return Err(Refused::Connections);
        }
        *open += 1;
        counts.handshakes -= 1;
        self.stage = Stage::Upgraded(kind);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        match self.stage {
            Stage::Handshake => counts.handshakes -= 1,
            Stage::Upgraded(Kind::Chat) => counts.chat -= 1,
            Stage::Upgraded(Kind::Echo) => counts.echo -= 1,
        }
        if let Some(n) = counts.per_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_client.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(ClientKey::of(mapped), ClientKey::of(v4));
    }

    #[test]
    fn every_socket_counts_per_client_and_slots_come_back() {
        let limits = Limits::new(2, 3, 1, 1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut a = limits.accept(ip).unwrap();
        let b = limits.accept(ip).unwrap();
        assert_eq!(limits.accept(ip).unwrap_err(), Refused::PerClient);
        let c = limits.accept(other).unwrap();
        // Three in their handshake: the overall bound.
        let d: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(limits.accept(d).unwrap_err(), Refused::Handshakes);
        a.upgrade(Kind::Chat).unwrap();
        assert_eq!(limits.open(), (2, 1, 0));
        let mut e = limits.accept(d).unwrap();
        assert_eq!(e.upgrade(Kind::Chat).unwrap_err(), Refused::Connections);
        e.upgrade(Kind::Echo).unwrap();
        drop((a, b, c, e));
        assert_eq!(limits.open(), (0, 0, 0));
        assert!(limits.lock().per_client.is_empty());
    }
}
