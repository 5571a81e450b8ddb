#![no_main]
//! See `syncws::fuzzing::inflate` (src/fuzzing/) for what the input means and what is checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| syncws::fuzzing::inflate(data));
