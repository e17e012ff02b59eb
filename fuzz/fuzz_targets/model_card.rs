#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| normgate::fuzz::model_card(data));
