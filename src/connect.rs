//! The blocking connect: a [`Dial`] advanced until the connection is open, waiting in poll(2)
//! on its socket in between, up to the deadline each step gives.

use std::time::Instant;

use tungstenite::protocol::WebSocket;

use crate::dial::{Dial, Progress};
use crate::error::Error;
use crate::stream::Stream;
use crate::wait::Waiter;
use crate::{Config, Handshake, WaitStrategy};

/// Open a client connection: the socket is non-blocking when this returns.
pub(crate) fn connect(url: &str, config: &Config) -> Result<(WebSocket<Stream>, Handshake), Error> {
    let mut dial = Dial::start(url, config)?;
    let (mut waiter, _) = Waiter::new(WaitStrategy::Readiness, false)?;
    loop {
        match dial.advance(Instant::now())? {
            Progress::Done(open) => return Ok(*open),
            Progress::Pending { interest, deadline } => {
                let socket = dial.fd().map(|fd| (fd, interest.into()));
                waiter.wait(socket, deadline, None, false, false)?;
            }
        }
    }
}
