//! The admin listener: `GET /metrics` (Prometheus text format), `GET /healthz`,
//! `POST /auth-cache/clear` (forget every cached auth service decision), `POST /reload` (reload
//! `proxy.toml`, as `SIGHUP` does) and `GET /openapi/<dialect>.json` (`docs/openapi/`).
//!
//! It runs as its own pingora service with its own thread, so a busy chat listener does not starve
//! scrapes, and it is meant to listen on a private address.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

use crate::httpio::{self, Answer, Handler};
use crate::reload::Reloader;

/// Serves metrics, health and cache control.
pub struct AdminService {
    reloader: Arc<Reloader>,
}

impl AdminService {
    /// The admin listener, acting on the runtime the reloader manages.
    pub fn new(reloader: Arc<Reloader>) -> Self {
        AdminService { reloader }
    }
}

#[async_trait]
impl Handler for AdminService {
    async fn handle(&self, session: &mut ServerSession) -> Answer {
        let keep = httpio::discard_body(session, 64 * 1024).await;
        let req = session.req_header();
        let get = req.method == http::Method::GET || req.method == http::Method::HEAD;
        let mut answer = match (req.uri.path(), get) {
            ("/metrics", true) => {
                let encoder = TextEncoder::new();
                let mut buf = Vec::with_capacity(16 * 1024);
                match encoder.encode(&prometheus::gather(), &mut buf) {
                    Ok(()) => Answer {
                        content_type: "text/plain; version=0.0.4; charset=utf-8",
                        ..Answer::text(200, buf)
                    },
                    Err(e) => Answer::text(500, format!("cannot encode metrics: {e}\n")),
                }
            }
            ("/healthz", true) => Answer::text(200, "ok\n"),
            // The callers' API documents, built in (docs/openapi/).
            ("/openapi/haptik.json", true) => {
                Answer::json(200, include_str!("../docs/openapi/haptik.json").into())
            }
            ("/openapi/csml.json", true) => {
                Answer::json(200, include_str!("../docs/openapi/csml.json").into())
            }
            ("/openapi/rasa.json", true) => {
                Answer::json(200, include_str!("../docs/openapi/rasa.json").into())
            }
            ("/auth-cache/clear", _) if req.method == http::Method::POST => {
                self.reloader.runtime().authn.clear_cache();
                tracing::info!("auth cache cleared");
                Answer::text(200, "cleared\n")
            }
            ("/reload", _) if req.method == http::Method::POST => match self.reloader.reload() {
                Ok(()) => Answer::text(200, "reloaded\n"),
                Err(e) => Answer::text(400, format!("not reloaded: {e}\n")),
            },
            ("/metrics" | "/healthz", false) => {
                Answer::text(405, "method not allowed\n").with_header("allow", "GET")
            }
            _ => Answer::text(404, "not found\n"),
        };
        answer.keepalive &= keep;
        answer
    }
}
