//! Host name lookups off the caller's thread. The system resolver (`getaddrinfo`, through
//! std's `ToSocketAddrs`) has no non-blocking interface, so a dial hands its lookup to a small
//! pool of threads shared by the whole process and is woken, through the `Wake` it gave, once
//! the answer is in; meanwhile its connection's loop goes on with everything else (its other
//! connections, in a `ClientSet`; commands and stops, in every mode).
//!
//! The pool is started on the first lookup and grows a thread at a time, up to
//! [`POOL_SIZE`]: at most that many lookups run at once in the process, however many
//! connections ask (a set adding 10,000 members by name starts 4 threads, not 10,000), and the
//! others wait their turn in order. Each asker's deadline runs meanwhile (see `dial.rs`), so a
//! resolver that never answers costs a connection its attempt, never the process a thread
//! per connection. A lookup whose asker is gone (its dial ended: a stop, a timeout, a drop)
//! is skipped if it has not started, and its answer dropped if it has.

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

struct Job {
    host: String,
    port: u16,
    slot: Weak<Slot>,
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
    let job = Job {
        host: host.to_owned(),
        port,
        slot: Arc::downgrade(&slot),
    };
    pool().submit(job)?;
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
            threads: Mutex::new(Threads::default()),
        }
    })
}

struct Pool {
    jobs: Sender<Job>,
    /// Every thread takes jobs from here, in order.
    queue: Receiver<Job>,
    threads: Mutex<Threads>,
}

#[derive(Default)]
struct Threads {
    started: usize,
    /// Jobs submitted and not yet finished (waiting or running).
    unfinished: usize,
}

impl Pool {
    /// Queue `job`, starting a thread for it when every thread has a job already and the pool
    /// is not full (a process that looks up one name at a time keeps one thread).
    fn submit(&'static self, job: Job) -> io::Result<()> {
        let mut threads = lock(&self.threads);
        threads.unfinished += 1;
        if threads.unfinished > threads.started && threads.started < POOL_SIZE {
            let spawned = std::thread::Builder::new()
                .name("syncws-dns".into())
                .stack_size(STACK_SIZE)
                .spawn(move || self.work());
            match spawned {
                Ok(_) => threads.started += 1,
                // The threads there are take the job, in turn.
                Err(e) if threads.started > 0 => {
                    tracing::warn!(error = %e, "cannot start another lookup thread")
                }
                Err(e) => {
                    threads.unfinished -= 1;
                    return Err(e);
                }
            }
        }
        // The pool holds `queue` for ever, so the send cannot fail.
        let _ = self.jobs.send(job);
        Ok(())
    }

    /// A thread of the pool: one job after another, for the life of the process (an idle
    /// thread waits in `recv`, at no cost).
    fn work(&self) {
        for job in self.queue.iter() {
            if job.slot.strong_count() > 0 {
                // A panic (none is expected of the system resolver) costs the lookup, not the
                // thread.
                let answer = catch_unwind(AssertUnwindSafe(|| system_lookup(&job.host, job.port)))
                    .unwrap_or_else(|_| Err(io::Error::other("the lookup panicked")));
                // The asker may have gone meanwhile: then the answer is simply dropped.
                if let Some(slot) = job.slot.upgrade() {
                    *lock(&slot.answer) = Some(answer);
                    (slot.wake.0)();
                }
            }
            lock(&self.threads).unfinished -= 1;
        }
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

    /// From now on a lookup of `host` tells the returned receiver that it started, then
    /// answers only when the test drops the returned sender (with an error, which nobody
    /// should be left to see). Take [`pool_to_myself`] first.
    pub(crate) fn held(host: &str) -> (Receiver<()>, Sender<()>) {
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let (release, released) = crossbeam_channel::unbounded::<()>();
        answer(host, move |_| {
            let _ = entered_tx.send(());
            let _ = released.recv();
            Err(io::ErrorKind::TimedOut.into())
        });
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
