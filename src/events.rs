//! What both halves share for reporting: Kubernetes Events with bounded notes, and static categories for
//! API errors (metric label values and log fields, never unbounded strings).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

use crate::metrics::Metrics;

/// Publishes a Warning Event; a failure is logged and counted (`reconcile_errors_total{category="event"}`),
/// never fatal: the label or finding it reports on stands without it.
pub async fn publish_warning(
    recorder: &Recorder,
    metrics: &Metrics,
    reference: &ObjectReference,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        note: Some(truncate_note(note)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, reference).await {
        metrics.reconcile_errors.with_label_values(&["event"]).inc();
        tracing::warn!(
            kind = reference.kind.as_deref().unwrap_or_default(),
            name = reference.name.as_deref().unwrap_or_default(),
            reason,
            error = %err,
            "cannot publish event"
        );
    }
}

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
        kube::Error::Api(status) => match status.code {
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            422 => "invalid",
            429 => "throttled",
            500..=599 => "server_error",
            _ => "api_other",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => "unreachable",
        _ => "client",
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
    }
}
