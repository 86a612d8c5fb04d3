//! Logs and metrics for the one stream operators read.
//!
//! Every module logs through `tracing` to stdout; each request runs in a span carrying the module
//! that serves it and its `request_id` (taken from `X-Request-Id` or generated, and echoed in the
//! response). Work a request hands to another module in-process (an embedding batch, an ingestion
//! job) carries the id along. `log.format = json` prints one JSON object per line, with `module`,
//! `request_id` and (when traces are exported) `trace_id`/`span_id` at its top level.
//!
//! Metrics use the `metrics` facade with a Prometheus recorder; every port serves `/metrics`.
//! Names follow the runbook's queries: `http_requests_total{status}` and
//! `http_request_duration_seconds` (a histogram).

pub mod gauges;
mod json_line;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, Settings, TelemetrySettings};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The installed log filter, changeable at run time, and the level it was built from.
static LOG_FILTER: OnceLock<(FilterHandle, Mutex<String>)> = OnceLock::new();

/// The filter for a `log.level`: the vector engine warns about internals operators cannot act
/// on, so only its errors are kept unless the level names it.
fn filter_for(level: &str) -> Result<EnvFilter, String> {
    let full = if level.contains("qdrant_edge") {
        level.to_string()
    } else {
        format!("{level},qdrant_edge=error")
    };
    EnvFilter::try_new(&full).map_err(|e| format!("invalid log level {level:?}: {e}"))
}

/// The `log.level` in force, when doc-rag installed the logger (not a test harness).
pub fn log_level() -> Option<String> {
    LOG_FILTER
        .get()
        .map(|(_, level)| level.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Why the log level cannot be changed.
#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    #[error("{0}")]
    Invalid(String),
    #[error("the logger of this process is not doc-rag's; its level cannot be changed")]
    NotManaged,
}

/// Changes the log level of this process at once (`PUT /v1/admin/log-level`, `SIGHUP`).
pub fn set_log_level(level: &str) -> Result<(), LogLevelError> {
    const MAX_LEVEL_CHARS: usize = 1024;
    let level = level.trim();
    if level.is_empty() || level.len() > MAX_LEVEL_CHARS {
        return Err(LogLevelError::Invalid(format!(
            "the level must be 1 to {MAX_LEVEL_CHARS} characters, e.g. \"info,doc_rag=debug\""
        )));
    }
    let filter = filter_for(level).map_err(LogLevelError::Invalid)?;
    let (handle, current) = LOG_FILTER.get().ok_or(LogLevelError::NotManaged)?;
    handle
        .reload(filter)
        .map_err(|_| LogLevelError::NotManaged)?;
    *current.lock().unwrap_or_else(|p| p.into_inner()) = level.to_string();
    Ok(())
}

/// The tracer provider exporting spans, when `telemetry.otlp_endpoint` is set.
static TRACER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// The OpenTelemetry layer for `telemetry.otlp_endpoint` (OTLP over HTTP, batched on a thread of
/// its own); `None` without an endpoint, or when the exporter cannot be built (logged).
fn otlp_layer<S>(
    settings: &TelemetrySettings,
) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    if settings.otlp_endpoint.is_empty() {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(settings.otlp_endpoint.clone())
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("telemetry.otlp_endpoint: cannot export traces: {e}");
            return None;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("doc-rag");
    let _ = TRACER.set(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Sends the spans still buffered (at shutdown).
pub fn flush_traces() {
    if let Some(provider) = TRACER.get() {
        let _ = provider.force_flush();
    }
}

/// Installs the global subscriber once; later calls (tests building several apps) are no-ops.
pub fn init_logging(all: &Settings) {
    static INIT: OnceLock<()> = OnceLock::new();
    let settings = &all.log;
    INIT.get_or_init(|| {
        let filter = filter_for(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
        let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
        let registry = tracing_subscriber::registry().with(filter);
        let result = match settings.format {
            LogFormat::Json => registry
                .with(otlp_layer(&all.telemetry))
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        // Every enclosing span in `spans`, and the request's `module` and
                        // `request_id` (and trace ids) on the line itself, even inside a
                        // query's `embed` span.
                        .event_format(json_line::JsonLine::new())
                        .with_writer(std::io::stdout),
                )
                .try_init(),
            LogFormat::Pretty => registry
                .with(otlp_layer(&all.telemetry))
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .with_writer(std::io::stdout),
                )
                .try_init(),
        };
        // A subscriber installed by the embedding program (a test harness) is kept.
        if result.is_ok() {
            let _ = LOG_FILTER.set((handle, Mutex::new(settings.level.clone())));
        }
    });
}

/// Logging for CLI commands that run service code in-process (`doc-rag admin --local`): warnings
/// and errors to stderr, so stdout carries only the command's output.
pub fn init_cli_logging() {
    let _ = tracing_subscriber::registry()
        .with(EnvFilter::new("warn,qdrant_edge=error"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(std::io::stderr),
        )
        .try_init();
}

/// The process-wide Prometheus recorder.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".into()),
                        &[
                            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                            30.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("embedder_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("query_answer_confidence".into()),
                        &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                    )
                })
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); ours then only renders its own.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Counters of rare events start at zero, so they are scraped (and `increase()` in an alert has
/// a series to work on) before the first event. Each label value listed is one the code records.
pub fn register_event_counters() {
    for name in [
        "ingest_worker_restarts_total",
        "ingest_jobs_postponed_total",
        "ingest_uploads_rejected_total",
        "embedder_rejected_total",
        "auth_login_failures_total",
        "auth_logins_total",
        "webhook_worker_restarts_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for outcome in ["delivered", "retrying", "failed", "lease_lost"] {
        metrics::counter!("webhook_deliveries_total", "outcome" => outcome).increment(0);
    }
    for reason in ["failures", "backlog"] {
        metrics::counter!("webhook_subscriptions_disabled_total", "reason" => reason).increment(0);
    }
    for reason in ["timeout", "died"] {
        metrics::counter!("parser_killed_total", "reason" => reason).increment(0);
    }
    for reason in crate::ingest::worker::FailureReason::ALL {
        metrics::counter!("ingest_jobs_failed_total", "reason" => reason.as_str()).increment(0);
    }
    for reason in crate::security::guard::Rejection::ALL {
        metrics::counter!("security_rejected_requests_total", "reason" => reason.as_str())
            .increment(0);
    }
}

/// Prometheus metrics of the whole process (every module port).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics_endpoint() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics_handle().render())
}

tokio::task_local! {
    /// The stage timings of the request this task serves.
    static STAGES: Stages;
}

/// Stages of one request and how long each took (µs), in the order they ended.
#[derive(Clone, Default)]
struct Stages(Arc<Mutex<Vec<(&'static str, u64)>>>);

impl Stages {
    fn render(&self) -> String {
        let stages = self.0.lock().unwrap_or_else(|p| p.into_inner());
        stages
            .iter()
            .map(|(name, us)| format!("{name}={:.1}ms", *us as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Records that a stage of the request being served ended (no-op outside a request, e.g. in an
/// ingestion job); a slow request's warning lists them.
pub fn stage_done(name: &'static str, started: Instant) {
    let us = started.elapsed().as_micros() as u64;
    let _ = STAGES.try_with(|s| {
        s.0.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, us))
    });
}

/// `log.slow_request_ms`; 0: no slow-request warnings.
static SLOW_REQUEST_MS: AtomicU64 = AtomicU64::new(0);

pub fn set_slow_request_ms(ms: u64) {
    SLOW_REQUEST_MS.store(ms, Ordering::Relaxed);
}

/// The request id of the request being served, stored in the request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn valid_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Middleware factory state: the module this server belongs to.
#[derive(Clone, Copy)]
pub struct ModuleName(pub &'static str);

/// Tags each request with a request id and the module, logs it, and records metrics.
pub async fn request_middleware(
    module: ModuleName,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().to_string();
    let path = req.path().to_string();
    // The security guard fills in who called and from where; tokens are never logged.
    let span = tracing::info_span!(
        "request",
        module = module.0,
        request_id = %request_id,
        client_ip = tracing::field::Empty,
        user = tracing::field::Empty
    );
    let started = Instant::now();
    let stages = Stages::default();
    let result = STAGES
        .scope(stages.clone(), next.call(req))
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    let _enter = span.enter();
    let slow = SLOW_REQUEST_MS.load(Ordering::Relaxed);
    if slow > 0 && elapsed.as_millis() >= u128::from(slow) {
        tracing::warn!(%method, %path, elapsed_ms = elapsed.as_millis() as u64, stages = %stages.render(), "slow request");
    }
    match result {
        Ok(mut res) => {
            let status = res.status().as_u16();
            let route = res
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string());
            record(module.0, &method, &route, status, elapsed.as_secs_f64());
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                res.headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
            }
            if route != "/health" && route != "/metrics" {
                tracing::info!(%method, %path, status, elapsed_ms = elapsed.as_millis() as u64, "request");
            }
            Ok(res)
        }
        Err(err) => {
            let status = err.as_response_error().status_code().as_u16();
            record(
                module.0,
                &method,
                "unmatched",
                status,
                elapsed.as_secs_f64(),
            );
            tracing::warn!(%method, %path, status, error = %err, "request failed");
            Err(err)
        }
    }
}

/// Methods outside the standard set share one label value, so a client cannot grow the metric.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

fn record(module: &'static str, method: &str, route: &str, status: u16, seconds: f64) {
    let labels = [
        ("module", module.to_string()),
        ("method", method_label(method).to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(seconds);
}
