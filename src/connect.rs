//! The blocking connect: a [`Dial`] advanced until the connection is open, waiting in between
//! up to the deadline each step gives: in poll(2) on its socket, or, while a name is looked
//! up in the resolver pool, parked until the pool unparks this thread with the answer.

use std::time::Instant;

use tungstenite::protocol::WebSocket;

use crate::dial::{Dial, Progress};
use crate::error::Error;
use crate::resolver::Wake;
use crate::stream::Stream;
use crate::wait::Waiter;
use crate::{Config, Handshake, WaitStrategy};

/// Open a client connection: the socket is non-blocking when this returns.
pub(crate) fn connect(url: &str, config: &Config) -> Result<(WebSocket<Stream>, Handshake), Error> {
    // The lookup runs in the pool even here, where this thread has nothing else to do: that
    // way `connect_timeout` bounds it, as it does in every mode, and one path opens every
    // connection. Parking needs no descriptor; an answer that lands as the dial ends (a
    // timeout) may leave an unpark behind, which is only a spurious wake-up for a later park,
    // as `park` allows.
    let me = std::thread::current();
    let mut dial = Dial::start(url, config, Wake::new(move || me.unpark()))?;
    let (mut waiter, _) = Waiter::new(WaitStrategy::Readiness, false)?;
    loop {
        match dial.advance(Instant::now())? {
            Progress::Done(open) => return Ok(*open),
            Progress::Pending {
                interest: Some(interest),
                deadline,
            } => {
                let socket = dial.fd().map(|fd| (fd, interest.into()));
                waiter.wait(socket, deadline, None, false, false)?;
            }
            // Woken early (a stray unpark), the next advance only finds no answer yet.
            Progress::Pending {
                interest: None,
                deadline: Some(deadline),
            } => std::thread::park_timeout(deadline.saturating_duration_since(Instant::now())),
            Progress::Pending {
                interest: None,
                deadline: None,
            } => std::thread::park(),
        }
    }
}
