//! The blocking client: runs on the caller's thread until the connection ends.

use crate::command::CommandSender;
use crate::connect::connect;
use crate::driver::Driver;
use crate::handler::Callbacks;
use crate::session::Session;
use crate::{Config, Error, Handler, Handshake, WaitStrategy};

/// A client that runs on the caller's thread and blocks while the socket is quiet.
///
/// It blocks in the OS poll on its socket rather than in `read(2)`, so it keeps reading while a
/// large send drains: a peer that echoes while we write can never deadlock it. Sends happen from
/// the [`Handler`]'s hooks, or from other threads through [`handle`](Self::handle), which can
/// also close or stop it; `read_timeout` makes [`Handler::on_idle`] run when nothing arrives,
/// and `write_timeout` fails a connection whose output stops moving.
///
/// ```no_run
/// use syncws::{BlockingClient, Config, Context, Handler};
///
/// struct Hello;
/// impl Handler for Hello {
///     fn on_activated(&mut self, ctx: &mut Context<'_>) {
///         ctx.send_text("hello").unwrap();
///     }
///     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
///         println!("got {text}");
///         ctx.close(1000, "done").unwrap();
///     }
/// }
///
/// let client = BlockingClient::connect("ws://127.0.0.1:9001", &Config::default())?;
/// client.run(&mut Hello);
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a client does nothing until `run`; dropped unrun it closes its connection (1001)"]
pub struct BlockingClient {
    /// Taken by `run`; still here when the client is dropped unrun.
    driver: Option<Box<Driver>>,
    handle: CommandSender,
}

impl BlockingClient {
    /// Open a connection (TCP, TLS for `wss://`, HTTP upgrade), bounded by the config's timeouts.
    ///
    /// # Errors
    ///
    /// Connect-time [`Error`]s: bad URL or scheme, DNS, refused, TLS, timeouts, rejected
    /// handshake.
    pub fn connect(url: &str, config: &Config) -> Result<Self, Error> {
        let (ws, handshake) = connect(url, config)?;
        let session = Session::new(ws, Some(handshake), config);
        let (driver, handle, _) = Driver::new(session, WaitStrategy::Readiness, config, None)?;
        let driver = driver.redial_to(url, config);
        Ok(BlockingClient {
            driver: Some(driver),
            handle,
        })
    }

    /// This connection's counters; the `Arc` can be read from any thread while it runs.
    pub fn metrics(&self) -> std::sync::Arc<crate::Metrics> {
        self.driver().session.metrics().clone()
    }

    /// The server's handshake response.
    pub fn handshake(&self) -> &Handshake {
        // Client sessions are always built with their handshake.
        self.driver().session.handshake().expect("client handshake")
    }

    /// A cloneable, thread-safe sender of [`Command`](crate::Command)s into this client, for
    /// other threads: to close it or drop it on shutdown (Ctrl-C), or to send. It wakes the
    /// client. Usable before and during [`run`](Self::run); once the connection has ended its
    /// sends fail with the command handed back.
    pub fn handle(&self) -> CommandSender {
        self.handle.clone()
    }

    /// Run until the connection ends, calling `handler`'s hooks on this thread. Returns after
    /// [`Handler::on_quit`].
    pub fn run<H: Handler + ?Sized>(mut self, handler: &mut H) {
        let driver = self.driver.take().expect("run takes the client once");
        // Our own sender must not keep the channel alive past the run.
        drop(self);
        driver.run(&mut Callbacks(handler, None));
    }

    fn driver(&self) -> &Driver {
        // Only `run` takes it, and `run` consumes the client.
        self.driver
            .as_deref()
            .expect("a client not yet run holds its driver")
    }
}

/// Dropped without [`run`](BlockingClient::run): a best-effort Close 1001, and the handle's later
/// sends fail. Commands its handle sent before are not carried out (there is no handler to
/// report them to; they are counted in the log): run the client to have each one carried out
/// or reported.
impl Drop for BlockingClient {
    fn drop(&mut self) {
        if let Some(driver) = &mut self.driver {
            driver.drop_unrun();
        }
    }
}
