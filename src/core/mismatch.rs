//! Recognises the Windows container OS-version mismatch failure in a runtime message (DOMAIN.md §4).
//!
//! The failure reaches Kubernetes in several wordings, depending on the runtime and its era, and the text
//! arrives line-wrapped (sometimes mid-word), truncated, quoted inside JSON or behind kubelet prefixes. We
//! therefore compare a folded form of the message: lowercase, with every whitespace, quote and backslash
//! escape removed, against the folded key phrases. Look-alikes (other HCS codes, network and registry
//! errors) share words but never these phrases.
//!
//! The same root cause also shows before a container exists (DOMAIN.md §4): at pull time, an image index
//! with no entry the host's build can run, and Docker's own version check. Those are variants of their own.
//! containerd's pull-time `no match for platform in manifest` names no OS or version (a Linux-only image
//! on a Windows node says the same), so it is not classified here: see [`is_ambiguous_platform_error`].

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
    /// Pull time: "no matching manifest for windows/amd64 10.0.17763 in the manifest list entries" (Docker;
    /// also the sandbox's pause image inside "failed pulling image ..."): the image index has no entry this
    /// host's build can run. The pod shows `ErrImagePull`, then `ImagePullBackOff`.
    #[serde(rename = "pull-no-matching-manifest")]
    PullNoMatchingManifest,
    /// Docker's version check: "a Windows version 10.0.20348-based image is incompatible with a 10.0.17763
    /// host".
    #[serde(rename = "docker-version-check")]
    DockerVersionCheck,
    /// containerd's pull-time "no match for platform in manifest: not found", when the image's platforms,
    /// read from its registry, have Windows entries none of which the host runs. Never from [`classify`]
    /// alone: the message names no OS (a Linux-only image says the same), so only the controller, which
    /// reads the image, gives this variant.
    #[serde(rename = "pull-no-match-for-platform")]
    PullNoMatchForPlatform,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Hcs0xc0370101 => "hcs-0xc0370101",
            Variant::Hcsshim => "hcsshim",
            Variant::Containerd => "containerd",
            Variant::PullNoMatchingManifest => "pull-no-matching-manifest",
            Variant::DockerVersionCheck => "docker-version-check",
            Variant::PullNoMatchForPlatform => "pull-no-match-for-platform",
        }
    }

    /// Whether the failure happens before a container exists (the image cannot even be pulled or created):
    /// the pod then shows `ErrImagePull`/`ImagePullBackOff` rather than a crash loop.
    pub fn is_pull_time(self) -> bool {
        matches!(
            self,
            Variant::PullNoMatchingManifest
                | Variant::DockerVersionCheck
                | Variant::PullNoMatchForPlatform
        )
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

/// Docker's pull-time platform error for a Windows host. Only `windows/` hosts: the same words for a Linux
/// host are another failure.
const NO_MATCHING_MANIFEST_PHRASE: &str = "nomatchingmanifestforwindows/";
/// Docker's version check, both halves: "a Windows version X-based image is incompatible with a Y host".
const VERSION_CHECK_PHRASES: [&str; 2] = ["awindowsversion", "-basedimageisincompatiblewitha"];
/// containerd's pull-time platform error: names no OS, so it is ambiguous on its own.
const AMBIGUOUS_PLATFORM_PHRASE: &str = "nomatchforplatforminmanifest";

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
    if folded.contains(NO_MATCHING_MANIFEST_PHRASE) {
        return Classification::found(Variant::PullNoMatchingManifest);
    }
    if VERSION_CHECK_PHRASES.iter().all(|p| folded.contains(p)) {
        return Classification::found(Variant::DockerVersionCheck);
    }
    Classification::NONE
}

/// containerd's `no match for platform in manifest`: the mismatch only if the image has Windows entries,
/// none of which the host runs; a Linux-only image says the same. The caller decides with the image's
/// platforms from its registry (the pod detector: `pods::ambiguous`), and calls it
/// [`Variant::PullNoMatchForPlatform`].
pub fn is_ambiguous_platform_error(message: &str) -> bool {
    fold(message).contains(AMBIGUOUS_PLATFORM_PHRASE)
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
    fn pull_time_forms_are_variants_of_their_own() {
        let pull = "Failed to pull image \"mcr.microsoft.com/windows/servercore:ltsc2022\": rpc error: code = Unknown desc = Error response from daemon: no matching manifest for windows/amd64 10.0.17763 in the manifest list entries";
        assert_eq!(
            classify(pull).variant,
            Some(Variant::PullNoMatchingManifest)
        );
        let check =
            "a Windows version 10.0.20348-based image is incompatible with a 10.0.17763 host";
        assert_eq!(classify(check).variant, Some(Variant::DockerVersionCheck));
        assert!(
            Variant::PullNoMatchingManifest.is_pull_time() && !Variant::Containerd.is_pull_time()
        );
        let ambiguous =
            "failed to pull and unpack image \"x\": no match for platform in manifest: not found";
        assert_eq!(classify(ambiguous), Classification::NONE, "ambiguous alone");
        assert!(is_ambiguous_platform_error(ambiguous));
        assert!(!is_ambiguous_platform_error(pull));
    }

    #[test]
    fn look_alikes_are_not_mismatches() {
        for message in [
            "",
            "The operating system of the container",
            "failure in a Windows system call: The virtual machine or container exited unexpectedly. (0xc0370106)",
            "no matching manifest for linux/arm64/v8 in the manifest list entries",
            "a Windows version 10.0.20348-based",
            "no match for platform in manifest: not found",
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
