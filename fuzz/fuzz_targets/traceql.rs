#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vivace::fuzzing::traceql(data));
