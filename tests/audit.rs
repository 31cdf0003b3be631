//! The audit trail and the hooks, end to end: `on --reason` records who, when
//! and why in the toggle and `status` shows it; commands and the daemon's flips
//! (file and schedule) land in `<toggle>.history` and `gatekeeper history`;
//! `[hooks] on_change` runs with the flip in its environment and `webhook`
//! POSTs `{"text": ...}` over HTTPS (a test CA through `hooks.webhook_ca`);
//! a reload changes the hooks; failures are logged and counted; runs coalesce
//! to the latest state; and — the one slow test, ~10 s — a hanging hook is
//! killed at 10 s, with everything it started, while requests keep flowing.
mod common;
use common::*;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

/// Runs `gatekeeper <args> -c <cfg>` as `sudo_user` (through `$SUDO_USER`), requires success.
fn cli_as(cfg: &Path, sudo_user: &str, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", cfg.to_str().unwrap()]);
    let o = gk_cmd(&all, None, &[("SUDO_USER", sudo_user)]);
    assert!(o.status.success(), "gatekeeper {all:?} failed:\n{}", show(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Polls `gatekeeper history` until it contains every one of `want`, in
/// order (runs of spaces, the table's padding, count as one).
fn history_until(cfg: &Path, want: &[&str]) -> String {
    let mut text = String::new();
    let ok = eventually(Duration::from_secs(5), || {
        text = cli_as(cfg, "nobody", &["history", "-n", "100"]);
        let squeezed = regex::Regex::new(" +").unwrap().replace_all(&text, " ").into_owned();
        let mut rest = squeezed.as_str();
        want.iter().all(|w| match rest.find(w) {
            Some(i) => {
                rest = &rest[i + w.len()..];
                true
            }
            None => false,
        })
    });
    assert!(ok, "history lacks {want:?} (in this order):\n{text}");
    text
}

/// An executable shell script in the fixture.
fn script(fx: &Fixture, name: &str, body: &str) -> PathBuf {
    let p = fx.write(name, format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn commands_and_flips_are_in_the_history_and_status_says_who() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let cfg = fx.config(&up.url()).write(&fx);
    let gk = Gatekeeper::start_with_path(&cfg);
    let host = host();

    cli_as(
        &cfg,
        "alice",
        &["on", "--message", "Upgrading", "--reason", "db migration"],
    );
    let toggle = std::fs::read_to_string(fx.toggle()).unwrap();
    assert!(toggle.contains(&format!("by = \"alice@{host}\"")), "{toggle}");
    assert!(
        toggle.contains("reason = \"db migration\"") && toggle.contains("at = \""),
        "{toggle}"
    );
    let status = cli_as(&cfg, "nobody", &["status"]);
    let who = regex::Regex::new(&format!(
        r"\nby: alice@{} at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(db migration\)\n",
        regex::escape(&host)
    ))
    .unwrap();
    assert!(who.is_match(&status), "{status}");
    assert!(gk
        .wait_for_log("maintenance off -> on", Duration::from_secs(5))
        .is_some());

    cli_as(&cfg, "bob", &["off", "--reason", "done"]);
    assert!(gk
        .wait_for_log("maintenance on -> off", Duration::from_secs(5))
        .is_some());

    // A window that opens a second from now: the schedule's flip is recorded too.
    let from = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 2).unwrap();
    cli_as(&cfg, "carol", &["on", "--from", &from.to_string(), "--for", "1h"]);
    let text = history_until(
        &cfg,
        &[
            &format!("alice@{host} on message=\"Upgrading\" (reason: db migration)"),
            &format!("daemon/file maintenance off -> on (inotify), by alice@{host}: db migration"),
            &format!("bob@{host} off (reason: done)"),
            "daemon/file maintenance on -> off (inotify)",
            &format!("carol@{host} on from=\"{from}\" until="),
            &format!("daemon/schedule maintenance off -> on (schedule), by carol@{host}"),
        ],
    );
    assert!(text.starts_with("TIME "), "{text}");
    // `-n` keeps the newest, last; every line of the file is one JSON object.
    let two = cli_as(&cfg, "nobody", &["history", "-n", "2"]);
    assert_eq!(two.lines().count(), 3, "{two}");
    assert!(
        two.ends_with(&format!("maintenance off -> on (schedule), by carol@{host}\n")),
        "{two}"
    );
    let file = std::fs::read_to_string(fx.toggle_dir().join("maintenance-mode-on.history")).unwrap();
    for line in file.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["kind"] == "command" || v["kind"] == "flip", "{line}");
        assert!(v["at"].is_string(), "{line}");
    }
}

// ---------------------------------------------------------------------------
// A webhook receiver: HTTPS with a certificate from a throwaway CA
// ---------------------------------------------------------------------------

/// What the receiver got: path and JSON body.
type Got = (String, serde_json::Value);

struct Receiver {
    addr: SocketAddr,
    ca_pem: String,
    rx: mpsc::UnboundedReceiver<Got>,
}

impl Receiver {
    async fn start() -> Receiver {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "gatekeeper webhook test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &*ca)
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca.der().clone()];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else { return };
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            assert_eq!(req.headers()["content-type"], "application/json");
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send((path, serde_json::from_slice(&body).unwrap_or_default()));
                            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            ca_pem: ca.pem(),
            rx,
        }
    }

    /// The next POST's text, within 5 s.
    async fn next_text(&mut self) -> String {
        let (path, body) = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a webhook POST within 5 s")
            .expect("receiver open");
        assert_eq!(path, "/hooks/abc");
        body["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text: {body}"))
            .to_string()
    }
}

#[tokio::test]
async fn hooks_run_on_every_flip_and_a_reload_changes_them() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut recv = Receiver::start().await;
    let ca = fx.write("webhook-ca.pem", &recv.ca_pem);
    let out = fx.path("hook.out");
    let hook = script(
        &fx,
        "hook.sh",
        &format!(
            "printf '%s|%s|%s|%s|%s|%s\\n' \"$1\" \"$GATEKEEPER_MAINTENANCE\" \"$GATEKEEPER_MESSAGE\" \
             \"$GATEKEEPER_BY\" \"$GATEKEEPER_SOURCE\" \"$GATEKEEPER_UNTIL\" >> {}",
            out.display()
        ),
    );
    let mut c = fx.config(&up.url());
    with_admin(&mut c);
    c.set("hooks.on_change", &arr(&[hook.to_str().unwrap(), "ops"]));
    c.set("hooks.webhook", &q(&format!("https://{}/hooks/abc", recv.addr)));
    c.set("hooks.webhook_ca", &q(ca.to_str().unwrap()));
    let cfg = c.write(&fx);
    let gk = Gatekeeper::start_with_path(&cfg);
    let admin = gk.admin();
    let host = host();

    let until = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 3600).unwrap();
    cli_as(
        &cfg,
        "alice",
        &["on", "--message", "Upgrading", "--until", &until.to_string()],
    );
    let text = recv.next_text().await;
    assert_eq!(
        text,
        format!("{host}: maintenance on (file, by alice@{host}) — Upgrading; until {until}")
    );
    let want_on = format!("ops|on|Upgrading|alice@{host}|file|{until}");
    assert!(
        eventually(Duration::from_secs(5), || lines(&out) == [want_on.clone()]),
        "{:?}",
        lines(&out)
    );

    cli_as(&cfg, "alice", &["off"]);
    assert_eq!(recv.next_text().await, format!("{host}: maintenance off (file)"));
    assert!(
        eventually(Duration::from_secs(5), || lines(&out).last().map(String::as_str)
            == Some("ops|off|||file|")),
        "{:?}",
        lines(&out)
    );
    let ok = "gatekeeper_hook_runs_total{kind=\"command\",result=\"ok\"}";
    assert!(eventually_async(Duration::from_secs(5), || async { metric(admin, ok).await == 2.0 }).await);
    assert_eq!(
        metric(admin, "gatekeeper_hook_runs_total{kind=\"webhook\",result=\"ok\"}").await,
        2.0
    );

    // A reload changes the program, and a webhook that cannot be reached is logged and counted.
    let out2 = fx.path("hook2.out");
    let hook2 = script(
        &fx,
        "hook2.sh",
        &format!("echo \"$GATEKEEPER_MAINTENANCE\" >> {}", out2.display()),
    );
    c.set("hooks.on_change", &arr(&[hook2.to_str().unwrap()]));
    // Nothing listens there (bound, not listening): the POST is refused.
    let nobody = HeldPort::new();
    c.set("hooks.webhook", &q(&format!("https://{}/", nobody.addr)));
    c.write(&fx);
    assert!(
        gk.wait_for_log("config reloaded", Duration::from_secs(5)).is_some(),
        "{}",
        gk.log()
    );
    fx.toggle_on();
    assert!(
        eventually(Duration::from_secs(5), || lines(&out2) == ["on"]),
        "{:?}",
        lines(&out2)
    );
    assert!(
        gk.wait_for_log(r"hook failed: cannot connect to 127\.0\.0\.1", Duration::from_secs(5))
            .is_some(),
        "{}",
        gk.log()
    );
    let failed = "gatekeeper_hook_runs_total{kind=\"webhook\",result=\"failed\"}";
    assert_eq!(metric(admin, failed).await, 1.0);
    assert_eq!(lines(&out).len(), 2, "the old program ran no more");
}

#[tokio::test]
async fn hook_runs_coalesce_to_the_latest_state() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let out = fx.path("hook.out");
    let hook = script(
        &fx,
        "hook.sh",
        &format!("echo \"$GATEKEEPER_MAINTENANCE\" >> {}\nsleep 2", out.display()),
    );
    let mut c = fx.config(&up.url());
    with_admin(&mut c);
    c.set("hooks.on_change", &arr(&[hook.to_str().unwrap()]));
    let cfg = c.write(&fx);
    let gk = Gatekeeper::start_with_path(&cfg);
    let admin = gk.admin();
    let flips = |n: usize| {
        let re = regex::Regex::new(r"maintenance (on -> off|off -> on)").unwrap();
        eventually(Duration::from_secs(5), || re.find_iter(&gk.log()).count() >= n)
    };

    fx.toggle_on();
    assert!(eventually(Duration::from_secs(5), || lines(&out) == ["on"]));
    // Three more flips while the first run sleeps: one more run, with the last state.
    for (i, on) in [false, true, false].into_iter().enumerate() {
        if on {
            fx.toggle_on()
        } else {
            fx.toggle_off()
        }
        assert!(flips(i + 2), "{}", gk.log());
    }
    let ok = "gatekeeper_hook_runs_total{kind=\"command\",result=\"ok\"}";
    assert!(
        eventually_async(Duration::from_secs(10), || async { metric(admin, ok).await == 2.0 }).await,
        "{}",
        gk.log()
    );
    assert_eq!(lines(&out), ["on", "off"]);
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
    }
}

/// The one slow test (~10 s): the hook's bound is the product's 10 s, not a test knob.
#[tokio::test]
async fn slow_a_hanging_hook_is_killed_at_10s_while_requests_keep_flowing() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let (pid_file, child_file) = (fx.path("hook.pid"), fx.path("child.pid"));
    let hook = script(
        &fx,
        "hang.sh",
        &format!(
            "echo $$ > {}.tmp && mv {0}.tmp {0}\nsleep 600 &\necho $! > {}.tmp && mv {1}.tmp {1}\nwait",
            pid_file.display(),
            child_file.display()
        ),
    );
    let mut c = fx.config(&up.url());
    with_admin(&mut c);
    c.set("hooks.on_change", &arr(&[hook.to_str().unwrap()]));
    let cfg = c.write(&fx);
    let gk = Gatekeeper::start_with_path(&cfg);
    let admin = gk.admin();

    fx.toggle_on();
    assert!(
        eventually(Duration::from_secs(5), || child_file.exists()),
        "{}",
        gk.log()
    );
    let started = Instant::now();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap().trim().parse::<i32>().unwrap();
    let (pid, child) = (read(&pid_file), read(&child_file));
    assert!(alive(pid) && alive(child));

    let mut conn = Conn::open(IP3, gk.addr).await;
    let mut slowest = Duration::ZERO;
    let mut requests = 0;
    while alive(pid) || alive(child) {
        assert!(
            started.elapsed() < Duration::from_secs(13),
            "the hook still runs after 13 s"
        );
        let t = Instant::now();
        assert_eq!(conn.get("/").await.status, 503);
        slowest = slowest.max(t.elapsed());
        requests += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "killed too early: {took:?}");
    assert!(took <= Duration::from_secs(12), "killed too late: {took:?}");
    assert!(
        requests > 100 && slowest < Duration::from_secs(1),
        "{requests} requests, slowest {slowest:?}"
    );
    assert!(
        gk.wait_for_log("hook killed after 10s", Duration::from_secs(2))
            .is_some(),
        "{}",
        gk.log()
    );
    assert_eq!(
        metric(admin, "gatekeeper_hook_runs_total{kind=\"command\",result=\"timeout\"}").await,
        1.0
    );
}
