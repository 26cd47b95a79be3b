//! See [`braid_fuzz::checks::run_document_reader`].
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| braid_fuzz::checks::run_document_reader(text));
