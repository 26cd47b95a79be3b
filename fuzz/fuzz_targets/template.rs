//! See [`braid_fuzz::checks::template`].
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| braid_fuzz::checks::template(text));
