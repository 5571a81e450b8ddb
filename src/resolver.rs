//! Host name lookups off the caller's thread. The system resolver (`getaddrinfo`, through
//! std's `ToSocketAddrs`) has no non-blocking interface, so a dial hands its lookup to a small
//! pool of threads shared by the whole process and is woken, through the `Wake` it gave, once
//! the answer is in; meanwhile its connection's loop goes on with everything else (its other
//! connections, in a `ConnectionSet`; commands and stops, in every mode).
//!
//! The pool is started on the first lookup and grows a thread at a time, up to
//! [`POOL_SIZE`]: at most that many lookups run at once in the process, however many
//! connections ask (a set adding 10,000 members by name starts 4 threads, not 10,000), and the
//! others wait their turn in order. A name asked for while its lookup is queued or running
//! joins that lookup (so those 10,000 members, if they share a host, cost one lookup). Each
//! asker's deadline runs meanwhile (see `dial.rs`), so a resolver that never answers costs a
//! connection its attempt, never the process a thread per connection. A lookup whose askers
//! are all gone (their dials ended: a stop, a timeout, a drop) is skipped if it has not
//! started, and its answer dropped if it has.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use crossbeam_channel::{Receiver, Sender};

/// Lookups that run at once in the process. Enough for a few slow names not to hold up every
/// other one; few enough that a flood of names costs a handful of threads.
pub(crate) const POOL_SIZE: usize = 4;

/// A lookup thread's stack: `getaddrinfo` and the NSS modules behind it keep their buffers
/// small on the stack and grow on the heap (musl's threads run them in 128 KiB); twice that
/// leaves room for glibc's, where the default 2 MiB would be address space for nothing.
const STACK_SIZE: usize = 256 << 10;

/// What the pool calls once an answer is in: it ends its asker's wait (for a connection,
/// `Shared::wake_now`, so a set runs that member and a single connection's OS poll returns).
#[derive(Clone)]
pub(crate) struct Wake(Arc<dyn Fn() + Send + Sync>);

impl Wake {
    pub(crate) fn new(wake: impl Fn() + Send + Sync + 'static) -> Self {
        Wake(Arc::new(wake))
    }
}

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wake").finish_non_exhaustive()
    }
}

/// A lookup asked of the pool; its answer once there is one. Dropping it abandons the lookup.
pub(crate) struct Lookup(Arc<Slot>);

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup").finish_non_exhaustive()
    }
}

impl Lookup {
    /// The answer, once the pool has one (taken: later calls see `None`).
    pub(crate) fn answer(&self) -> Option<io::Result<Vec<SocketAddr>>> {
        lock(&self.0.answer).take()
    }
}

/// Where the answer goes, shared by the asker (strongly) and the pool (weakly: the asker's
/// drop is how the pool learns that nobody waits any more).
struct Slot {
    answer: Mutex<Option<io::Result<Vec<SocketAddr>>>>,
    wake: Wake,
}

/// Look `host` up in the pool; `wake` is called once the answer is in.
///
/// # Errors
///
/// When the pool has no thread and none can be started (the process is out of threads).
pub(crate) fn lookup(host: &str, port: u16, wake: Wake) -> io::Result<Lookup> {
    let slot = Arc::new(Slot {
        answer: Mutex::new(None),
        wake,
    });
    pool().ask((host.to_owned(), port), Arc::downgrade(&slot))?;
    Ok(Lookup(slot))
}

/// The process's pool, started by the first lookup.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, queue) = crossbeam_channel::unbounded();
        Pool {
            jobs,
            queue,
            state: Mutex::new(State::default()),
        }
    })
}

/// What is looked up: a host name and the port its addresses get.
type Key = (String, u16);

struct Pool {
    jobs: Sender<Key>,
    /// Every thread takes lookups from here, in order.
    queue: Receiver<Key>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    started: usize,
    /// Every lookup asked for and not finished (queued or running), with whoever waits for
    /// its answer. A name asked for again meanwhile joins the lookup under way instead of
    /// queueing another: a set adding thousands of connections to one host looks it up once,
    /// and the attempts of a client reconnecting to a name the resolver sits on do not fill
    /// the pool with lookups of that one name.
    lookups: HashMap<Key, Vec<Weak<Slot>>>,
}

impl Pool {
    /// `asker` waits for `key`: it joins the lookup under way, or a new one is queued, with a
    /// new thread for it when every thread has a lookup already and the pool is not full (a
    /// process that looks up one name at a time keeps one thread).
    fn ask(&'static self, key: Key, asker: Weak<Slot>) -> io::Result<()> {
        let mut state = lock(&self.state);
        if let Some(askers) = state.lookups.get_mut(&key) {
            askers.retain(|a| a.strong_count() > 0);
            askers.push(asker);
            return Ok(());
        }
        if state.lookups.len() >= state.started && state.started < POOL_SIZE {
            let spawned = std::thread::Builder::new()
                .name("syncws-dns".into())
                .stack_size(STACK_SIZE)
                .spawn(move || self.work());
            match spawned {
                Ok(_) => state.started += 1,
                // The threads there are take the lookup, in turn.
                Err(e) if state.started > 0 => {
                    tracing::warn!(error = %e, "cannot start another lookup thread")
                }
                Err(e) => return Err(e),
            }
        }
        state.lookups.insert(key.clone(), vec![asker]);
        // The pool holds `queue` for ever, so the send cannot fail.
        let _ = self.jobs.send(key);
        Ok(())
    }

    /// A thread of the pool: one lookup after another, for the life of the process (an idle
    /// thread waits in `recv`, at no cost).
    fn work(&self) {
        for key in self.queue.iter() {
            {
                let mut state = lock(&self.state);
                let waited_for = state
                    .lookups
                    .get(&key)
                    .is_some_and(|askers| askers.iter().any(|a| a.strong_count() > 0));
                if !waited_for {
                    // Everyone who asked has gone (a stop, a timeout): nothing to look up.
                    state.lookups.remove(&key);
                    continue;
                }
            }
            // A panic (none is expected of the system resolver) costs the lookup, not the
            // thread.
            let answer = catch_unwind(AssertUnwindSafe(|| system_lookup(&key.0, key.1)))
                .unwrap_or_else(|_| Err(io::Error::other("the lookup panicked")));
            let askers = lock(&self.state).lookups.remove(&key).unwrap_or_default();
            // Those who have gone meanwhile are skipped: their answer is simply dropped.
            let mut askers: Vec<Arc<Slot>> = askers.iter().filter_map(Weak::upgrade).collect();
            let last = askers.pop();
            for slot in askers {
                slot.deliver(copy(&answer));
            }
            if let Some(slot) = last {
                slot.deliver(answer);
            }
        }
    }
}

impl Slot {
    fn deliver(&self, answer: io::Result<Vec<SocketAddr>>) {
        *lock(&self.answer) = Some(answer);
        (self.wake.0)();
    }
}

/// An answer for one more asker (an `io::Error` is not `Clone`: its kind and message are
/// what a lookup's error carries).
fn copy(answer: &io::Result<Vec<SocketAddr>>) -> io::Result<Vec<SocketAddr>> {
    match answer {
        Ok(addrs) => Ok(addrs.clone()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

/// Ask the system resolver for `host`'s addresses, with `port` (blocking).
pub(crate) fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    #[cfg(test)]
    if let Some(fake) = fake::find(host) {
        return fake(port);
    }
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// The locks here guard plain values that no panic can leave torn.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The test seam: a lookup function of the test's own for one host name (a `.test` name,
/// RFC 6761), so tests can make a lookup slow, or never answer, without the internet.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::BTreeMap;
    use std::io;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex, MutexGuard};

    use crossbeam_channel::{Receiver, Sender};

    type Answer = Arc<dyn Fn(u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

    /// Every test's fakes, by host name (tests run in parallel: each uses names of its own).
    static FAKES: Mutex<BTreeMap<String, Answer>> = Mutex::new(BTreeMap::new());

    /// From now on, looking up `host` calls `answer` with the port instead of the system
    /// resolver.
    pub(crate) fn answer(
        host: &str,
        answer: impl Fn(u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) {
        super::lock(&FAKES).insert(host.to_owned(), Arc::new(answer));
    }

    pub(super) fn find(host: &str) -> Option<Answer> {
        super::lock(&FAKES).get(host).cloned()
    }

    /// From now on a lookup of any of `hosts` tells the returned receiver that it started,
    /// then answers only when the test lets it: with the addresses sent on the returned
    /// sender (one message, one answer), or, once the sender is dropped, with an error (which
    /// nobody should be left to see). Take [`pool_to_myself`] first.
    pub(crate) fn held<S: AsRef<str>>(hosts: &[S]) -> (Receiver<()>, Sender<Vec<SocketAddr>>) {
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let (release, released) = crossbeam_channel::unbounded::<Vec<SocketAddr>>();
        for host in hosts {
            let (entered_tx, released) = (entered_tx.clone(), released.clone());
            answer(host.as_ref(), move |_| {
                let _ = entered_tx.send(());
                released.recv().map_err(|_| io::ErrorKind::TimedOut.into())
            });
        }
        (entered, release)
    }

    /// The tests that hold lookups in the process's one pool run one at a time, so each
    /// finds the pool's threads free.
    pub(crate) fn pool_to_myself() -> MutexGuard<'static, ()> {
        static POOL_TESTS: Mutex<()> = Mutex::new(());
        super::lock(&POOL_TESTS)
    }
}

#[cfg(test)]
mod tests;
