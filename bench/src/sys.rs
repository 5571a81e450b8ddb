//! The only unsafe code of the benchmark: two tiny wrappers over libc calls that std does not
//! offer (`getrusage` for CPU time, `poll` on one socket for the echo server).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::time::Duration;

fn cpu_ns(who: libc::c_int) -> u64 {
    let mut ru = MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is writable memory of the size and alignment of `struct rusage`, which is
    // what getrusage(2) fills in; `who` is one of the RUSAGE_* constants. On failure (it cannot
    // fail for these arguments) the zeroed value is used.
    let rc = unsafe { libc::getrusage(who, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: zero-initialised above and (on success) written by the kernel; every bit pattern
    // is a valid `rusage` (plain integers).
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User + system CPU time of the whole process (every thread), in nanoseconds
/// (microsecond resolution).
pub fn process_cpu_ns() -> u64 {
    cpu_ns(libc::RUSAGE_SELF)
}

/// User + system CPU time of the calling thread, in nanoseconds (Linux).
pub fn thread_cpu_ns() -> u64 {
    cpu_ns(libc::RUSAGE_THREAD)
}

/// Wait until `fd` is readable (or, when `want_write`, writable), at most `timeout`.
/// Returns (readable-or-hung-up, writable); both false on timeout.
pub fn poll_one(fd: RawFd, want_write: bool, timeout: Duration) -> io::Result<(bool, bool)> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN | if want_write { libc::POLLOUT } else { 0 },
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is one valid, initialised pollfd on our stack and we pass a count of 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((true, want_write));
        }
        return Err(e);
    }
    let r = pfd.revents;
    Ok((
        r & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0,
        r & (libc::POLLOUT | libc::POLLERR) != 0,
    ))
}
