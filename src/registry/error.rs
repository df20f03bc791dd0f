//! Why an image could not be read from its registry, in categories stable enough for metrics labels and
//! Event reasons.

use oci_client::errors::{OciDistributionError, OciErrorCode};

/// The category of a registry failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 401/403: no credentials, wrong credentials, or no access to the repository.
    Unauthorized,
    /// 404: no such repository, tag or digest.
    NotFound,
    /// No answer within `--registry-timeout`.
    Timeout,
    /// Connection refused, DNS or TLS failure: the registry could not be talked to.
    Unreachable,
    /// The registry answered with something that is not a usable manifest, index or image config.
    BadManifest,
    /// The image reference itself is not valid.
    BadReference,
    /// 429, 5xx or any other answer the registry should not have given.
    RegistryError,
    /// Our own configuration (e.g. an unreadable `--registry-ca-file`).
    Config,
}

impl ErrorKind {
    /// A fixed, label-safe name: `unauthorized`, `not-found`, `timeout`, `unreachable`, `bad-manifest`,
    /// `bad-reference`, `registry-error`, `config`.
    pub fn category(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not-found",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::BadManifest => "bad-manifest",
            Self::BadReference => "bad-reference",
            Self::RegistryError => "registry-error",
            Self::Config => "config",
        }
    }

    /// Whether trying again later can help (a retry loop stops at the others).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Unreachable | Self::RegistryError
        )
    }
}

/// A registry failure for one image: its category, the image, and what the registry or network said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{image}: {} ({detail})", self.kind.category())]
pub struct RegistryError {
    pub kind: ErrorKind,
    pub image: String,
    pub detail: String,
}

impl RegistryError {
    pub fn new(kind: ErrorKind, image: &str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            image: image.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn category(&self) -> &'static str {
        self.kind.category()
    }

    /// Classifies what oci-client returned.
    pub(crate) fn from_oci(image: &str, err: &OciDistributionError) -> Self {
        use OciDistributionError as E;
        let kind = match err {
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => ErrorKind::Unauthorized,
            E::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .map(|e| match e.code {
                    OciErrorCode::Unauthorized | OciErrorCode::Denied => ErrorKind::Unauthorized,
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound => ErrorKind::NotFound,
                    OciErrorCode::ManifestInvalid | OciErrorCode::ManifestBlobUnknown => {
                        ErrorKind::BadManifest
                    }
                    _ => ErrorKind::RegistryError,
                })
                .next()
                .unwrap_or(ErrorKind::RegistryError),
            E::ServerError { code, .. } => match code {
                401 | 403 => ErrorKind::Unauthorized,
                404 => ErrorKind::NotFound,
                _ => ErrorKind::RegistryError,
            },
            E::RequestError(e) if e.is_timeout() => ErrorKind::Timeout,
            E::RequestError(e) if e.is_connect() || e.is_request() => ErrorKind::Unreachable,
            E::RequestError(_) | E::IoError(_) => ErrorKind::Unreachable,
            E::DigestError(_)
            | E::ManifestParsingError(_)
            | E::VersionedParsingError(_)
            | E::UnsupportedMediaTypeError(_)
            | E::UnsupportedSchemaVersionError(_)
            | E::SpecViolationError(_)
            | E::ManifestEncodingError(_)
            | E::JsonError(_)
            | E::RegistryNoDigestError => ErrorKind::BadManifest,
            E::UrlParseError(_) => ErrorKind::BadReference,
            _ => ErrorKind::RegistryError,
        };
        Self::new(kind, image, error_chain(err))
    }
}

/// An error and its sources on one line (reqwest hides the useful part, e.g. "connection refused").
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_fixed_label_values() {
        let all = [
            ErrorKind::Unauthorized,
            ErrorKind::NotFound,
            ErrorKind::Timeout,
            ErrorKind::Unreachable,
            ErrorKind::BadManifest,
            ErrorKind::BadReference,
            ErrorKind::RegistryError,
            ErrorKind::Config,
        ];
        for kind in all {
            assert!(crate::core::labels::is_valid_label_value(kind.category()));
        }
        let e = RegistryError::new(ErrorKind::NotFound, "r/x:1", "MANIFEST_UNKNOWN");
        assert_eq!(e.to_string(), "r/x:1: not-found (MANIFEST_UNKNOWN)");
        assert!(ErrorKind::Timeout.is_transient() && !ErrorKind::Unauthorized.is_transient());
    }

    #[test]
    fn oci_errors_map_to_categories() {
        let e = OciDistributionError::UnauthorizedError { url: "u".into() };
        assert_eq!(
            RegistryError::from_oci("i", &e).kind,
            ErrorKind::Unauthorized
        );
        let e = OciDistributionError::ServerError {
            code: 404,
            url: "u".into(),
            message: String::new(),
        };
        assert_eq!(RegistryError::from_oci("i", &e).kind, ErrorKind::NotFound);
        let e = OciDistributionError::ServerError {
            code: 503,
            url: "u".into(),
            message: String::new(),
        };
        assert_eq!(
            RegistryError::from_oci("i", &e).kind,
            ErrorKind::RegistryError
        );
        let e = OciDistributionError::ManifestParsingError("eof".into());
        assert_eq!(
            RegistryError::from_oci("i", &e).kind,
            ErrorKind::BadManifest
        );
    }
}
