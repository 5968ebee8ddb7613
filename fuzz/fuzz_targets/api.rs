#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chargetree_fuzz::api_ops::run(data));
