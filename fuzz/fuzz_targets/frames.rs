#![no_main]
//! See `rslirp_fuzz_harness::frames` for what the bytes mean.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rslirp_fuzz_harness::frames::run(data));
