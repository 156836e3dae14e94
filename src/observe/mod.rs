//! What operators read: the access log, Prometheus metrics, diagnostics and tracing.

pub mod access_log;
pub mod diag_log;
pub mod metrics;
pub mod supervise;
#[doc(hidden)]
pub mod telemetry;
