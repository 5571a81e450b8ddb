//! Host name lookups: the system resolver (`getaddrinfo`, through std's `ToSocketAddrs`).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

/// Ask the system resolver for `host`'s addresses, with `port` (blocking).
pub(crate) fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    #[cfg(test)]
    if let Some(fake) = fake::find(host) {
        return fake(port);
    }
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// The test seam: a lookup function of the test's own for one host name (a `.test` name,
/// RFC 6761), so tests can make a lookup slow, or never answer, without the internet.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::BTreeMap;
    use std::io;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    type Answer = Arc<dyn Fn(u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

    /// Every test's fakes, by host name (tests run in parallel: each uses names of its own).
    static FAKES: Mutex<BTreeMap<String, Answer>> = Mutex::new(BTreeMap::new());

    /// From now on, looking up `host` calls `answer` with the port instead of the system
    /// resolver.
    pub(crate) fn answer(
        host: &str,
        answer: impl Fn(u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) {
        FAKES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), Arc::new(answer));
    }

    pub(super) fn find(host: &str) -> Option<Answer> {
        FAKES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
    }
}
