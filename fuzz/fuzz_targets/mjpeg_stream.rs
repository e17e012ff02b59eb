#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| normgate::fuzz::mjpeg_stream(data));
