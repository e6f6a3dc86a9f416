//! Read-only HTTP endpoints: `/metrics` (OpenMetrics), `/healthz`, `/readyz`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
pub struct State {
    pub registry: Arc<Registry>,
    /// Set once every program is attached and the first interface listing is applied.
    pub ready: Arc<AtomicBool>,
    /// With the Kubernetes sources on: not ready while any of their caches is stale.
    pub kubernetes: Option<Arc<crate::kubernetes::KubeState>>,
}

/// Binds now (so a busy port fails start-up), then serves until the task is dropped.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, state: State) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state)) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("http connection: {err}");
            }
        });
    }
}

fn route<B>(req: &Request<B>, state: &State) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "read-only endpoint\n".into());
    }
    match req.uri().path() {
        "/metrics" => match crate::metrics::render(&state.registry) {
            Ok(body) => reply(StatusCode::OK, OPENMETRICS, body),
            Err(_) => {
                reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encode error\n".into())
            }
        },
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if !state.ready.load(Ordering::Acquire) => {
            reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".into())
        }
        "/readyz" => match state.kubernetes.as_ref().map(|k| k.stale()).unwrap_or_default() {
            stale if stale.is_empty() => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            stale => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: stale Kubernetes cache: {}\n", stale.join("; ")),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}
