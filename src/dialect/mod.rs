//! The vendor dialects, one file each, and the enums that pick one.
//!
//! Each dialect module offers the same verbs over the canonical model (`crate::model`): parse a
//! request, render a request, parse an answer, render an answer, render an error. The request path
//! dispatches through [`Ingress`] (the caller's dialect) and the backend's dialect.

pub mod csml;
pub mod haptik;
