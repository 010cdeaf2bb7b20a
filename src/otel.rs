//! OpenTelemetry traces (`[tracing]`): a span per chat request continuing the caller's W3C
//! `traceparent`/`tracestate` (or starting a trace), child spans for what the request waits on
//! (authentication and its auth service call, each try of the bot exchange with its endpoint, access
//! token fetches, the shadow copy, each async delivery), the context passed on to bots and callback
//! receivers in `traceparent`, and the trace id in the access log. Exported over OTLP (HTTP,
//! protobuf) by the `opentelemetry` crates' batch processor, on a thread of its own.
//!
//! Off (no `[tracing]`), every entry point here is one load of a static that finds nothing: no span,
//! no context, no header. A request's context is carried two ways: explicitly in a [`Trace`] where
//! the request's phases keep it (`Call`, a delivery's target), and as the current context
//! (`opentelemetry::Context`, attached around a future by [`Trace::scope`]) for code far below that
//! only needs its parent (the pool's tries, the auth service, token fetches).

use std::future::Future;
use std::sync::OnceLock;

use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Tracer,
};

use crate::config::otel::TracingConfig;

struct Tracing {
    provider: SdkTracerProvider,
    tracer: Tracer,
    propagator: TraceContextPropagator,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

fn tracing() -> Option<&'static Tracing> {
    TRACING.get()
}

/// Starts exporting to the collector `[tracing]` names (nothing without it). Once per process, before
/// the server's runtimes start (the exporter's HTTP client must not be made inside one).
pub fn start(cfg: Option<&TracingConfig>) -> Result<(), String> {
    let Some(cfg) = cfg else { return Ok(()) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(cfg.timeout)
        .build()
        .map_err(|e| format!("tracing.endpoint: cannot set up the OTLP exporter: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(cfg.max_queue)
        .with_scheduled_delay(std::time::Duration::from_millis(500))
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    let ratio = Sampler::TraceIdRatioBased(cfg.sampling_ratio);
    let sampler = match cfg.caller_sampling {
        true => Sampler::ParentBased(Box::new(ratio)),
        false => ratio,
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("botbridge");
    let tracing = Tracing {
        provider,
        tracer,
        propagator: TraceContextPropagator::new(),
    };
    if TRACING.set(tracing).is_err() {
        return Err("tracing started twice".into());
    }
    tracing::info!(endpoint = %cfg.endpoint, ratio = cfg.sampling_ratio, "exporting traces over OTLP");
    Ok(())
}

/// Exports what is still queued (at exit), off the runtime's threads (it waits on the export).
pub async fn flush() {
    if let Some(t) = tracing() {
        let provider = t.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }
}

/// Whether traces are exported at all.
#[inline]
pub fn on() -> bool {
    TRACING.get().is_some()
}

/// A caller's `tracestate` goes on to every bot and receiver: one longer than W3C's 32 members or
/// 512 bytes is dropped (the trace itself goes on).
fn bounded_state(cx: Context) -> Context {
    let sc = cx.span().span_context().clone();
    let state = sc.trace_state().header();
    if state.len() <= 512 && state.split(',').count() <= 32 {
        return cx;
    }
    let trimmed = opentelemetry::trace::SpanContext::new(
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags(),
        sc.is_remote(),
        Default::default(),
    );
    cx.with_remote_span_context(trimmed)
}

/// Reads W3C trace headers from a request head.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A span's context, or nothing (tracing off). Cheap to clone.
#[derive(Clone, Default)]
pub struct Trace(Option<Context>);

impl Trace {
    /// Nothing: no span.
    pub fn none() -> Trace {
        Trace(None)
    }

    /// The server span of a request whose head is `headers`: a child of the caller's `traceparent`
    /// when it sends a valid one, else the root of a new trace.
    pub fn server(name: &'static str, headers: &http::HeaderMap) -> Trace {
        let Some(t) = tracing() else {
            return Trace(None);
        };
        let parent = t.propagator.extract(&Headers(headers));
        let parent = bounded_state(parent);
        let span = (t.tracer.span_builder(name))
            .with_kind(SpanKind::Server)
            .start_with_context(&t.tracer, &parent);
        Trace(Some(parent.with_span(span)))
    }

    /// A span of its own (no parent): work the proxy does for no request (a recovered delivery).
    pub fn root(name: &'static str, kind: SpanKind) -> Trace {
        Trace::child_of(&Context::new(), name, kind)
    }

    /// The current context's span, if tracing is on and a span is current.
    pub fn current() -> Trace {
        if !on() {
            return Trace(None);
        }
        let cx = Context::current();
        Trace(cx.has_active_span().then_some(cx))
    }

    /// A child span of this one (nothing if this is nothing). The child of a span that is not
    /// sampled is that span itself: nothing would record it, and the context passed on stays the
    /// same trace, not sampled.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Trace {
        match &self.0 {
            Some(cx) if cx.span().span_context().is_sampled() => Trace::child_of(cx, name, kind),
            Some(_) => self.clone(),
            None => Trace(None),
        }
    }

    /// Whether the span is sampled (recorded and exported).
    pub fn is_sampled(&self) -> bool {
        (self.0.as_ref()).is_some_and(|cx| cx.span().span_context().is_sampled())
    }

    fn child_of(parent: &Context, name: &'static str, kind: SpanKind) -> Trace {
        let Some(t) = tracing() else {
            return Trace(None);
        };
        let span = (t.tracer.span_builder(name))
            .with_kind(kind)
            .start_with_context(&t.tracer, parent);
        Trace(Some(parent.with_span(span)))
    }

    /// Whether there is a span.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// Sets attributes (built only when there is a span that records them).
    pub fn set(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            if span.is_recording() {
                span.set_attributes(attributes());
            }
        }
    }

    /// Marks the span failed, with a short reason (never a secret or a user's text).
    pub fn fail(&self, reason: &str) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(reason.to_owned()));
        }
    }

    /// Ends the span (once; a span never ended ends when its last context is dropped).
    pub fn end(&self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }

    /// The trace id (32 hex digits) of a sampled span, for the access log: a trace the collector
    /// has.
    pub fn trace_id(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_sampled().then(|| sc.trace_id().to_string())
    }

    /// The headers that carry this span's context to the next hop (`traceparent`, and
    /// `tracestate` when the caller sent one).
    pub fn headers(&self, add: &mut dyn FnMut(&str, &str)) {
        let (Some(cx), Some(t)) = (&self.0, tracing()) else {
            return;
        };
        let mut carrier = Carrier(add);
        t.propagator.inject_context(cx, &mut carrier);
    }

    /// Runs `fut` with this span as the current context (so what it calls may start children of it).
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        match &self.0 {
            Some(cx) => fut.with_context(cx.clone()).await,
            None => fut.await,
        }
    }
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.trace_id() {
            Some(id) => write!(f, "Trace({id})"),
            None => f.write_str("Trace(none)"),
        }
    }
}

struct Carrier<'a>(&'a mut dyn FnMut(&str, &str));

impl opentelemetry::propagation::Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        // No empty `tracestate` header when there is no state to pass on.
        if !value.is_empty() {
            (self.0)(key, &value);
        }
    }
}

/// Runs `fut` in a child span `name` of the current context, attributes from `attributes`; the
/// span fails, with `why` the error, if `fut` returns one. Only `fut` when tracing is off or no span
/// is current.
pub async fn in_span<T, E, F: Future<Output = Result<T, E>>>(
    name: &'static str,
    kind: SpanKind,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    why: impl FnOnce(&E) -> &'static str,
    fut: F,
) -> Result<T, E> {
    let parent = Trace::current();
    if !parent.is_sampled() {
        return fut.await;
    }
    let span = parent.child(name, kind);
    span.set(attributes);
    let result = span.scope(fut).await;
    if let Err(e) = &result {
        span.fail(why(e));
    }
    span.end();
    result
}
