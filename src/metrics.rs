//! Per-connection counters a user can read at any time from any thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters for one connection, shared with the application (`client.metrics()`,
/// [`Context::metrics`](crate::Context::metrics)). Every field is a relaxed atomic written only
/// by the thread that drives the connection: no locks and no locked instructions, cheap enough
/// to leave on. Reads from other threads are eventually consistent, not a snapshot across
/// fields.
///
/// ```no_run
/// use std::time::Duration;
/// use syncws::{Config, ThreadedClient};
///
/// let client = ThreadedClient::connect("ws://127.0.0.1:9001", &Config::default())?;
/// let metrics = client.metrics(); // an Arc: keep it on a monitoring thread
/// std::thread::spawn(move || loop {
///     std::thread::sleep(Duration::from_secs(10));
///     println!(
///         "in {} out {} queued {} B rtt {:?} reconnects {}",
///         metrics.messages_received(),
///         metrics.messages_sent(),
///         metrics.queued_bytes(),
///         metrics.last_rtt(),
///         metrics.reconnects(),
///     );
/// });
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Metrics {
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    frames_queued: AtomicU64,
    queued_bytes: AtomicU64,
    reconnects: AtomicU64,
    last_rtt_ns: AtomicU64,
    compressed_in: AtomicU64,
    compressed_out: AtomicU64,
    unsent: AtomicU64,
}

impl Metrics {
    /// Data messages (text and binary) accepted for sending.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Ordering::Relaxed)
    }
    /// Payload bytes of the data messages accepted for sending.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }
    /// Data messages (text and binary) delivered to the application.
    pub fn messages_received(&self) -> u64 {
        self.messages_received.load(Ordering::Relaxed)
    }
    /// Payload bytes of the data messages delivered to the application.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }
    /// Frames that met a full socket and had to wait in the outgoing queue (each once).
    pub fn frames_queued(&self) -> u64 {
        self.frames_queued.load(Ordering::Relaxed)
    }
    /// Bytes queued for the socket right now, framed: what a peer that reads slowly has not
    /// taken yet (bounded by
    /// [`ConfigBuilder::max_queued_bytes`](crate::ConfigBuilder::max_queued_bytes) for data).
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }
    /// Successful reconnections (see [`ConfigBuilder::reconnect`](crate::ConfigBuilder::reconnect)).
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    /// The last round-trip time measured from a ping to its pong, if any was measured.
    pub fn last_rtt(&self) -> Option<Duration> {
        match self.last_rtt_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Payload bytes of the messages sent compressed (permessage-deflate), before compression.
    pub fn compression_input_bytes(&self) -> u64 {
        self.compressed_in.load(Ordering::Relaxed)
    }
    /// What those messages' payloads came to after compression: with
    /// [`compression_input_bytes`](Self::compression_input_bytes), the compression ratio.
    pub fn compression_output_bytes(&self) -> u64 {
        self.compressed_out.load(Ordering::Relaxed)
    }

    /// Data messages accepted for sending that a connection's end left in its queue, never
    /// handed to the socket (each end also reports them as [`Error::Unsent`](crate::Error::Unsent)),
    /// and not sent again on a later connection.
    pub fn messages_unsent(&self) -> u64 {
        self.unsent.load(Ordering::Relaxed)
    }

    pub(crate) fn unsent(&self, messages: usize) {
        bump(&self.unsent, messages as u64);
    }

    pub(crate) fn sent(&self, bytes: usize) {
        bump(&self.messages_sent, 1);
        bump(&self.bytes_sent, bytes as u64);
    }
    pub(crate) fn received(&self, bytes: usize) {
        bump(&self.messages_received, 1);
        bump(&self.bytes_received, bytes as u64);
    }
    pub(crate) fn compressed(&self, before: usize, after: usize) {
        bump(&self.compressed_in, before as u64);
        bump(&self.compressed_out, after as u64);
    }
    pub(crate) fn queued(&self) {
        bump(&self.frames_queued, 1);
    }
    pub(crate) fn set_queued_bytes(&self, bytes: usize) {
        self.queued_bytes.store(bytes as u64, Ordering::Relaxed);
    }
    pub(crate) fn reconnected(&self) {
        bump(&self.reconnects, 1);
    }
    pub(crate) fn rtt(&self, rtt: Duration) {
        // A zero stays distinguishable from "not measured".
        let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.last_rtt_ns.store(ns, Ordering::Relaxed);
    }
}

/// Add to a counter that only the driving thread writes: a plain load and store, which on x86
/// avoids the locked read-modify-write of `fetch_add` (four per echoed message otherwise).
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}
