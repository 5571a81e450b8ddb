//! The one loop every mode runs: commands, reads, flush, deadlines, then wait.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::command::{CommandSender, Inbox, Signal};
use crate::handler::{Context, Dispatch};
use crate::session::Session;
use crate::wait::{Waiter, Woke};
use crate::{Config, WaitStrategy};

/// A session plus the way it waits. The front-ends build one and call [`Driver::run`].
#[derive(Debug)]
pub(crate) struct Driver {
    pub(crate) session: Session,
    pub(crate) waiter: Waiter,
    pub(crate) read_timeout: Option<Duration>,
}

impl Driver {
    /// A driver whose only input is the socket (the blocking client).
    pub(crate) fn new(
        session: Session,
        strategy: WaitStrategy,
        config: &Config,
    ) -> io::Result<Self> {
        let (waiter, _) = Waiter::new(strategy, &session, false)?;
        Ok(Driver {
            session,
            waiter,
            read_timeout: config.read_timeout,
        })
    }

    /// A driver that also takes commands from other threads, with the sender for them and the
    /// signal that wakes the loop.
    pub(crate) fn with_commands(
        mut session: Session,
        strategy: WaitStrategy,
        config: &Config,
    ) -> io::Result<(Self, CommandSender, Arc<Signal>)> {
        let (waiter, waker) = Waiter::new(strategy, &session, true)?;
        let signal = Signal::new(waker);
        let (sender, inbox) = Inbox::channel(config.control_capacity, signal.clone());
        session.set_inbox(inbox);
        let driver = Driver {
            session,
            waiter,
            read_timeout: config.read_timeout,
        };
        Ok((driver, sender, signal))
    }

    /// The receiving end of the command channel (drivers built `with_commands`).
    pub(crate) fn commands(&mut self) -> &crossbeam_channel::Receiver<crate::Command> {
        // `with_commands` always installs an inbox; `new` drivers never call this.
        self.session
            .inbox_mut()
            .expect("driver has commands")
            .receiver()
    }

    /// Drive the connection until it ends. `on_quit` is the last call, exactly once.
    pub(crate) fn run<D: Dispatch + ?Sized>(mut self, d: &mut D) {
        let span = tracing::debug_span!("session");
        let _enter = span.enter();
        d.activated(&mut Context {
            session: &mut self.session,
        });
        let mut last_input = Instant::now();
        loop {
            if d.stop_requested() {
                self.session.abandon();
            }
            report(&mut self.session, d);
            if self.session.is_done() {
                break;
            }
            let more_commands = self.session.apply_commands();
            let pass = self.session.read_pass(d);
            let now = Instant::now();
            if pass.messages > 0 {
                last_input = now;
            }
            // Deadlines may queue a heartbeat ping; it goes out with the rest.
            self.session.check_deadlines(now);
            // Everything the hooks queued while reading goes out in one write.
            self.session.flush();
            report(&mut self.session, d);
            if self.session.is_done() {
                break;
            }
            if pass.more || more_commands {
                continue;
            }
            let idle_at = self.read_timeout.map(|t| last_input + t);
            let deadline = match (self.session.next_deadline(), idle_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match self.waiter.wait(deadline, self.session.inbox_mut()) {
                Ok(Woke::Poll) if pass.messages == 0 && self.waiter.idles_every_pass() => {
                    d.idle(&mut Context {
                        session: &mut self.session,
                    });
                }
                Ok(_) => {}
                Err(e) => self.session.fail(e.into(), None),
            }
            if idle_at.is_some_and(|t| Instant::now() >= t) {
                last_input = Instant::now();
                d.idle(&mut Context {
                    session: &mut self.session,
                });
            }
        }
        report(&mut self.session, d);
        d.quit();
    }
}

fn report<D: Dispatch + ?Sized>(session: &mut Session, d: &mut D) {
    while let Some(error) = session.take_error() {
        d.error(&mut Context { session }, error);
    }
}
