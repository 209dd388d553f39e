//! The node's figures in Prometheus text format, on an address of its own when asked
//! (`--metrics-listen`): each runtime step by kind and outcome, the bytes and the time its
//! pulls took, how many reports wait in the outbox, how often the link came back.
//!
//! Nothing is anonymous: a scrape presents the bearer token the node was given
//! (`--metrics-token-file`), or is answered 401.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Where the figures are served, and the token a scrape must present.
#[derive(Clone)]
pub struct MetricsListen {
    pub addr: SocketAddr,
    pub token: String,
}

impl std::fmt::Debug for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsListen").field("addr", &self.addr).field("token", &events::REDACTED).finish()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    kind: &'static str,
    outcome: &'static str,
}

/// The node's counters, shared by its loop, its steps and its publisher.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    registry: Arc<Registry>,
    steps: Family<StepLabels, Counter>,
    pull_seconds: Histogram,
    reconnects: Counter,
    outbox_depth: Gauge,
    pulled_bytes: Gauge,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("edge_node");
        let steps = Family::<StepLabels, Counter>::default();
        registry.register("steps", "Runtime steps taken, by kind and outcome", steps.clone());
        let pull_seconds = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]);
        registry.register("pull_seconds", "How long each pull step took", pull_seconds.clone());
        let pulled_bytes = Gauge::default();
        registry.register(
            "pulled_bytes",
            "Bytes of image layers downloaded since the node started",
            pulled_bytes.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register("outbox_depth", "Reports kept in the outbox, not yet acknowledged", outbox_depth.clone());
        let reconnects = Counter::default();
        registry.register("reconnects", "Times the link to NATS came back", reconnects.clone());
        NodeMetrics { registry: Arc::new(registry), steps, pull_seconds, reconnects, outbox_depth, pulled_bytes }
    }
}

impl NodeMetrics {
    /// One runtime step of `kind` ended, failed or not, after `seconds`.
    pub fn step(&self, kind: &'static str, failed: bool, seconds: f64) {
        let outcome = if failed { "failed" } else { "done" };
        self.steps.get_or_create(&StepLabels { kind, outcome }).inc();
        if kind == "pull" {
            self.pull_seconds.observe(seconds);
        }
    }

    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// The figures now: the gauges read from `outbox_depth` and `pulled_bytes`.
    pub fn encode(&self, outbox_depth: usize, pulled_bytes: u64) -> Result<String, std::fmt::Error> {
        self.outbox_depth.set(i64::try_from(outbox_depth).unwrap_or(i64::MAX));
        self.pulled_bytes.set(i64::try_from(pulled_bytes).unwrap_or(i64::MAX));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Bytes a runtime downloaded: counted by the Docker runtime as its pulls go.
#[derive(Debug, Default)]
pub struct PulledBytes(AtomicU64);

impl PulledBytes {
    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves `GET /metrics` on `listen` until the task is dropped; `figures` says them.
pub async fn serve<F>(listen: MetricsListen, figures: F) -> anyhow::Result<()>
where
    F: Fn() -> Result<String, std::fmt::Error> + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(listen.addr).await?;
    tracing::info!(addr = %listen.addr, "serving the node's metrics");
    let expected = Arc::new(format!("Bearer {}", listen.token));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "a metrics connection failed");
                continue;
            }
        };
        let (figures, expected) = (figures.clone(), expected.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let answer = answer(&request, &expected, &figures);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A scrape that breaks off ends its own connection alone.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// Whether `a` and `b` are equal, in a time that does not say where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |differ, (x, y)| differ | (x ^ y)) == 0
}

fn answer<B, F>(request: &Request<B>, expected: &str, figures: &F) -> Response<Full<Bytes>>
where
    F: Fn() -> Result<String, std::fmt::Error>,
{
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "only /metrics is here\n".to_owned());
    }
    let presented = request.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    if !same(presented, expected.as_bytes()) {
        return reply(
            StatusCode::UNAUTHORIZED,
            "a scrape needs `Authorization: Bearer <the node's metrics token>`\n".to_owned(),
        );
    }
    match figures() {
        Ok(text) => {
            let mut response = reply(StatusCode::OK, text);
            let kind = hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, kind);
            response
        }
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the figures: {e}\n")),
    }
}
