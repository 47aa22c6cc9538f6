//! Fuzz target: a block's bytes (footer, pages, bloom, index) read by the trace lookup and search paths.
#![no_main]

// Any single allocation over 256 MiB is a bug: sizes must not come from input unchecked.
#[global_allocator]
static ALLOC: vivace::fuzzing::CappedAlloc = vivace::fuzzing::CappedAlloc::new(256 << 20);

libfuzzer_sys::fuzz_target!(
    init: vivace::fuzzing::tolerate_decoder_panics(),
    |data: &[u8]| vivace::fuzzing::block(data)
);
