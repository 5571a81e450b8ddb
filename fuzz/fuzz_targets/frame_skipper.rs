#![no_main]
//! See `syncws::fuzzing::frame_skipper` (src/fuzzing/) for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| syncws::fuzzing::frame_skipper(data));
