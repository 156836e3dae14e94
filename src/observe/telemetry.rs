//! Optional OTLP span export (`[telemetry] otlp_endpoint`): one span per request, in the caller's
//! W3C trace, sent over OTLP/HTTP (protobuf) by the opentelemetry SDK's batch processor through
//! tracing-opentelemetry.
//!
//! Off by default, and then free: no span is created on the request path (one relaxed atomic
//! load), and the subscriber has no OpenTelemetry layer at all.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;
use crate::ids::trace::{HexId, TraceContext};

/// The tracing target of request spans; the OpenTelemetry layer sees nothing else.
pub const TARGET: &str = "tollgate::request";

static ON: AtomicBool = AtomicBool::new(false);

/// The exporter's provider: flush it (`shutdown`) before the process exits.
pub type Provider = SdkTracerProvider;

/// Builds the exporter and the tracing layer for `cfg`, and turns request spans on.
pub fn layer<S>(cfg: &TelemetryConfig) -> Result<(impl tracing_subscriber::Layer<S>, Provider), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(cfg.otlp_endpoint.clone())
        .build()
        .map_err(|e| format!("OTLP exporter for {}: {e}", cfg.otlp_endpoint))?;
    // The async-runtime batch processor: the hyper client it exports with needs tokio.
    let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(cfg.service_name.clone()).build())
        .build();
    let tracer = provider.tracer("tollgate");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target() == TARGET));
    ON.store(true, Ordering::Relaxed);
    Ok((layer, provider))
}

/// The span of one request, a child of the caller's span when it sent a valid `traceparent`.
/// Afterwards `trace` names the exported span (its trace id and span id), so the access line
/// and the `traceparent` sent to the platform agree with what the collector receives.
/// `None`, at no cost, when export is off.
pub fn request_span(
    method: &http::Method,
    route: impl FnOnce() -> &'static str,
    trace: &mut TraceContext,
) -> Option<tracing::Span> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    // Named like the access line's route (ids elided), so spans group by endpoint.
    let route = route();
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        tollgate.tenant = tracing::field::Empty,
        tollgate.request_id = tracing::field::Empty,
        tollgate.outcome = tracing::field::Empty,
    );
    if let (Some(parent), Ok(trace_id)) = (trace.parent_id.as_deref(), TraceId::from_hex(&trace.trace_id)) {
        if let Ok(parent_id) = SpanId::from_hex(parent) {
            let remote = SpanContext::new(trace_id, parent_id, TraceFlags::new(trace.flags), true, TraceState::NONE);
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        trace.trace_id = HexId::of_bytes(&sc.trace_id().to_bytes());
        trace.span_id = HexId::of_bytes(&sc.span_id().to_bytes());
        trace.flags = sc.trace_flags().to_u8();
    }
    Some(span)
}
