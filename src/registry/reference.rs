//! Image references (`[domain[:port]/]path[:tag][@digest]`), parsed to the same `oci_client::Reference` that
//! `Reference::from_str` returns, without its regular expression.
//!
//! oci-spec's parser matches the distribution grammar with one regex whose `[\w][\w.-]{0,127}` tag part
//! (Unicode classes, bounded repetition) compiles to a ~15 MB automaton on the first image read, and the
//! process keeps most of it: heaptrack showed it as the largest allocation of `osbuild-controller image`, and
//! it added ~18 MiB to the controller's resident memory the first time a gated pod was placed
//! (docs/benchmarks.md). The grammar itself is small; this follows it rule by rule (distribution's
//! `reference/regexp.go` and `normalize.go`), and a property test checks it against oci-spec's parser.

use oci_client::Reference;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library";
const DEFAULT_TAG: &str = "latest";
/// Longest repository name (after normalisation) the distribution spec allows.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Parses an image reference; the error says what is wrong with it.
pub fn parse(image: &str) -> Result<Reference, String> {
    if image.is_empty() {
        return Err("repository name must have at least one component".into());
    }
    let invalid = || "invalid reference format".to_owned();
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    // A tag follows the last ':' that has no '/' after it (a ':' before a '/' is the domain's port).
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if !valid_name(name) || !tag.is_none_or(valid_tag) || !digest.is_none_or(valid_digest_format) {
        return Err(invalid());
    }
    let (domain, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(format!(
            "repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
        ));
    }
    if let Some(digest) = digest {
        check_digest_length(digest)?;
    }
    let (tag, digest) = (tag.map(str::to_owned), digest.map(str::to_owned));
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(domain, repository, tag, digest)
        }
        (None, Some(digest)) => Reference::with_digest(domain, repository, digest),
        (tag, None) => {
            Reference::with_tag(domain, repository, tag.unwrap_or(DEFAULT_TAG.to_owned()))
        }
    })
}

/// `[domain "/"] path-component ("/" path-component)*`: the first component may be a domain instead.
fn valid_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let Some(first) = parts.next() else {
        return false;
    };
    let rest: Vec<&str> = parts.collect();
    let rest_valid = rest.iter().all(|p| valid_path_component(p));
    rest_valid && (valid_path_component(first) || (!rest.is_empty() && valid_domain(first)))
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*`, separator `.`, `_`, `__` or any run of `-`.
fn valid_path_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &part[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `domain-component ("." domain-component)* [":" port]`, a component `[a-zA-Z0-9]` or
/// `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`, the port `[0-9]+`.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let component = |c: &str| {
        let b = c.as_bytes();
        match (b.first(), b.last()) {
            (Some(f), Some(l)) => {
                f.is_ascii_alphanumeric()
                    && l.is_ascii_alphanumeric()
                    && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
            }
            _ => false,
        }
    };
    host.split('.').all(component)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}` (`\w`: letters, digits, marks and connector punctuation such as `_`).
fn valid_tag(tag: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    chars.next().is_some_and(word)
        && tag.chars().count() <= 128
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// `algorithm ":" hex{32,}`, the algorithm `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*`.
fn valid_digest_format(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let mut b = part.bytes();
        b.next().is_some_and(|f| f.is_ascii_alphabetic()) && b.all(|x| x.is_ascii_alphanumeric())
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_digest_length(digest: &str) -> Result<(), String> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or_else(|| "invalid checksum digest format".to_owned())?;
    let expected = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm".into()),
    };
    if hex.len() == expected {
        Ok(())
    } else {
        Err("invalid checksum digest length".into())
    }
}

/// distribution's `splitDomain`: the first component is the domain when it has a '.' or a ':' or is
/// `localhost`; otherwise Docker Hub, where one-component names are official images (`library/`).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_owned(), right.to_owned())
        }
        _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.clone_into(&mut domain);
    }
    if domain == DEFAULT_DOMAIN && !rest.contains('/') {
        rest = format!("{OFFICIAL_REPO_PREFIX}/{rest}");
    }
    (domain, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same_as_oci_spec(input: &str) {
        let ours = parse(input);
        let theirs: Result<Reference, _> = input.parse();
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.whole(), b.whole(), "{input:?}");
                assert_eq!(a.registry(), b.registry(), "{input:?}");
                assert_eq!(a.repository(), b.repository(), "{input:?}");
                assert_eq!(a.tag(), b.tag(), "{input:?}");
                assert_eq!(a.digest(), b.digest(), "{input:?}");
            }
            (Err(_), Err(_)) => {}
            _ => panic!("{input:?}: ours {ours:?}, oci-spec {theirs:?}"),
        }
    }

    #[test]
    fn known_references() {
        // Shapes from Kubernetes pod specs, oci-spec's own cases and the test registry (tests/registry).
        for input in [
            "busybox",
            "mcr.microsoft.com/windows/servercore:ltsc2022",
            "mcr.microsoft.com/windows/nanoserver:10.0.17763.6293",
            "127.0.0.1:5000/windows/multi",
            "localhost:5000/hello-wasm:v1",
            "localhost/foo",
            "index.docker.io/library/busybox:latest",
            "docker.io/foo/bar:1.2@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "test.com:tag",
            "test.com:5000",
            "lowercase:Uppercase",
            "Uppercase:tag",
            "foo_bar.com:8080",
            "foo/foo_bar.com:8080",
            "opensuse/leap:15.3",
            "a--b/c__d/e.f:t",
            "a___b",
            "registry.example.com:443/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "app@sha512:abc",
            "app@md5:0123456789abcdef0123456789abcdef",
            "app:",
            ":tag",
            "/app",
            "app/",
            "host:port/app",
            "-app",
            "ex-ample.com/app",
            "-example.com/app",
            "app:tag@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a@b@c",
            "",
            " app",
        ] {
            same_as_oci_spec(input);
        }
        let long = format!("{}/app", "a".repeat(300));
        same_as_oci_spec(&long);
    }

    proptest! {
        #[test]
        fn agrees_with_oci_spec_on_reference_shapes(
            input in "((localhost|[a-zA-Z0-9-]{1,4}(\\.[a-z0-9-]{1,3})?)(:[0-9]{0,4})?/)?[a-z0-9._-]{1,6}(/[a-zA-Z0-9._-]{1,5}){0,2}(:[a-zA-Z0-9_.-]{0,6})?(@(sha256|sha512|md5)?:?[0-9a-f]{0,2}(0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef)?)?"
        ) {
            same_as_oci_spec(&input);
        }

        #[test]
        fn agrees_with_oci_spec_on_any_ascii(input in "[a-zA-Z0-9._:/@ -]{0,24}") {
            same_as_oci_spec(&input);
        }
    }
}
