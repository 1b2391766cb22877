#![no_main]
// The body is weir_filters::fuzzing::multipart, which CI also replays over the corpus.
libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_filters::fuzzing::multipart(data));
