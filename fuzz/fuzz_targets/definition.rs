//! See [`braid_fuzz::checks::definition`].
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| braid_fuzz::checks::definition(text));
