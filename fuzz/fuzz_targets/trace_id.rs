//! Fuzz target: trace-ID parsing from URLs and query parameters.
#![no_main]

// Any single allocation over 256 MiB is a bug: sizes must not come from input unchecked.
#[global_allocator]
static ALLOC: vivace::fuzzing::CappedAlloc = vivace::fuzzing::CappedAlloc::new(256 << 20);

libfuzzer_sys::fuzz_target!(|data: &[u8]| vivace::fuzzing::trace_id(data));
