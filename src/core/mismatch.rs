//! Recognises the Windows container OS-version mismatch failure in a runtime message (DOMAIN.md §4).
//!
//! The failure reaches Kubernetes in several wordings, depending on the runtime and its era, and the text
//! arrives line-wrapped (sometimes mid-word), truncated, quoted inside JSON or behind kubelet prefixes. We
//! therefore compare a folded form of the message: lowercase, with every whitespace, quote and backslash
//! escape removed, against the folded key phrases. Look-alikes (other HCS codes, pull-time platform errors)
//! share words but never these phrases.

use std::fmt;

/// Which wording of the failure a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Variant {
    /// Docker and early HCS: "The operating system of the container does not match the operating system
    /// of the host. (0xc0370101)".
    #[serde(rename = "hcs-0xc0370101")]
    Hcs0xc0370101,
    /// Docker 18.09+ through hcsshim: "CreateComputeSystem <id>: The container operating system does not
    /// match the host operating system."
    #[serde(rename = "hcsshim")]
    Hcsshim,
    /// containerd: the hcsshim wording wrapped in "failed to create containerd task: failed to create shim
    /// task: hcs::CreateComputeSystem …".
    #[serde(rename = "containerd")]
    Containerd,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Hcs0xc0370101 => "hcs-0xc0370101",
            Variant::Hcsshim => "hcsshim",
            Variant::Containerd => "containerd",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The classifier's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Classification {
    pub os_mismatch: bool,
    pub variant: Option<Variant>,
}

impl Classification {
    const NONE: Self = Self {
        os_mismatch: false,
        variant: None,
    };
    fn found(variant: Variant) -> Self {
        Self {
            os_mismatch: true,
            variant: Some(variant),
        }
    }
}

// Folded key phrases. Each stops at "does not match": a truncated message still carries that much more
// often than the whole sentence, and no look-alike we know of contains it.
const LEGACY_PHRASE: &str = "theoperatingsystemofthecontainerdoesnotmatch";
const HCSSHIM_PHRASE: &str = "thecontaineroperatingsystemdoesnotmatch";
/// HCS_E_IMAGE_MISMATCH as an NTSTATUS and as an HRESULT. The code is language-neutral, so it also catches
/// messages from hosts that report errors in another language.
const STATUS_CODES: [&str; 2] = ["0xc0370101", "0x80370101"];
/// Markers that the hcsshim wording came through containerd (task or sandbox creation; older releases say
/// "failed to create shim"). Not `hcs::CreateComputeSystem`: Docker prints that prefix too.
const CONTAINERD_MARKERS: [&str; 2] = ["containerd", "failedtocreateshim"];

/// Messages longer than this are cut before folding; the key phrases sit near the start of real messages,
/// ahead of the long JSON "extra info" tails.
const MAX_SCANNED_BYTES: usize = 64 * 1024;

/// Classifies a container or sandbox failure message.
pub fn classify(message: &str) -> Classification {
    let folded = fold(message);
    if folded.contains(HCSSHIM_PHRASE) {
        if CONTAINERD_MARKERS.iter().any(|m| folded.contains(m)) {
            return Classification::found(Variant::Containerd);
        }
        return Classification::found(Variant::Hcsshim);
    }
    if folded.contains(LEGACY_PHRASE) || STATUS_CODES.iter().any(|c| folded.contains(c)) {
        return Classification::found(Variant::Hcs0xc0370101);
    }
    Classification::NONE
}

/// Lowercases and drops whitespace, quotes, backslashes and the letter of backslash escapes (`\n`, `\t`,
/// `\r`, also when escaped again as `\\n`), so wrapping and JSON quoting no longer matter.
fn fold(message: &str) -> String {
    let message = truncate_at_char_boundary(message, MAX_SCANNED_BYTES);
    let mut folded = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            while chars.peek() == Some(&'\\') {
                chars.next();
            }
            if matches!(chars.peek(), Some('n' | 'r' | 't')) {
                chars.next();
            }
            continue;
        }
        if c.is_whitespace() || c == '"' || c == '\'' {
            continue;
        }
        folded.extend(c.to_lowercase());
    }
    folded
}

fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEGACY: &str = "container b81ed896222eb87906ccab1c3dd2fc49324eafa798438f7979b87b210906f839 encountered an error during CreateContainer: failure in a Windows system call: The operating system of the container does not match the operating system of the host. (0xc0370101)";
    const CONTAINERD: &str = "failed to create containerd task: failed to create shim task: hcs::CreateComputeSystem 3f1a: The container operating system does not match the host operating system.: unknown";

    #[test]
    fn wordings() {
        assert_eq!(classify(LEGACY).variant, Some(Variant::Hcs0xc0370101));
        assert_eq!(classify(CONTAINERD).variant, Some(Variant::Containerd));
        assert_eq!(
            classify("hcsshim::CreateComputeSystem abc: The container operating system does not match the host operating system.")
                .variant,
            Some(Variant::Hcsshim)
        );
        assert_eq!(
            classify("CreateComputeSystem abc: The container operating system does not match the host operating system.")
                .variant,
            Some(Variant::Hcsshim)
        );
    }

    #[test]
    fn wrapped_quoted_and_truncated() {
        let wrapped = "failure in a Windows system call: The operating system of the cont\nainer does not\r\n match the operating system of the host.";
        assert!(classify(wrapped).os_mismatch);
        let json = serde_json::to_string(&serde_json::to_string(CONTAINERD).unwrap()).unwrap();
        assert_eq!(classify(&json).variant, Some(Variant::Containerd));
        let truncated = &LEGACY[..LEGACY.find("the operating system of the host").unwrap()];
        assert!(classify(truncated).os_mismatch);
        assert!(classify("Error: FAILURE IN A WINDOWS SYSTEM CALL: ... (0xC0370101)").os_mismatch);
    }

    #[test]
    fn look_alikes_are_not_mismatches() {
        for message in [
            "",
            "The operating system of the container",
            "failure in a Windows system call: The virtual machine or container exited unexpectedly. (0xc0370106)",
            "no matching manifest for windows/amd64 10.0.17763 in the manifest list entries",
            "a Windows version 10.0.20348-based image is incompatible with a 10.0.17763 host",
            "The container operating system matches the host operating system.",
        ] {
            assert_eq!(classify(message), Classification::NONE, "{message}");
        }
    }

    #[test]
    fn huge_input_is_cut_not_scanned_whole() {
        let mut message = "x".repeat(MAX_SCANNED_BYTES);
        message.push_str(LEGACY);
        assert!(!classify(&message).os_mismatch);
        let mut multibyte = "é".repeat(MAX_SCANNED_BYTES);
        multibyte.push_str(LEGACY);
        assert!(!classify(&multibyte).os_mismatch);
    }
}
