//! `gatekeeper explain`: a request built from the command line, decided
//! against what the daemon would hold now — the config and its files, the
//! toggle as observed, the fleet's last known state, the drain file.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Method, Request};

use super::{explain, text};
use crate::cli::ExplainArgs;
use crate::config::Config;
use crate::facts::Conn;
use crate::runtime::{Loaded, Runtime};
use crate::state::Snapshot;
use crate::{fleet, toggle};

/// Runs `explain`: the explanation as text, or as JSON with `--json`.
pub fn run(config: &Path, args: ExplainArgs) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let toggle_path = cfg.maintenance.toggle.clone();
    let https_port = cfg.tls.as_ref().and_then(|t| t.listen.first()).map(|a| a.port());
    let default_host = cfg.listen.first().map(ToString::to_string);
    // The runtime keeps the allowlist's entries only for whoami; explain reads them itself.
    let entries = if cfg.clients.whoami {
        None
    } else {
        Some(Loaded::load(&cfg)?.allow_entries)
    };
    // Without the network: the fleet's last known state, as a daemon starting now would take it.
    let fleet = cfg.fleet.as_ref().and_then(|f| fleet::restore(f, &toggle_path));
    let drained = toggle::drain_path(&toggle_path).exists();
    let rt = Runtime::build(cfg)?;
    let entries = entries.unwrap_or_else(|| rt.allow_entries.clone());
    let snap = Snapshot::new(Arc::new(rt), toggle::observe(&toggle_path), fleet, drained);
    let req = request(&args, default_host.as_deref())?;
    let conn = Conn::new(SocketAddr::new(args.peer, 0), args.https, https_port);
    let e = explain(&req, &conn, &snap, jiff::Timestamp::now(), &entries);
    Ok(if args.json {
        serde_json::to_string_pretty(&e)?
    } else {
        text(&e)
    })
}

/// The request the arguments describe. Without `--host` or a Host header, the
/// Host is the first listen address (what a client of it would send).
fn request(args: &ExplainArgs, default_host: Option<&str>) -> anyhow::Result<Request<()>> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("--method {:?} is not an HTTP method", args.method))?;
    let mut req = Request::builder()
        .method(method)
        .uri(args.path.as_str())
        .body(())
        .with_context(|| format!("{:?} is not a request target such as /checkout", args.path))?;
    let headers = req.headers_mut();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?} is not 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("--header {h:?}: {:?} is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim()).with_context(|| format!("--header {h:?}: bad value"))?;
        headers.append(name, value);
    }
    if let Some(host) = &args.host {
        let host = HeaderValue::from_str(host).with_context(|| format!("--host {host:?} is not a host"))?;
        headers.insert(HOST, host);
    } else if !headers.contains_key(HOST) {
        if let Some(h) = default_host.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(HOST, h);
        }
    }
    Ok(req)
}
