//! An [`Explanation`] as text for people: one numbered step a line (or a few).

use std::fmt::Write;

use super::Explanation;

/// The explanation, step by step, as `gatekeeper explain` prints it.
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let r = &e.request;
    let scheme = if r.https { "https" } else { "plain HTTP" };
    let host = r.host.as_deref().unwrap_or("(no host)");
    let _ = writeln!(out, "request:     {} {} {} ({scheme})", r.method, host, r.path);

    let p = &e.peer;
    let fw = &e.forwarding;
    let peer = match (&p.trusted_entry, p.trusted) {
        (Some(entry), true) => format!(
            "{}, a trusted proxy (clients.trusted_proxies: {entry}): {} is read",
            p.address, fw.header
        ),
        _ => format!(
            "{}, not a trusted proxy: it is the client, forwarding headers are ignored",
            p.address
        ),
    };
    let _ = writeln!(out, "1. peer:      {peer}");

    let sent = fw.sent.join(", ");
    let _ = match (fw.read, fw.sent.is_empty()) {
        (false, true) => writeln!(out, "2. {}: not read", fw.header),
        (false, false) => writeln!(out, "2. {}: {sent} (sent, not read)", fw.header),
        (true, true) => writeln!(out, "2. {}: none sent: the peer is the client", fw.header),
        (true, false) => writeln!(out, "2. {}: {sent}", fw.header),
    };
    if fw.read && fw.walk.is_empty() && !fw.sent.is_empty() {
        let _ = writeln!(out, "   no entries in it: the peer is the client");
    }
    if fw.read && !fw.walk.is_empty() {
        let _ = writeln!(out, "   walked from the right:");
        let width = fw.walk.iter().map(|s| s.entry.len()).max().unwrap_or(0).min(40);
        let last_trusted = fw.walk.iter().rposition(|s| s.verdict == "trusted");
        let ended = fw.walk.iter().any(|s| s.verdict != "trusted");
        for (i, s) in fw.walk.iter().enumerate() {
            let what = match s.verdict {
                // Every entry trusted: the walk ends at the leftmost, the client.
                "trusted" if !ended && Some(i) == last_trusted => {
                    format!("trusted proxy ({}), but the leftmost: the client", entry_or_dash(s))
                }
                "trusted" => format!("trusted proxy ({}): skipped", entry_or_dash(s)),
                "client" => "not a trusted proxy: the client".to_string(),
                "malformed" => "not an address: the client is unknown".to_string(),
                "too-many" => "more than 64 hops: the client is unknown".to_string(),
                _ => "left of the client: not looked at".to_string(),
            };
            let _ = writeln!(out, "     {:<width$}  {what}", s.entry);
        }
    }

    let client = match e.client {
        Some(ip) => format!("{ip} (the app gets X-Forwarded-For: {})", e.upstream_forwarded_for),
        None => "unknown: never let through maintenance".to_string(),
    };
    let _ = writeln!(out, "3. client:    {client}");

    let allow = match (&e.client, e.allowlist.allowed, &e.allowlist.entry) {
        (None, _, _) => "not looked at (the client is unknown)".to_string(),
        (Some(ip), true, Some(entry)) => format!("{ip} matches {entry}"),
        (Some(ip), true, None) => format!("{ip} is on it"),
        (Some(ip), false, _) => format!("{ip} matches no entry"),
    };
    let _ = writeln!(out, "4. allowlist: {allow}");

    let m = &e.maintenance;
    let mut maint = m.state.to_string();
    if let Some(source) = m.source {
        let _ = write!(maint, " ({source}");
        if let Some(since) = &m.since {
            let _ = write!(maint, ", since {since}");
        }
        maint.push(')');
    }
    if m.from.is_some() || m.until.is_some() {
        let from = m.from.as_deref().unwrap_or("now");
        let until = m.until.as_deref().unwrap_or("until turned off");
        let _ = write!(maint, "; window {from} .. {until}");
    }
    let mut scope = Vec::new();
    if !m.paths.is_empty() {
        scope.push(format!("paths {}", m.paths.join(", ")));
    }
    if !m.hosts.is_empty() {
        scope.push(format!("hosts {}", m.hosts.join(", ")));
    }
    let scope = if scope.is_empty() {
        "the whole site".to_string()
    } else {
        scope.join("; ")
    };
    let _ = writeln!(out, "5. maintenance: {maint}");
    if m.active {
        let inside = if m.applies { "inside it" } else { "outside it" };
        let _ = writeln!(out, "   scope: {scope}; this request is {inside}");
        let _ = writeln!(
            out,
            "   read-only: {}{}; paused: {}",
            yes_no(m.read_only),
            if m.read_only && m.safe_method {
                " (a safe method)"
            } else {
                ""
            },
            yes_no(m.paused)
        );
    }
    if m.bypass_path {
        let _ = writeln!(out, "   the path is a bypass path (maintenance.bypass_paths)");
    }

    let c = &e.credential;
    let sent: Vec<&str> = [
        (c.header_sent, "the bypass header"),
        (c.cookie_sent, "the bypass cookie"),
    ]
    .into_iter()
    .filter_map(|(sent, what)| sent.then_some(what))
    .collect();
    let cred = if c.bypass_link {
        "the bypass link with the right token".to_string()
    } else if c.valid {
        format!("valid ({})", sent.join(" and "))
    } else if !c.bypass_enabled {
        "none (maintenance has no bypass secret)".to_string()
    } else if sent.is_empty() {
        "none sent".to_string()
    } else if !m.applies {
        format!(
            "{} sent, not looked at (maintenance does not apply)",
            sent.join(" and ")
        )
    } else {
        format!("{} sent, not valid", sent.join(" and "))
    };
    let _ = writeln!(out, "6. credential: {cred}");
    let _ = writeln!(out, "7. decision:  {}: {}", e.decision.decision, e.decision.reason);
    for w in &e.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out.truncate(out.trim_end().len());
    out
}

fn entry_or_dash(s: &super::WalkStep) -> &str {
    s.trusted_entry.as_deref().unwrap_or("-")
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
