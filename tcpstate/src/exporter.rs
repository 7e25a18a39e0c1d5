//! `tcpstate exporter`: the trace loop of `live` with a metrics sink instead of a printer, and
//! a small HTTP server on the same current-thread runtime serving `GET /metrics`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::cli::{ExporterArgs, MetricsLabels};
use crate::input::Counter;
use crate::kernel::environment;
use crate::live::{self, Limits};
use crate::metrics::{BuildInfo, ContainerLabels, Metrics, MetricsRenderer, PortLabels};
use crate::output::Output;
use crate::pipeline::{OutputConfig, Pipeline};

/// Scrapes served at once; more wait in the listen backlog. A scraper needs one.
const MAX_CLIENTS: usize = 16;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn run(args: &ExporterArgs) -> Result<i32> {
    let spec = args.filter.spec();
    let filtered = !spec.is_empty();
    let opts = crate::live::probe_options(&spec, &args.probe, args.debug)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    // Bind before loading anything: a taken port fails fast and leaves nothing attached.
    let listener = rt
        .block_on(TcpListener::bind(args.listen))
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    if !addr.ip().is_loopback() {
        eprintln!(
            "tcpstate: warning: serving metrics beyond this host on {addr} (no authentication; \
             restrict it with a firewall or a network policy)"
        );
    }

    let mut probe = live::attach(&opts)?;
    let metrics = Arc::new(Metrics::new(&BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: environment::kernel_release(),
        attachment: "tracepoint:sock:inet_sock_set_state".to_string(),
    }));
    let cfg = OutputConfig {
        max_tracked: args.max_tracked as usize,
        summary_at_end: false,
        // `tcpstate_listen_drops_total`'s reason label.
        drop_reasons: crate::pipeline::ResetReasons::leak(probe.drop_reasons.clone()),
        ..OutputConfig::default()
    };
    let renderer = MetricsRenderer::new(
        metrics.clone(),
        PortLabels::new(args.metrics_ports(), args.metrics_max_series),
        args.metrics_labels
            .contains(&MetricsLabels::Container)
            .then(|| ContainerLabels::new(args.metrics_max_series)),
    );
    let mut output = Output::from_pipeline(Pipeline::with_renderer(cfg, Box::new(renderer)));

    eprintln!("tcpstate: serving metrics on http://{addr}/metrics");
    let limits = Limits {
        duration: args.duration,
        watch_stdout: false,
        stop: None,
        ring_bytes: args.probe.buffer_size,
    };
    let result = rt.block_on(async {
        let server = tokio::spawn(serve(listener, metrics.clone()));
        let r = live::run_into(limits, filtered, &mut probe, &mut output).await;
        server.abort();
        r
    });
    probe.detach();
    // A counter that cannot be read stays unknown here, as in `trace`'s last line.
    let (counters, _) = probe.read_counters();
    drop(probe);
    let (delivered, undecodable) = result?;
    if let Some(path) = &args.counters_json {
        live::write_counters_json(path, &counters, delivered)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let show = |v: Option<u64>| v.map_or_else(|| "unknown".to_string(), |v| v.to_string());
    let detail = Counter::ALL
        .into_iter()
        .filter(|c| c.is_loss())
        .map(|c| format!("{} {}", c.name(), show(counters.get(c))))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "tcpstate: exporter stopped: {delivered} events delivered, {} lost ({detail}){}",
        show(counters.lost()),
        if undecodable > 0 {
            format!(", {undecodable} undecodable records")
        } else {
            String::new()
        }
    );
    Ok(0)
}

/// Accepts scrapers until aborted; each connection is its own task on this runtime.
async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let clients = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like pass; do not spin on them.
                eprintln!("tcpstate: warning: accepting a scrape: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if clients.load(Ordering::Relaxed) >= MAX_CLIENTS {
            drop(stream);
            continue;
        }
        clients.fetch_add(1, Ordering::Relaxed);
        let metrics = metrics.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            // A client going away mid-request is its own business.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            clients.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut resp = if req.uri().path() == "/metrics" {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            return r;
        }
        Response::new(Full::new(Bytes::from_static(b"only GET\n")))
    } else {
        Response::new(Full::new(Bytes::from_static(b"not found: try /metrics\n")))
    };
    *resp.status_mut() = if req.uri().path() == "/metrics" {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::NOT_FOUND
    };
    resp
}
