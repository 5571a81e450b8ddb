//! The clients under test. Each one connects, calls [`Job::start`], sends what the job asks,
//! feeds every echo to [`Job::on_echo`], and closes when the job is done. Every wait is bounded
//! by `Params::stall` (or the idle time).

use std::net::SocketAddr;

use crate::job::{Job, Params};

mod raw;
mod s9;
mod syncws_clients;
mod tokio_ws;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Client {
    RawTcp,
    Tungstenite,
    TokioTungstenite,
    S9Blocking,
    S9NonBlocking,
    S9Threaded,
    SyncwsBlocking,
    SyncwsSpin,
    SyncwsSleep,
    SyncwsReadiness,
    SyncwsThreaded,
    SyncwsSet,
}

impl Client {
    pub const ALL: [Client; 12] = [
        Client::RawTcp,
        Client::Tungstenite,
        Client::TokioTungstenite,
        Client::S9Blocking,
        Client::S9NonBlocking,
        Client::S9Threaded,
        Client::SyncwsBlocking,
        Client::SyncwsSpin,
        Client::SyncwsSleep,
        Client::SyncwsReadiness,
        Client::SyncwsThreaded,
        Client::SyncwsSet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Client::RawTcp => "raw-tcp",
            Client::Tungstenite => "tungstenite",
            Client::TokioTungstenite => "tokio-tungstenite",
            Client::S9Blocking => "s9-blocking",
            Client::S9NonBlocking => "s9-nonblocking",
            Client::S9Threaded => "s9-threaded",
            Client::SyncwsBlocking => "syncws-blocking",
            Client::SyncwsSpin => "syncws-nonblocking-spin",
            Client::SyncwsSleep => "syncws-nonblocking-sleep",
            Client::SyncwsReadiness => "syncws-nonblocking-readiness",
            Client::SyncwsThreaded => "syncws-threaded",
            Client::SyncwsSet => "syncws-set",
        }
    }

    pub fn parse(s: &str) -> Option<Client> {
        Client::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn is_syncws(self) -> bool {
        self.name().starts_with("syncws")
    }

    /// Clients that keep a core busy while idle (measured apart from each other in the idle
    /// test so that they do not share a core).
    pub fn spins(self) -> bool {
        matches!(
            self,
            Client::SyncwsSpin | Client::S9NonBlocking | Client::S9Threaded
        )
    }
}

/// Where the echo servers listen.
#[derive(Debug, Clone)]
pub struct Addrs {
    /// `ws://127.0.0.1:P/`
    pub ws: String,
    /// 127.0.0.1:Q
    pub tcp: SocketAddr,
}

/// Run `job` with `client`. Errors are also recorded in the job.
pub fn run(client: Client, job: &mut Job, addrs: &Addrs, p: &Params) {
    let r = match client {
        Client::RawTcp => raw::raw_tcp(job, addrs.tcp, p),
        Client::Tungstenite => raw::tungstenite(job, &addrs.ws, p),
        Client::TokioTungstenite => tokio_ws::run(job, &addrs.ws, p),
        Client::S9Blocking => s9::blocking(job, &addrs.ws, p),
        Client::S9NonBlocking => s9::nonblocking(job, &addrs.ws, p),
        Client::S9Threaded => s9::threaded(job, &addrs.ws, p),
        Client::SyncwsBlocking
        | Client::SyncwsSpin
        | Client::SyncwsSleep
        | Client::SyncwsReadiness
        | Client::SyncwsSet => syncws_clients::callbacks(client, job, &addrs.ws, p),
        Client::SyncwsThreaded => syncws_clients::threaded(job, &addrs.ws, p),
    };
    if let Err(e) = r {
        job.fail(e);
    }
}

/// The idle test for a client that reports on a channel (the threaded clients): measure while
/// nothing should arrive for `p.idle`; anything that does is an error.
fn idle_on_channel<T: std::fmt::Debug>(
    events: &crossbeam_channel::Receiver<T>,
    job: &mut Job,
    p: &Params,
) -> Result<(), String> {
    job.start();
    let r = events.recv_timeout(p.idle);
    job.idle_end();
    match r {
        Err(_) => Ok(()),
        Ok(e) => Err(format!("idle connection received {e:?}")),
    }
}
