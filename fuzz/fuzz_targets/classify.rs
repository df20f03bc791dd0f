#![no_main]
//! The classifier must never panic on any message, and must agree with itself.

use libfuzzer_sys::fuzz_target;
use osbuild_controller::core::mismatch::classify;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let answer = classify(&text);
    assert_eq!(answer.os_mismatch, answer.variant.is_some());
});
