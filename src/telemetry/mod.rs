//! Logs and traces: `tracing` with an `EnvFilter` (`RUST_LOG`), pretty or JSON output
//! (`LOG_FORMAT`), and an OpenTelemetry layer exporting OTLP/HTTP when the standard `OTEL_*`
//! variables name an endpoint (no export otherwise).
//!
//! Trace context crosses replicas inside bus envelopes as a W3C `traceparent`
//! ([`current_traceparent`] on the publishing side, [`span_from_traceparent`] on the
//! delivering side), so one trace follows a message from acceptance to every delivery.
//! Nothing here records tokens or passwords: request spans carry the path and a query string
//! with `token` redacted; `Authorization` is marked sensitive.
//!
//! At the bottom of the crate: imports nothing of it; anyone may import it.

pub mod load;
pub mod metrics;

use std::{collections::HashMap, time::Duration};

use axum::{body::Body, extract::MatchedPath, http::Request, response::Response};
use opentelemetry::{propagation::TextMapPropagator, trace::TracerProvider as _};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Whether spans are exported. Per-message spans (commit, publish, delivery) are only created
/// when they are, so the hot path pays nothing for tracing that nobody reads.
static TRACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn tracing_enabled() -> bool {
    TRACING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Wall-clock time in microseconds since the epoch (publish stamps, fan-out latency).
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Flushes and shuts the exporter down when dropped (end of `main`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

fn otel_enabled() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
        && std::env::var("OTEL_SDK_DISABLED").map_or(true, |v| v != "true")
}

/// Install the global subscriber. Call once, from `main`.
///
/// # Errors
/// If the OTLP exporter cannot be built from the `OTEL_*` variables.
pub fn init(log_format: &str) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = if otel_enabled() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        // The default detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; fill in
        // what they leave unset.
        let detected = opentelemetry_sdk::Resource::builder().build();
        let has = |key: &'static str| {
            detected
                .get(&opentelemetry::Key::from_static_str(key))
                .is_some()
        };
        let mut builder = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err()
            && !std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="))
        {
            builder = builder.with_service_name("chat-server");
        }
        if !has("service.instance.id") {
            builder = builder.with_attribute(opentelemetry::KeyValue::new(
                "service.instance.id",
                uuid::Uuid::new_v4().to_string(),
            ));
        }
        TRACING.store(true, std::sync::atomic::Ordering::Release);
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(builder.build())
                .build(),
        )
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Traces have their own filter: `RUST_LOG=warn` quiets the logs, not the traces. The
    // service's own spans (requests, sockets, commit, publish, delivery) are at `info`.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("chat-server"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("chat", tracing::Level::INFO)
                    .with_target("tower_http", tracing::Level::INFO),
            )
    });
    let fmt = if log_format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(fmt.with_filter(filter))
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The W3C `traceparent` of the current span, if it is being traced.
pub fn current_traceparent() -> Option<String> {
    if !tracing_enabled() {
        return None;
    }
    let cx = Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// A span whose parent is the remote context in `traceparent` (a message delivery).
pub fn span_from_traceparent(span: Span, traceparent: Option<&str>) -> Span {
    if let Some(tp) = traceparent {
        let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(cx);
    }
    span
}

/// The URI's query with the value of `token` (and any `*password*`) replaced. Names are
/// compared after percent-decoding, as the query extractor decodes them: `%74oken` is `token`.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let (raw_key, _) = pair.split_once('=').unwrap_or((pair, ""));
            let key = form_urlencoded::parse(raw_key.as_bytes())
                .next()
                .map(|(k, _)| k.to_ascii_lowercase())
                .unwrap_or_default();
            if key == "token" || key.contains("password") {
                format!("{raw_key}=[redacted]")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The per-request span: method, route template, path, redacted query, request id. Joins an
/// incoming W3C trace when the caller sent one.
pub fn http_span(req: &Request<Body>) -> Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let query = req.uri().query().map(redact_query).unwrap_or_default();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{} {}", req.method(), route),
        http.method = %req.method(),
        http.route = %route,
        url.path = %req.uri().path(),
        url.query = %query,
        request_id = %request_id,
        http.status_code = tracing::field::Empty,
    );
    let carrier: HashMap<String, String> = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(|v| HashMap::from([("traceparent".to_owned(), v.to_owned())]))
        .unwrap_or_default();
    if !carrier.is_empty() {
        let cx = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(cx);
    }
    span
}

pub fn on_response(res: &Response, latency: Duration, span: &Span) {
    span.record("http.status_code", res.status().as_u16());
    tracing::debug!(
        status = res.status().as_u16(),
        latency_ms = latency.as_millis(),
        "response"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_tokens_in_queries() {
        assert_eq!(
            super::redact_query("token=abc.def&since_seq=3"),
            "token=[redacted]&since_seq=3"
        );
        assert_eq!(super::redact_query("a=1&TOKEN=x"), "a=1&TOKEN=[redacted]");
        // Percent-encoded names are what the query extractor decodes: redacted too.
        assert_eq!(
            super::redact_query("%74oken=abc&x=1"),
            "%74oken=[redacted]&x=1"
        );
        assert_eq!(super::redact_query("to%6Ben"), "to%6Ben=[redacted]");
        assert_eq!(
            super::redact_query("new_pass%77ord=p"),
            "new_pass%77ord=[redacted]"
        );
    }
}
