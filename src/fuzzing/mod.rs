//! Fuzzing entry points: one function per parser of bytes that come from the network, for the
//! targets in `fuzz/` (cargo-fuzz builds the crate with `--cfg fuzzing`, which makes this
//! module public) and for the tests that replay their corpus on stable.
//!
//! Each function feeds its input to the real parser, over an in-memory socket where the parser
//! reads from one (cut into pieces, with "would block" between them, for the resumable ones),
//! and checks properties against a reference written from the RFC, not from our code. A
//! property that fails panics, which is what the fuzzer looks for. The leading bytes of an
//! input are choices (limits, roles, how the bytes arrive); see each function.

mod close;
mod deflate_params;
mod http_head;
mod inflate;
mod input;
mod linger;
mod proxy;
mod upgrade_answer;
mod upgrade_request;

#[cfg(test)]
mod proptests;

pub use close::close;
pub use deflate_params::deflate_params;
pub use http_head::http_head;
pub use inflate::inflate;
pub use linger::frame_skipper;
pub use proxy::{proxy_http, proxy_socks5};
pub use upgrade_answer::upgrade_answer;
pub use upgrade_request::upgrade_request;

/// The checked-in corpus of every target, replayed through the same checks on stable, so that
/// it guards against regressions in the normal test run.
#[cfg(test)]
mod corpus {
    use std::path::Path;

    fn replay(target: &str, check: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            let data = std::fs::read(&path).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its checks", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "{}: empty corpus", dir.display());
    }

    macro_rules! corpus_tests {
        ($($target:ident),* $(,)?) => {
            $(
                #[test]
                fn $target() {
                    replay(stringify!($target), super::$target);
                }
            )*
        };
    }

    corpus_tests!(
        close,
        deflate_params,
        frame_skipper,
        http_head,
        inflate,
        proxy_http,
        proxy_socks5,
        upgrade_answer,
        upgrade_request,
    );
}
