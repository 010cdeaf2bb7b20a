//! The vendor dialects, one file each, and the enums that pick one.
//!
//! Each dialect module offers the same verbs over the canonical model (`crate::model`): parse a
//! request, render a request, parse an answer, render an answer, render an error. [`IngressDialect`]
//! (what a caller speaks) and [`BackendDialect`] (what a bot speaks) are the one place that picks the
//! module; the request path only calls their methods.

pub mod csml;
pub mod haptik;

use serde::Deserialize;

use crate::error::ProxyError;
use crate::model::{ChatAnswer, ChatRequest};

/// The dialect a route accepts from callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressDialect {
    /// Haptik synchronous-webhook requests.
    Haptik,
}

impl IngressDialect {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            IngressDialect::Haptik => "haptik",
        }
    }

    /// Parses a caller's request body.
    pub fn parse_request(self, body: &[u8]) -> Result<ChatRequest<'_>, ProxyError> {
        match self {
            IngressDialect::Haptik => haptik::parse_request(body),
        }
    }

    /// Renders the bot's answer for the caller.
    pub fn render_answer(
        self,
        req: &ChatRequest<'_>,
        answer: &ChatAnswer<'_>,
        ctx: &haptik::AnswerContext<'_>,
    ) -> Vec<u8> {
        match self {
            IngressDialect::Haptik => haptik::render_answer(req, answer, ctx),
        }
    }

    /// Renders an error the way this dialect's own servers do.
    pub fn render_error(self, err: &ProxyError) -> Vec<u8> {
        match self {
            IngressDialect::Haptik => haptik::render_error(err),
        }
    }
}

/// The dialect a backend bot speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendDialect {
    /// CSML Chat API (`POST …/api/chat`).
    Csml,
}

impl BackendDialect {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendDialect::Csml => "csml",
        }
    }

    /// Renders the request body for the backend.
    pub fn render_request(self, req: &ChatRequest<'_>, request_id: &str) -> Vec<u8> {
        match self {
            BackendDialect::Csml => csml::render_request(req, request_id),
        }
    }

    /// Parses a successful (2xx) backend answer body.
    pub fn parse_answer(self, body: &[u8]) -> Result<ChatAnswer<'_>, ProxyError> {
        match self {
            BackendDialect::Csml => csml::parse_answer(body),
        }
    }
}
