#![no_main]
//! The parser must never panic, and whatever it accepts as Windows must give valid label values.

use libfuzzer_sys::fuzz_target;
use osbuild_controller::core::labels::{LabelKeys, is_valid_label_value, node_labels};
use osbuild_controller::core::version::{KernelVersion, parse_build_revision, parse_kernel_version};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parse_build_revision(text);
    if let Ok(KernelVersion::Windows(parsed)) = parse_kernel_version(text) {
        for value in node_labels(&parsed, &LabelKeys::default()).labels.values() {
            assert!(is_valid_label_value(value), "{value:?} from {text:?}");
        }
    }
});
