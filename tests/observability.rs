//! Area: observability (admin endpoint, `status` daemon line, logs).
//!
//! The admin endpoint (/healthz, /status, /metrics), the
//! `status` command's daemon line, JSON logs and one log line per maintenance flip.
mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_healthz_status_and_metrics() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("clients.allow", &arr(&["127.0.0.2", "10.0.0.0/8", "2001:db8::/32"]));
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let admin = gk.admin();
    assert!(
        admin.ip() == LOCALHOST && admin.port() != 0 && admin != gk.addr,
        "{:?}",
        gk.listeners
    );

    let r = get(LOCALHOST, admin, "/healthz", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = get(LOCALHOST, admin, "/nope", &[]).await;
    assert_eq!(r.status, 404);

    let r = get(LOCALHOST, admin, "/status", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s = r.json();
    for key in [
        "maintenance",
        "since",
        "message",
        "retry_after",
        "toggle",
        "config",
        "allowlist_entries",
        "version",
        "uptime_seconds",
        "source",
        "window",
        "until",
        "secret_set",
        "fleet",
    ] {
        assert!(s.get(key).is_some(), "/status has no {key:?}: {s}");
    }
    assert_eq!(s["maintenance"], "off", "{s}");
    assert!(s["since"].is_null(), "{s}");
    assert_eq!(s["toggle"], fx.toggle().display().to_string());
    assert_eq!(s["config"], gk.config.display().to_string());
    assert_eq!(s["allowlist_entries"], 3);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].as_u64().is_some_and(|u| u < 60), "{s}");
    assert_eq!(s["retry_after"], 600, "{s}");
    assert_eq!(s["secret_set"], false);
    assert!(
        s["fleet"].is_null() && s["until"].is_null() && s["window"].is_null(),
        "{s}"
    );

    let m0 = metrics(admin).await;
    assert!(m0.ends_with("# EOF\n"), "{m0}");
    let r = get(LOCALHOST, admin, "/metrics", &[]).await;
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    for series in [
        "gatekeeper_requests_total{decision=\"proxy\",status=\"2xx\"}",
        "gatekeeper_requests_total{decision=\"page\",status=\"5xx\"}",
        "gatekeeper_upstream_errors_total{kind=\"unreachable\"}",
        "gatekeeper_upstream_errors_total{kind=\"timeout\"}",
        "gatekeeper_reloads_total{result=\"ok\"}",
        "gatekeeper_reloads_total{result=\"failed\"}",
        "gatekeeper_maintenance",
        "gatekeeper_maintenance_last_change_timestamp_seconds",
        "gatekeeper_maintenance_flips_total",
        "gatekeeper_allowlist_entries",
        "gatekeeper_open_connections",
        "gatekeeper_request_duration_seconds_count{decision=\"proxy\"}",
    ] {
        assert!(sample(&m0, series).is_some(), "no {series} in\n{m0}");
    }
    assert_eq!(sample(&m0, "gatekeeper_maintenance"), Some(0.0));
    assert_eq!(sample(&m0, "gatekeeper_allowlist_entries"), Some(3.0));
    let proxied0 = sample(&m0, "gatekeeper_requests_total{decision=\"proxy\",status=\"2xx\"}").unwrap();

    // Proxied requests, on one kept-alive connection (counted as open).
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    for _ in 0..5 {
        assert_eq!(c.get("/p").await.status, 200);
    }
    let m = metrics(admin).await;
    assert_eq!(
        sample(&m, "gatekeeper_requests_total{decision=\"proxy\",status=\"2xx\"}"),
        Some(proxied0 + 5.0),
        "{m}"
    );
    assert!(sample(&m, "gatekeeper_request_duration_seconds_count{decision=\"proxy\"}").unwrap() >= 5.0);
    assert!(sample(&m, "gatekeeper_open_connections").unwrap() >= 1.0, "{m}");
    let t_before = sample(&m, "gatekeeper_maintenance_last_change_timestamp_seconds").unwrap();

    // Maintenance on, with a message and retry time: page, asset, bypass.
    let o = gk_cmd(
        &[
            "on",
            "-c",
            gk.config.to_str().unwrap(),
            "--message",
            "Back at noon",
            "--retry-after",
            "5m",
        ],
        None,
        &[],
    );
    assert!(o.status.success(), "{}", show(&o));
    let r = until_resp(&mut c, "/p", Duration::from_secs(3), |r| r.status == 503).await;
    assert!(r.is_some(), "{}", gk.log());
    assert_eq!(get(LOCALHOST, gk.addr, "/style.css", &[]).await.status, 200);
    assert!(bypassed(&get(IP2, gk.addr, "/p", &[]).await));
    let s = get(LOCALHOST, admin, "/status", &[]).await.json();
    assert_eq!(s["maintenance"], "on", "{s}");
    assert_eq!(s["message"], "Back at noon", "{s}");
    assert_eq!(s["retry_after"], 300, "{s}");
    assert_eq!(s["source"], "file", "{s}");
    assert_eq!(s["window"], "active", "{s}");
    let since = s["since"].as_str().unwrap_or_else(|| panic!("no since: {s}"));
    assert!(
        regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            .unwrap()
            .is_match(since),
        "{since}"
    );
    let m = metrics(admin).await;
    assert_eq!(sample(&m, "gatekeeper_maintenance"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "gatekeeper_maintenance_flips_total"), Some(1.0), "{m}");
    assert!(sample(&m, "gatekeeper_maintenance_last_change_timestamp_seconds").unwrap() >= t_before);
    assert!(sample(&m, "gatekeeper_requests_total{decision=\"page\",status=\"5xx\"}").unwrap() >= 1.0);
    assert_eq!(
        sample(&m, "gatekeeper_requests_total{decision=\"asset\",status=\"2xx\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gatekeeper_requests_total{decision=\"bypass\",status=\"2xx\"}"),
        Some(1.0),
        "{m}"
    );

    // A reload to a dead upstream: 502 counted as unreachable; the reload counted.
    let o = gk_cmd(&["off", "-c", gk.config.to_str().unwrap()], None, &[]);
    assert!(o.status.success(), "{}", show(&o));
    let dead = HeldPort::new();
    cfg.set("upstream.url", &q(&dead.url()));
    replace(&gk.config, &cfg.render());
    let r = until_resp(&mut c, "/p", Duration::from_secs(5), |r| r.status == 502).await;
    assert!(r.is_some(), "new upstream not applied\n{}", gk.log());
    let m = metrics(admin).await;
    assert!(
        sample(&m, "gatekeeper_upstream_errors_total{kind=\"unreachable\"}").unwrap() >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "gatekeeper_requests_total{decision=\"proxy\",status=\"5xx\"}").unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(sample(&m, "gatekeeper_reloads_total{result=\"ok\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "gatekeeper_maintenance"), Some(0.0), "{m}");
    assert_eq!(sample(&m, "gatekeeper_maintenance_flips_total"), Some(2.0), "{m}");
    drop(c);
    assert!(
        eventually_async(Duration::from_secs(3), || async {
            metric(admin, "gatekeeper_open_connections").await == 0.0
        })
        .await,
        "open_connections does not go back to 0"
    );
}

/// `gatekeeper status` with [admin]: a "daemon:" line only when the running
/// daemon sees something else than the file says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_adds_a_daemon_line_only_on_disagreement() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    // The command finds the daemon through the config's admin address: the
    // daemon's own config says port 0, so the commands get a copy naming the
    // port it bound.
    cfg.set("admin.listen", &q(&gk.admin().to_string()));
    let conf = fx.write("status.toml", cfg.render()).to_str().unwrap().to_string();
    let status = |path: &str| {
        let o = gk_cmd(&["status", "-c", path], None, &[]);
        assert!(o.status.success(), "{}", show(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(status(&conf).trim_end(), "maintenance: off");
    fx.toggle_on();
    assert!(
        eventually_async(Duration::from_secs(3), || async {
            get(LOCALHOST, gk.addr, "/", &[]).await.status == 503
        })
        .await
    );
    let out = status(&conf);
    assert!(out.starts_with("maintenance: on since "), "{out}");
    assert!(!out.contains("daemon:"), "{out}");

    // The same admin endpoint, but another toggle file: the daemon disagrees.
    let mut other = cfg.clone();
    other.set(
        "maintenance.toggle",
        &q(fx.path("toggle/other-toggle").to_str().unwrap()),
    );
    let other_path = fx.write("other.toml", other.render());
    let out = status(other_path.to_str().unwrap());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"maintenance: off"), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("daemon: sees maintenance on")),
        "{out}"
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with("daemon:")).count(), 1, "{out}");
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?}")))
        .collect()
}

fn flips(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("maintenance ") && m.contains(" -> "))
        })
        .collect()
}

/// `[log] format = "json"`: every stderr line is one JSON object (startup,
/// access, reload, refusal, flips, shutdown); access lines carry the decision;
/// every maintenance flip logs exactly one line with its source and cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_one_line_per_flip() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("log.format", &q("json"));
    cfg.set("maintenance.recheck", &q("300ms"));
    cfg.set("clients.allow", &arr(&["127.0.0.2"]));
    let mut gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert_eq!(c.get("/proxied?q=1").await.status, 200);

    // Flips, each way the operators flip: touch, rm, mv in, mv out.
    let off_name = fx.toggle_dir().join("maintenance-mode-off");
    let steps: [(&str, bool); 4] = [("touch", true), ("rm", false), ("mv in", true), ("mv out", false)];
    for (i, (how, on)) in steps.iter().enumerate() {
        match *how {
            "touch" => fx.toggle_on(),
            "rm" => fx.toggle_off(),
            "mv in" => {
                std::fs::write(&off_name, b"").unwrap();
                std::fs::rename(&off_name, fx.toggle()).unwrap();
            }
            _ => std::fs::rename(fx.toggle(), &off_name).unwrap(),
        }
        let want = if *on { 503 } else { 200 };
        let r = until_resp(&mut c, "/flip", Duration::from_secs(3), |r| r.status == want).await;
        assert!(r.is_some(), "{how}: not applied\n{}", gk.log());
        // Longer than a few periodic re-checks: none of them may log again.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let lines = json_lines(&gk.log());
        let f = flips(&lines);
        assert_eq!(f.len(), i + 1, "{how}: flip lines {f:#?}");
        let last = f[i];
        let want_msg = if *on {
            "maintenance off -> on"
        } else {
            "maintenance on -> off"
        };
        assert_eq!(last["message"], want_msg, "{last}");
        assert_eq!(last["source"], "file", "{last}");
        assert!(
            last["cause"].as_str().is_some_and(|c| !c.is_empty()),
            "flip line without cause: {last}"
        );
        assert_eq!(last["level"], "INFO", "{last}");
    }
    fx.toggle_on();
    let r = until_resp(&mut c, "/page", Duration::from_secs(3), |r| r.status == 503).await;
    assert!(r.is_some());
    assert!(bypassed(&get(IP2, gk.addr, "/bypassed", &[]).await));
    assert_eq!(c.get("/style.css").await.status, 200);

    // A refused reload and an accepted one are JSON too.
    std::fs::write(&gk.config, "listen = [\n").unwrap();
    assert!(gk.wait_for_log("reload refused", Duration::from_secs(5)).is_some());
    replace(&gk.config, &cfg.render());
    assert!(gk.wait_for_log("config reloaded", Duration::from_secs(5)).is_some());
    gk.sigterm();
    assert_eq!(gk.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    let _ = gk.wait_for_log("\"stopped\"", Duration::from_secs(2));

    let lines = json_lines(&gk.log());
    assert!(lines.len() >= 10, "{}", gk.log());
    for v in &lines {
        assert!(v.is_object(), "{v}");
        for key in ["timestamp", "level", "target"] {
            assert!(v.get(key).is_some(), "no {key}: {v}");
        }
    }
    let msg = |m: &str| {
        lines
            .iter()
            .any(|v| v["message"].as_str().is_some_and(|s| s.contains(m)))
    };
    for m in [
        "(http)",
        "ready",
        "reload refused",
        "config reloaded",
        "SIGTERM: stopping",
        "stopped",
    ] {
        assert!(msg(m), "no JSON line with {m:?}\n{}", gk.log());
    }
    let access: Vec<&serde_json::Value> = lines.iter().filter(|v| v["target"] == "access").collect();
    let find = |path: &str| {
        // The last one: /page was polled until maintenance showed.
        access
            .iter()
            .rev()
            .find(|v| v["path"] == path)
            .unwrap_or_else(|| panic!("no access line for {path}: {access:#?}"))
    };
    for (path, decision, status, client) in [
        ("/proxied", "proxy", 200, "127.0.0.1"),
        ("/page", "page", 503, "127.0.0.1"),
        ("/bypassed", "bypass", 200, "127.0.0.2"),
        ("/style.css", "asset", 200, "127.0.0.1"),
    ] {
        let v = find(path);
        assert_eq!(v["decision"], decision, "{v}");
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["client"], client, "{v}");
        assert_eq!(v["method"], "GET", "{v}");
        let peer: SocketAddr = v["peer"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("peer: {e}: {v}"));
        assert_eq!(peer.ip().to_string(), client, "{v}");
        let ms = match &v["ms"] {
            serde_json::Value::String(s) => s.parse::<f64>().ok(),
            other => other.as_f64(),
        };
        assert!(ms.is_some_and(|ms| ms >= 0.0), "ms: {v}");
    }
    // The query string stays out of the access line's path.
    assert!(access.iter().all(|v| !v["path"].as_str().unwrap_or("").contains('?')));
    assert_eq!(flips(&lines).len(), 5, "{}", gk.log());
}
