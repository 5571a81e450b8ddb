#![no_main]
//! See `syncws::fuzzing::http_head` (src/fuzzing/) for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| syncws::fuzzing::http_head(data));
