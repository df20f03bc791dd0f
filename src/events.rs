//! Reporting helpers every loop shares: Event notes bounded to what the API server accepts, the Event of
//! something that happens once, and static categories for API errors (metric label values and log fields,
//! never unbounded strings). Publishing itself is `Shared::publish`.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{EventType, Reporter};

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

/// The events.k8s.io/v1 Event of something that happens once, observed `now`: in the reference's namespace
/// ("default" for a cluster-scoped object, as kube-runtime's Recorder), named after the object and the time
/// (unique per object: two Events about one object are never published in the same nanosecond), with the
/// reporting instance the process's pod (the controller's name when unknown), and no series.
pub fn one_off_event(
    reporter: &Reporter,
    reference: &ObjectReference,
    event: &kube::runtime::events::Event,
    now: Timestamp,
) -> Event {
    let object = reference.name.as_deref().unwrap_or(&reporter.controller);
    Event {
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone().map(truncate_note),
        event_time: Some(MicroTime(now)),
        regarding: Some(reference.clone()),
        metadata: ObjectMeta {
            namespace: Some(
                reference
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned()),
            ),
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            ..ObjectMeta::default()
        },
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        ..Event::default()
    }
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

    fn pod() -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some("web-0".into()),
            namespace: Some("shop".into()),
            uid: Some("7d3a".into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn a_one_off_event_is_about_the_object_in_its_namespace_with_no_series() {
        let reporter = Reporter {
            controller: "osbuild-controller".into(),
            instance: Some("osbuild-controller-6d8f7-x2x9z".into()),
        };
        let now = Timestamp::from_second(1_764_583_200).unwrap();
        let event = one_off_event(
            &reporter,
            &pod(),
            &kube::runtime::events::Event {
                type_: EventType::Warning,
                reason: "OSVersionMismatch".into(),
                note: Some("é".repeat(600)),
                action: "DetectOSMismatch".into(),
                secondary: None,
            },
            now,
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            event.metadata.name,
            Some(format!("web-0.{:x}", now.as_nanosecond()))
        );
        assert_eq!(event.regarding, Some(pod()));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("OSVersionMismatch"));
        assert_eq!(event.action.as_deref(), Some("DetectOSMismatch"));
        assert_eq!(event.note.map(|n| n.len()), Some(1023), "bounded note");
        assert_eq!(event.event_time, Some(MicroTime(now)));
        assert_eq!(
            event.reporting_instance.as_deref(),
            Some("osbuild-controller-6d8f7-x2x9z")
        );
        assert!(event.series.is_none());
    }

    #[test]
    fn cluster_scoped_events_go_to_default_and_an_unnamed_process_reports_as_the_controller() {
        let reporter = Reporter {
            controller: "osbuild-controller".into(),
            instance: None,
        };
        let node = ObjectReference {
            kind: Some("Node".into()),
            name: Some("win-1".into()),
            ..ObjectReference::default()
        };
        let now = Timestamp::from_second(1_764_583_200).unwrap();
        let event = one_off_event(
            &reporter,
            &node,
            &kube::runtime::events::Event {
                type_: EventType::Normal,
                reason: "R".into(),
                note: Some("n".into()),
                action: "A".into(),
                secondary: None,
            },
            now,
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(
            event.reporting_instance.as_deref(),
            Some("osbuild-controller")
        );
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
