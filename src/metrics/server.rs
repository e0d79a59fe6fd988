//! The HTTP listener for `/metrics`, `/healthz` and `/readyz` (hyper, HTTP/1.1, GET only).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{Metrics, Readiness};

/// A running metrics listener; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `addr` and serves, until the returned server is dropped:
///
/// - `GET /metrics`: every metric in the OpenMetrics text format Prometheus scrapes;
/// - `GET /healthz`: `200 ok` while the process runs, `200 degraded: uplink down since …` while
///   outputs are spooled because the output cluster does not take them;
/// - `GET /readyz`: `200 ready` once connected, assigned and with the model loaded, else
///   `503` and what it is doing (`starting`, `rebalancing`, `stopping`).
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let metrics = streamtract::metrics::Metrics::default();
/// let server = streamtract::metrics::serve("127.0.0.1:9464".parse().unwrap(), metrics).await?;
/// println!("scrape http://{}/metrics", server.local_addr());
/// # Ok(()) }
/// ```
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = respond(&metrics, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
            });
        }
    });
    Ok(MetricsServer { addr, task })
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics.encode());
            if let Ok(value) = "application/openmetrics-text; version=1.0.0; charset=utf-8".parse()
            {
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, value);
            }
            response
        }
        // Degraded is still 200: the process works (outputs go to the spool), and restarting it
        // would not bring the uplink back.
        "/healthz" => text(StatusCode::OK, format!("{}\n", metrics.health())),
        "/readyz" => match metrics.readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n".into()),
            other => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", other.as_str()),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = "text/plain; charset=utf-8".parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
