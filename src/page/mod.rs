//! The maintenance page and everything it needs to be answered.
//!
//! This module owns:
//! - loading the page directory (`maintenance.dir`) into memory once, at config
//!   load time ([`PageSet::load`]), or using the page compiled into the binary
//!   ([`PageSet::embedded`]), and mapping a raw request path to one of the
//!   loaded assets ([`PageSet::asset`]) — `load`;
//! - filling the template's placeholders ([`render`], `render_at`) — `render`;
//! - content negotiation between HTML and JSON ([`prefers_json`]) — `negotiate`;
//! - building the 503 maintenance response, asset responses and the proxy's
//!   small error pages ([`maintenance_response`], [`asset_response`],
//!   [`error_response`]) — `respond`.
//!
//! SECURITY: nothing is ever read from disk on the request path. At load time
//! only regular files whose canonical path lies inside the canonical page
//! directory become assets; a request can only ever select one of those by an
//! exact map lookup, so no input can reach a file outside the directory.

mod load;
mod negotiate;
mod render;
mod respond;

pub use load::{Asset, PageError, PageSet};
pub use negotiate::prefers_json;
pub use render::{human_duration, human_until, render, render_at, Rendered};
pub use respond::{allow_origin, asset_response, error_response, maintenance_response, preflight_response};
