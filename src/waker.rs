//! Waking a thread parked in its OS wait: [`Waker`] is the platform's (an eventfd on Linux, a
//! pipe on other Unix, a socket pair on Windows: see `sys`), shared by a connection's senders
//! and its waiter; [`SetWaker`] is one waker for a whole client set.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub(crate) use crate::sys::Waker;

/// The waker of a thread that waits for many connections at once (a client set): one waker
/// for all of them, plus the list of connections that were woken, so the set runs only those.
#[derive(Debug)]
pub(crate) struct SetWaker {
    waker: Waker,
    /// The set's thread is in (or about to enter) its OS wait.
    parked: AtomicBool,
    woken: Mutex<Vec<u64>>,
}

impl SetWaker {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(SetWaker {
            waker: Waker::new()?,
            parked: AtomicBool::new(false),
            woken: Mutex::new(Vec::new()),
        })
    }

    /// Connection `id` has something to do: list it, and end the set's wait if it is parked.
    pub(crate) fn wake(&self, id: u64) -> io::Result<()> {
        self.woken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        self.wake_set()
    }

    /// End the set's wait if it is parked (something for the set itself: an add, a stop).
    pub(crate) fn wake_set(&self) -> io::Result<()> {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.waker.wake()?;
        }
        Ok(())
    }

    /// Park first, then look (see `take_woken`): a waker that lists after the look sees the
    /// flag and wakes the waker.
    pub(crate) fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::SeqCst);
    }

    /// Whether some connection was woken since the last `take_woken`.
    pub(crate) fn has_woken(&self) -> bool {
        !self
            .woken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Move the connections woken since the last call into `into`.
    pub(crate) fn take_woken(&self, into: &mut Vec<u64>) {
        into.append(&mut self.woken.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The waker the set's OS wait watches.
    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }
}
