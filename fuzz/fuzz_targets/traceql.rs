//! Fuzz target: TraceQL parsing, static checks and canonical rendering.
#![no_main]

// Any single allocation over 256 MiB is a bug: sizes must not come from input unchecked.
#[global_allocator]
static ALLOC: vivace::fuzzing::CappedAlloc = vivace::fuzzing::CappedAlloc::new(256 << 20);

libfuzzer_sys::fuzz_target!(|data: &[u8]| vivace::fuzzing::traceql(data));
