//! Reporting helpers every loop shares: Event notes bounded to what the API server accepts, and static
//! categories for API errors (metric label values and log fields, never unbounded strings). Publishing
//! itself is `Shared::publish`.

/// The API server refuses Event notes over 1 kB.
pub const MAX_NOTE_BYTES: usize = 1024;

pub fn truncate_note(mut text: String) -> String {
    if text.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Static categories for API errors.
pub fn api_error_category(err: &kube::Error) -> &'static str {
    match err {
        kube::Error::Api(status) => status_category(status.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) => "unreachable",
        _ => "client",
    }
}

/// Whether an API error of this category may pass by itself (throttled, unreachable, a server error), so
/// the same read is worth trying again; the others (forbidden, not found, invalid) stay until someone acts.
pub fn may_pass(category: &str) -> bool {
    matches!(category, "throttled" | "unreachable" | "server_error")
}

fn status_category(code: u16) -> &'static str {
    match code {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        410 => "expired",
        422 => "invalid",
        429 => "throttled",
        500..=599 => "server_error",
        _ => "api_other",
    }
}

/// Static categories for watch errors: the API error's, `expired` for a resourceVersion that is too old
/// (410 Gone: the watch re-lists).
pub fn watch_error_category(err: &kube::runtime::watcher::Error) -> &'static str {
    use kube::runtime::watcher::Error;
    match err {
        Error::InitialListFailed(e) | Error::WatchStartFailed(e) | Error::WatchFailed(e) => {
            api_error_category(e)
        }
        Error::WatchError(status) => status_category(status.code),
        Error::NoResourceVersion => "client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_char_boundaries() {
        // 1021 bytes would split a two-byte "é", so the cut falls at 1020, then "..." is added.
        assert_eq!(truncate_note("é".repeat(600)).len(), 1023);
        assert_eq!(truncate_note("short".into()), "short");
    }

    #[test]
    fn categories_are_static() {
        let status = |code| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "y").with_code(code),
            ))
        };
        assert_eq!(api_error_category(&status(403)), "forbidden");
        assert_eq!(api_error_category(&status(429)), "throttled");
        assert_eq!(api_error_category(&status(503)), "server_error");
        assert_eq!(api_error_category(&status(418)), "api_other");
        let gone = kube::runtime::watcher::Error::WatchError(Box::new(
            kube::core::Status::failure("too old resource version", "Expired").with_code(410),
        ));
        assert_eq!(watch_error_category(&gone), "expired");
    }
}
