#![no_main]
//! See `rslirp_fuzz_harness::api` for what the bytes mean.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rslirp_fuzz_harness::api::run(data));
