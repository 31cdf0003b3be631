//! Area: the fleet switch (etcd key watched by several instances).
//!
//! One switch for a fleet: a real etcd (3.4, `/usr/bin/etcd`) on loopback
//! ports and three real gatekeeper processes watching one key.
//!
//! The tests run one at a time (a process-wide lock): each starts its own
//! etcd and instances, and the latency figures are only meaningful on a quiet
//! 2-core machine. Fixed sleeps appear only where a test must show that
//! nothing changes; everything else polls with a bound.
// The lock that runs these tests one at a time is held for a whole test, across
// awaits: each test has its own runtime on its own thread, so nothing deadlocks.
#![allow(clippy::await_holding_lock)]

mod common;
use common::*;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "/gatekeeper/maintenance";
/// The product's promise for a change to reach every instance.
const FLIP_BOUND: Duration = Duration::from_secs(1);
/// Generous bound for things that wait on a reconnect backoff (at most 2 s) or etcd's own start.
const RECONNECT_BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------

/// Certificates for an etcd served over TLS with client-certificate authentication.
struct EtcdTls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl EtcdTls {
    fn generate(dir: &std::path::Path) -> EtcdTls {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "fleet test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate_for(alg).unwrap()).unwrap();
        let leaf = |names: &[&str], cn: &str| {
            let key = KeyPair::generate_for(alg).unwrap();
            let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.signed_by(&key, &*ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let write = |name: &str, content: &str| {
            let p = dir.join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        let (sc, sk) = leaf(&["localhost", "127.0.0.1"], "etcd");
        let (cc, ck) = leaf(&["gatekeeper"], "gatekeeper");
        EtcdTls {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &sc),
            server_key: write("server-key.pem", &sk),
            client_cert: write("client.pem", &cc),
            client_key: write("client-key.pem", &ck),
        }
    }
}

struct Etcd {
    _dir: tempfile::TempDir,
    tls: Option<EtcdTls>,
    data: PathBuf,
    log: PathBuf,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Etcd {
    fn start() -> Etcd {
        Self::start_with(false)
    }

    /// With `tls`: https only, client certificates required.
    fn start_with(tls: bool) -> Etcd {
        // tmpfs when there is one: etcd fsyncs every write, and disk latency is not what is measured here.
        let dir = match tempfile::Builder::new().prefix("gk-etcd-").tempdir_in("/dev/shm") {
            Ok(d) => d,
            Err(_) => tempfile::Builder::new().prefix("gk-etcd-").tempdir().unwrap(),
        };
        let mut e = Etcd {
            tls: tls.then(|| EtcdTls::generate(dir.path())),
            data: dir.path().join("data"),
            log: dir.path().join("etcd.log"),
            _dir: dir,
            client: stable_port(),
            peer: stable_port(),
            child: None,
        };
        for _ in 0..3 {
            e.spawn();
            let ready = eventually(Duration::from_secs(15), || {
                std::thread::sleep(Duration::from_millis(20));
                e.try_ctl(&["get", "/ready-probe"]).status.success()
                    || e.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some())
            });
            if ready && e.try_ctl(&["get", "/ready-probe"]).status.success() {
                return e;
            }
            // A port taken since stable_port() found it free: etcd exits; others.
            assert!(
                e.log_text().contains("address already in use"),
                "etcd did not become ready\n{}",
                e.log_text()
            );
            e.kill();
            let _ = std::fs::remove_dir_all(&e.data);
            (e.client, e.peer) = (stable_port(), stable_port());
        }
        panic!("etcd: no free ports in 3 attempts\n{}", e.log_text());
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client)
    }

    /// Starts the process (same data dir, same ports on a restart).
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("etcd");
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "default", "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            // A restarted single member elects itself after one election timeout: keep it short.
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd (/usr/bin/etcd)");
        self.child = Some(child);
    }

    /// Polls until etcd answers a read (bounded).
    fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(15), || {
            std::thread::sleep(Duration::from_millis(20));
            self.try_ctl(&["get", "/ready-probe"]).status.success()
        });
        assert!(ok, "etcd did not become ready\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let mut c = self.child.take().expect("etcd not running");
        let _ = c.kill();
        let _ = c.wait();
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("etcd not running").id();
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
    }

    fn try_ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("etcdctl");
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.client_cert)
                .arg("--key")
                .arg(&t.client_key);
        }
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoint(),
                "--dial-timeout=2s",
                "--command-timeout=3s",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run etcdctl")
    }

    fn ctl(&self, args: &[&str]) -> String {
        let o = self.try_ctl(args);
        assert!(o.status.success(), "etcdctl {args:?} failed: {}", show(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn put(&self, value: &str) {
        self.ctl(&["put", KEY, value]);
    }

    fn del(&self) {
        self.ctl(&["del", KEY]);
    }

    /// The store's current revision.
    fn revision(&self) -> i64 {
        let out = self.ctl(&["get", KEY, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A SIGSTOPped etcd must be woken to die cleanly.
            let _ = unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// gatekeeper instances
// ---------------------------------------------------------------------------

struct Node {
    fx: Fixture,
    /// The daemon's config (`[admin] listen` on port 0).
    config: Config,
    cfg: PathBuf,
    /// The same config naming the admin port the running daemon bound, for
    /// the commands (`status` asks the daemon through it).
    cli_cfg: PathBuf,
    gk: Option<Gatekeeper>,
}

impl Node {
    fn start(up: &Upstream, etcd: &Etcd, on_error: &str) -> Node {
        Self::start_with(up, etcd, on_error, |_| {})
    }

    fn start_with(up: &Upstream, etcd: &Etcd, on_error: &str, edit: impl Fn(&mut Config)) -> Node {
        let fx = Fixture::new();
        let mut c = fx.config(&up.url());
        c.set("log.access", "false");
        with_admin(&mut c);
        c.set("fleet.endpoints", &arr(&[&etcd.endpoint()]));
        c.set("fleet.key", &q(KEY));
        c.set("fleet.on_error", &q(on_error));
        edit(&mut c);
        let cfg = c.write(&fx);
        let mut n = Node {
            cli_cfg: fx.path("cli.toml"),
            fx,
            config: c,
            cfg,
            gk: None,
        };
        n.launch();
        n
    }

    /// Starts the daemon on its config and writes the commands' copy.
    fn launch(&mut self) {
        let gk = Gatekeeper::start_with_path(&self.cfg);
        let mut c = self.config.clone();
        c.set("admin.listen", &q(&gk.admin().to_string()));
        std::fs::write(&self.cli_cfg, c.render()).unwrap();
        self.gk = Some(gk);
    }

    fn gk(&self) -> &Gatekeeper {
        self.gk.as_ref().expect("instance running")
    }

    fn log(&self) -> String {
        self.gk().log()
    }

    /// The log once `ready(log)` holds (bounded): a line written just before a
    /// state change the test has seen may still be on its way through the pipe.
    fn log_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if ready(&log) || t0.elapsed() > Duration::from_secs(3) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn cfg(&self) -> &str {
        self.cli_cfg.to_str().unwrap()
    }

    /// SIGTERM, wait for the exit, start again with the same config (new listen port).
    fn restart(&mut self) {
        let mut gk = self.gk.take().unwrap();
        gk.sigterm();
        assert!(gk.wait_exit(Duration::from_secs(10)).is_some(), "no exit after SIGTERM");
        self.launch();
    }

    async fn admin_status(&self) -> serde_json::Value {
        get(LOCALHOST, self.gk().admin(), "/status", &[]).await.json()
    }

    async fn conn(&self) -> Conn {
        Conn::open(LOCALHOST, self.gk().addr).await
    }
}

struct Fleet {
    etcd: Etcd,
    _up: Upstream,
    nodes: Vec<Node>,
}

impl Fleet {
    fn start(on_error: &str) -> Fleet {
        let etcd = Etcd::start();
        let up = Upstream::start();
        let nodes = (0..3).map(|_| Node::start(&up, &etcd, on_error)).collect();
        Fleet { etcd, _up: up, nodes }
    }

    async fn conns(&self) -> Vec<Conn> {
        let mut v = Vec::new();
        for n in &self.nodes {
            v.push(n.conn().await);
        }
        v
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "--- instance {i} ---\n{}",
                    n.gk.as_ref().map(|g| g.log()).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Waits until every instance reports `connected` as wanted on its admin /status.
    async fn wait_connected(&self, want: bool, bound: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let mut all = true;
            for n in &self.nodes {
                all &= n.admin_status().await["fleet"]["connected"] == want;
            }
            if all {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < bound,
                "fleet.connected never became {want} everywhere\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Polls every connection (GET /ping) until each has answered `want`; returns,
/// per instance, when it first did (relative to `t0`). Err after `bound`.
/// The instances are polled concurrently, each about every millisecond, so
/// that one instance's answer does not wait behind the others'.
async fn converge(conns: &mut [Conn], want: u16, t0: Instant, bound: Duration) -> Result<Vec<Duration>, Vec<u16>> {
    let polls = conns.iter_mut().map(|c| async move {
        loop {
            let s = c.get("/ping").await.status;
            if s == want {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > bound {
                return Err(s);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let seen = futures_util::future::join_all(polls).await;
    if seen.iter().all(Result::is_ok) {
        return Ok(seen.into_iter().flatten().collect());
    }
    Err(seen.into_iter().map(|r| r.err().unwrap_or(want)).collect())
}

async fn expect_all(f: &Fleet, conns: &mut [Conn], want: u16, bound: Duration, what: &str) -> Duration {
    match converge(conns, want, Instant::now(), bound).await {
        Ok(d) => d.into_iter().max().unwrap(),
        Err(last) => panic!(
            "{what}: not every instance answers {want} within {bound:?} (last: {last:?})\n{}",
            f.logs()
        ),
    }
}

/// Asserts that every connection keeps answering `want` for `dur` (a test that nothing changes).
async fn stays(f: &Fleet, conns: &mut [Conn], want: &[u16], dur: Duration, what: &str) {
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        for (i, c) in conns.iter_mut().enumerate() {
            let s = c.get("/ping").await.status;
            assert_eq!(s, want[i], "{what}: instance {i} changed\n{}", f.logs());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn message(c: &mut Conn) -> String {
    let r = c.get_with("/ping", &[("accept", "application/json")]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    r.json()["message"].as_str().unwrap().to_string()
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

fn flip_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            (l.contains("maintenance off -> on") || l.contains("maintenance on -> off"))
                && l.contains("source=\"fleet\"")
        })
        .count()
}

struct Stats {
    median: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len();
    Stats {
        median: v[n / 2],
        p99: v[((n * 99).div_ceil(100)).max(1) - 1],
        max: v[n - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn gk_timed(args: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let o = gk(args);
    (o, t0.elapsed())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// `on --fleet` / `off --fleet` flip all three; `status`, `check` and the admin
/// endpoint report the fleet key; the message travels with the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_flips_every_instance() {
    let _s = serial();
    let mut f = Fleet::start("keep");
    let mut conns = f.conns().await;
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "start").await;
    let cfg = f.nodes[0].cfg();

    let o = gk(&["on", "--fleet", "-c", cfg, "--message", "Upgrading the database"]);
    assert!(o.status.success(), "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("maintenance: on for the fleet ({KEY}, revision")),
        "{out}"
    );
    let d = expect_all(&f, &mut conns, 503, FLIP_BOUND, "on --fleet").await;
    eprintln!("on --fleet: slowest of three after the command returned: {}", ms(d));
    for c in conns.iter_mut() {
        assert_eq!(message(c).await, "Upgrading the database");
    }
    // The local toggle file is untouched: this is the fleet's switch.
    assert!(!f.nodes[0].fx.toggle().exists());
    // etcdctl sees the same TOML a toggle file holds.
    let v = f.etcd.ctl(&["get", KEY, "--print-value-only"]);
    assert!(v.contains("message = \"Upgrading the database\""), "{v}");

    let o = gk(&["status", "-c", cfg]);
    let out = stdout(&o);
    let rev = f.etcd.revision();
    assert!(
        out.contains(&format!("fleet: on ({KEY}, revision {rev})")),
        "{}",
        show(&o)
    );

    let st = f.nodes[1].admin_status().await;
    assert_eq!(st["maintenance"], "on", "{st}");
    assert_eq!(st["source"], "fleet", "{st}");
    assert_eq!(st["fleet"]["connected"], true, "{st}");
    assert_eq!(st["fleet"]["on"], true, "{st}");
    assert_eq!(st["fleet"]["revision"], rev, "{st}");
    assert!(st["fleet"]["last_change"].is_string(), "{st}");

    let o = gk(&["check", "-c", cfg]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr)).contains("etcd reachable"),
        "{}",
        show(&o)
    );

    let o = gk(&["off", "--fleet", "-c", cfg]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(stdout(&o).contains("maintenance: off for the fleet"), "{}", show(&o));
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "off --fleet").await;
    let out = stdout(&gk(&["status", "-c", cfg]));
    assert!(out.contains(&format!("fleet: off ({KEY}, revision")), "{out}");
    // Idempotent.
    assert!(gk(&["off", "--fleet", "-c", cfg]).status.success());

    // The persisted last known state follows (written after each change).
    for n in &f.nodes {
        let p = gatekeeper::fleet::persist_path(&n.fx.toggle());
        assert!(
            eventually(Duration::from_secs(2), || std::fs::read_to_string(&p)
                .is_ok_and(|t| t.contains("\"on\":false"))),
            "{}",
            p.display()
        );
    }
    // One log line per flip, with its source and revision.
    for n in &f.nodes {
        let log = n.log_when(|l| flip_lines(l) >= 2);
        assert_eq!(flip_lines(&log), 2, "{log}");
        assert!(
            log.lines().any(|l| l.contains("maintenance off -> on")
                && l.contains("source=\"fleet\"")
                && l.contains("revision=")),
            "{log}"
        );
    }

    // A flip is applied first and written to `<toggle>.fleet` after, yet written before
    // the daemon exits: a stop right after a flip still leaves it there.
    f.etcd.put("message = \"last words\"");
    expect_all(&f, &mut conns[2..], 503, FLIP_BOUND, "fleet on, before the stop").await;
    let mut gk = f.nodes[2].gk.take().unwrap();
    gk.sigterm();
    assert!(gk.wait_exit(Duration::from_secs(10)).is_some(), "no exit after SIGTERM");
    let p = gatekeeper::fleet::persist_path(&f.nodes[2].fx.toggle());
    let kept = std::fs::read_to_string(&p).unwrap();
    assert!(kept.contains("last words") && kept.contains("\"on\":true"), "{kept}");
}

/// Writes made with etcdctl flip all three; the slowest instance's delay over 50 flips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_flips_reach_all_three_quickly() {
    let _s = serial();
    let f = Fleet::start("keep");
    let mut conns = f.conns().await;
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "start").await;

    const FLIPS: usize = 50;
    let (mut from_start, mut from_ack, mut ctl) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..FLIPS {
        let on = i % 2 == 0;
        let want = if on { 503 } else { 200 };
        let endpoint = f.etcd.endpoint();
        let t0 = Instant::now();
        // etcdctl runs beside the polling, as an operator's would.
        let writer = std::thread::spawn(move || {
            let mut cmd = Command::new("etcdctl");
            cmd.env("ETCDCTL_API", "3").args(["--endpoints", &endpoint]);
            if on {
                cmd.args(["put", KEY, &format!("message = \"flip {i}\"")]);
            } else {
                cmd.args(["del", KEY]);
            }
            let o = cmd.stdin(Stdio::null()).output().unwrap();
            (o, Instant::now())
        });
        let seen = match converge(&mut conns, want, t0, Duration::from_secs(3)).await {
            Ok(s) => s,
            Err(last) => panic!(
                "flip {i}: not every instance answers {want} (last {last:?})\n{}",
                f.logs()
            ),
        };
        let (o, acked) = writer.join().unwrap();
        assert!(o.status.success(), "{}", show(&o));
        let slowest = seen.into_iter().max().unwrap();
        let ack = acked - t0;
        from_start.push(slowest);
        from_ack.push(slowest.saturating_sub(ack));
        ctl.push(ack);
    }
    let late = from_ack.iter().filter(|d| **d >= FLIP_BOUND).count();
    let (s, a, c) = (stats(from_start), stats(from_ack), stats(ctl));
    eprintln!(
        "fleet flip, slowest of 3 instances over {FLIPS} etcdctl writes:\n  \
         from etcdctl start: median {}, p99 {}, max {}\n  \
         after etcdctl returned: median {}, p99 {}, max {}\n  \
         (etcdctl itself: median {}, max {})",
        ms(s.median),
        ms(s.p99),
        ms(s.max),
        ms(a.median),
        ms(a.p99),
        ms(a.max),
        ms(c.median),
        ms(c.max)
    );
    // etcdctl's own start (a Go binary, tens of ms; much more on a loaded machine) is not
    // gatekeeper's: the promise is counted from the write, which etcdctl has made when it returns.
    // On a loaded 2-core machine a single flip can wait more than a second for the CPU (seen:
    // 1.46 s with a median of 2.2 ms): two such stalls in 50 are the machine's, a third or a
    // flip three times over the promise is not.
    assert!(
        late <= 2 && a.max < 3 * FLIP_BOUND,
        "{late} of {FLIPS} flips took {} or more after etcdctl returned, the slowest {}",
        ms(FLIP_BOUND),
        ms(a.max)
    );

    // The same without a process start in the way: writes from an in-process etcd client,
    // timed from the moment the write is sent. Two views of "flipped" per instance: when it
    // applied the change (the timestamp of its log line, written right after the new state
    // is swapped in: no polling in it), and when it answered the new way (polled).
    let mut client = etcd_client::Client::connect([f.etcd.endpoint()], None).await.unwrap();
    let (mut direct, mut commit, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..FLIPS {
        let on = i % 2 == 0;
        let sent = jiff::Timestamp::now();
        let t0 = Instant::now();
        let header = if on {
            client
                .put(KEY, format!("message = \"direct {i}\""), None)
                .await
                .unwrap()
                .header()
                .cloned()
        } else {
            client.delete(KEY, None).await.unwrap().header().cloned()
        };
        let acked = jiff::Timestamp::now();
        commit.push(t0.elapsed());
        writes.push((header.unwrap().revision(), sent, acked));
        let want = if on { 503 } else { 200 };
        match converge(&mut conns, want, t0, Duration::from_secs(3)).await {
            Ok(seen) => direct.push(seen.into_iter().max().unwrap()),
            Err(last) => panic!(
                "direct flip {i}: not every instance answers {want} (last {last:?})\n{}",
                f.logs()
            ),
        }
    }

    let mut logs = Vec::new();
    for (i, n) in f.nodes.iter().enumerate() {
        let log = n.log_when(|l| flip_lines(l) >= 2 * FLIPS);
        assert_eq!(
            flip_lines(&log),
            2 * FLIPS,
            "instance {i}: one log line per flip\n{log}"
        );
        assert!(!log.contains("lost the connection"), "{log}");
        logs.push(log);
    }
    let (mut applied, mut after_ack) = (Vec::new(), Vec::new());
    for (rev, sent, acked) in &writes {
        let slowest = logs
            .iter()
            .map(|log| applied_at(log, *rev).unwrap_or_else(|| panic!("no flip line for revision {rev}\n{log}")))
            .max()
            .unwrap();
        applied.push(since(*sent, slowest));
        after_ack.push(since(*acked, slowest));
    }
    let (d, p, k, w) = (stats(direct), stats(applied), stats(after_ack), stats(commit));
    eprintln!(
        "  written in-process (etcd-client), from sending the write:\n    \
         slowest applied (log timestamp): median {}, p99 {}, max {}\n    \
         slowest answered the new way (polled): median {}, p99 {}, max {}\n  \
         from etcd's answer to the write, slowest applied: median {}, p99 {}, max {}\n  \
         (the write's own round trip to etcd: median {}, max {})",
        ms(p.median),
        ms(p.p99),
        ms(p.max),
        ms(d.median),
        ms(d.p99),
        ms(d.max),
        ms(k.median),
        ms(k.p99),
        ms(k.max),
        ms(w.median),
        ms(w.max)
    );
    assert!(d.max < FLIP_BOUND, "slowest flip took {}", ms(d.max));
}

/// When an instance applied revision `rev` of the key: the timestamp of its
/// fleet flip line for that revision.
fn applied_at(log: &str, rev: i64) -> Option<jiff::Timestamp> {
    let needle = format!(" revision={rev} ");
    log.lines()
        .filter(|l| flip_lines(l) == 1 && l.contains(&needle))
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
}

/// `to - from`, never negative: a write's revision can be applied before its answer arrives.
fn since(from: jiff::Timestamp, to: jiff::Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// The local toggle takes one host out; the fleet key all of them; the local
/// content wins where both are on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_toggle_takes_one_host_out() {
    let _s = serial();
    let f = Fleet::start("keep");
    let mut conns = f.conns().await;
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "start").await;
    let local = &f.nodes[0];

    std::fs::write(local.fx.toggle(), "message = \"host 0 is being reimaged\"\n").unwrap();
    expect_all(&f, &mut conns[..1], 503, FLIP_BOUND, "local toggle").await;
    stays(
        &f,
        &mut conns,
        &[503, 200, 200],
        Duration::from_millis(300),
        "only host 0 is out",
    )
    .await;

    f.etcd.put("message = \"fleet-wide maintenance\"");
    expect_all(&f, &mut conns, 503, FLIP_BOUND, "fleet on").await;
    assert_eq!(
        message(&mut conns[0]).await,
        "host 0 is being reimaged",
        "local content wins"
    );
    assert_eq!(message(&mut conns[1]).await, "fleet-wide maintenance");
    let st = local.admin_status().await;
    assert_eq!(st["source"], "file", "{st}");

    f.etcd.del();
    expect_all(&f, &mut conns[1..], 200, FLIP_BOUND, "fleet off").await;
    stays(
        &f,
        &mut conns,
        &[503, 200, 200],
        Duration::from_millis(300),
        "host 0 stays out",
    )
    .await;
    // The fleet flip did not change host 0's state: no fleet flip line there.
    assert_eq!(flip_lines(&local.log()), 0, "{}", local.log());

    std::fs::remove_file(local.fx.toggle()).unwrap();
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "local toggle removed").await;
}

/// etcd killed: instances keep their state and serve; the CLI fails cleanly and
/// fast; an instance restarted meanwhile starts in the last known state; etcd
/// restarted: a change made right away reaches all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_keeps_last_state() {
    let _s = serial();
    let mut f = Fleet::start("keep");
    let mut conns = f.conns().await;
    f.etcd.put("message = \"before the outage\"");
    expect_all(&f, &mut conns, 503, FLIP_BOUND, "fleet on").await;

    f.etcd.kill();
    f.wait_connected(false, Duration::from_secs(5)).await;
    stays(
        &f,
        &mut conns,
        &[503, 503, 503],
        Duration::from_millis(500),
        "etcd down, on_error = keep",
    )
    .await;
    for c in conns.iter_mut() {
        assert_eq!(message(c).await, "before the outage");
    }
    let st = f.nodes[0].admin_status().await;
    assert_eq!(st["fleet"]["connected"], false, "{st}");
    assert!(st["fleet"]["error"].is_string(), "{st}");

    let cfg = f.nodes[0].cfg().to_string();
    for args in [
        &["on", "--fleet", "-c", &cfg, "--message", "x"][..],
        &["off", "--fleet", "-c", &cfg][..],
    ] {
        let (o, took) = gk_timed(args);
        assert!(!o.status.success(), "{args:?} succeeded with etcd down: {}", show(&o));
        assert!(took < Duration::from_millis(3500), "{args:?} took {took:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("etcd unreachable at") && err.contains(&f.etcd.endpoint()),
            "{}",
            show(&o)
        );
        eprintln!(
            "{args:?} with etcd down: exit {:?} after {}: {}",
            o.status.code(),
            ms(took),
            err.trim()
        );
    }
    let (o, took) = gk_timed(&["status", "-c", &cfg]);
    assert!(stdout(&o).contains("fleet: unreachable ("), "{}", show(&o));
    assert!(took < Duration::from_millis(3500), "status took {took:?}");
    let o = gk(&["check", "-c", &cfg]);
    assert!(o.status.success(), "check must not fail for etcd alone: {}", show(&o));

    // A restart during the outage starts in the last known state.
    f.nodes[2].restart();
    conns[2] = f.nodes[2].conn().await;
    assert_eq!(conns[2].get("/ping").await.status, 503, "{}", f.nodes[2].log());
    assert_eq!(message(&mut conns[2]).await, "before the outage");

    // etcd back (same data, same port); a change made right away reaches all three.
    let t_start = Instant::now();
    f.etcd.spawn();
    f.etcd.wait_ready();
    let t_ready = Instant::now();
    f.etcd.del();
    let t_write = Instant::now();
    let conv = expect_all(&f, &mut conns, 200, RECONNECT_BOUND, "change right after the restart").await;
    eprintln!(
        "etcd restart: ready {} after start; change converged on all three {} after the write ({} after etcd started)",
        ms(t_ready - t_start),
        ms(conv),
        ms(t_write - t_start + conv)
    );
    f.wait_connected(true, RECONNECT_BOUND).await;

    // And the watch works again.
    f.etcd.put("");
    expect_all(&f, &mut conns, 503, FLIP_BOUND, "after the reconnect").await;

    // Loss and regain logged once each per instance (not per retry).
    for (i, n) in f.nodes.iter().enumerate().take(2) {
        let log = n.log_when(|l| count(l, "connection to etcd regained") >= 1);
        assert_eq!(count(&log, "lost the connection to etcd"), 1, "instance {i}\n{log}");
        assert_eq!(count(&log, "connection to etcd regained"), 1, "instance {i}\n{log}");
    }
    let log = f.nodes[2].log_when(|l| count(l, "cannot reach etcd") >= 1);
    assert_eq!(count(&log, "cannot reach etcd"), 1, "restarted instance\n{log}");
    assert!(log.contains("last known fleet state: on"), "{log}");
}

/// Changes made while the instances are disconnected (and then compacted away)
/// are not lost: every instance converges to the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_events_converge() {
    let _s = serial();
    let mut f = Fleet::start("keep");
    let mut conns = f.conns().await;
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "start").await;

    f.etcd.kill();
    f.wait_connected(false, Duration::from_secs(5)).await;
    f.etcd.spawn();
    f.etcd.wait_ready();
    f.etcd.put("message = \"one\"");
    f.etcd.del();
    f.etcd.put("message = \"two\"");
    f.etcd.put("message = \"three\"");
    let rev = f.etcd.revision();
    f.etcd.ctl(&["compact", &rev.to_string()]);
    let t0 = Instant::now();
    expect_all(&f, &mut conns, 503, RECONNECT_BOUND, "after missed events").await;
    for (i, c) in conns.iter_mut().enumerate() {
        // Bounded: the instance may have caught "two" first and get "three" a moment later.
        let t = Instant::now();
        while message(c).await != "three" {
            assert!(t.elapsed() < FLIP_BOUND, "instance {i} stays behind\n{}", f.logs());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    eprintln!(
        "missed events: all three at the last value {} after the writes",
        ms(t0.elapsed())
    );
    f.wait_connected(true, RECONNECT_BOUND).await;
    for n in &f.nodes {
        assert_eq!(n.admin_status().await["fleet"]["revision"], rev);
    }

    f.etcd.del();
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "watch resumed").await;
}

/// `on_error = "off"`: etcd unreachable means the fleet key counts as absent (fail open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_off_fails_open() {
    let _s = serial();
    let mut f = Fleet::start("off");
    let mut conns = f.conns().await;
    f.etcd.put("message = \"fleet maintenance\"");
    expect_all(&f, &mut conns, 503, FLIP_BOUND, "fleet on").await;

    f.etcd.kill();
    expect_all(&f, &mut conns, 200, Duration::from_secs(5), "etcd down, on_error = off").await;
    for n in &f.nodes {
        let log = n.log_when(|l| count(l, "on_error = \"off\"") >= 1);
        assert_eq!(count(&log, "on_error = \"off\""), 1, "said once in the log\n{log}");
    }
    // A local toggle still works.
    f.nodes[1].fx.toggle_on();
    expect_all(&f, &mut conns[1..2], 503, FLIP_BOUND, "local toggle during the outage").await;
    f.nodes[1].fx.toggle_off();
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "local toggle off").await;

    // Restarted during the outage: open from the start, whatever the last known state.
    f.nodes[0].restart();
    conns[0] = f.nodes[0].conn().await;
    assert_eq!(conns[0].get("/ping").await.status, 200, "{}", f.nodes[0].log());
    assert!(
        f.nodes[0].log().contains("last known fleet state: on"),
        "{}",
        f.nodes[0].log()
    );

    f.etcd.spawn();
    f.etcd.wait_ready();
    expect_all(
        &f,
        &mut conns,
        503,
        RECONNECT_BOUND,
        "etcd back: the key is still there",
    )
    .await;
}

/// `on_error = "on"`: etcd unreachable means maintenance (fail closed). etcd is
/// frozen (SIGSTOP), not killed: its sockets stay open, so only the keep-alive
/// on the watch connection can notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_on_fails_closed() {
    let _s = serial();
    let mut f = Fleet::start("on");
    let mut conns = f.conns().await;
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "start").await;

    let t0 = Instant::now();
    f.etcd.signal(libc::SIGSTOP);
    let d = expect_all(
        &f,
        &mut conns,
        503,
        Duration::from_secs(12),
        "etcd frozen, on_error = on",
    )
    .await;
    eprintln!(
        "frozen etcd noticed (keep-alive) and failed closed on all three after {}",
        ms(d)
    );
    assert!(
        t0.elapsed() > Duration::from_secs(1),
        "nothing should notice a frozen etcd at once"
    );
    for n in &f.nodes {
        let log = n.log_when(|l| count(l, "on_error = \"on\"") >= 1 && count(l, "maintenance off -> on") >= 1);
        assert_eq!(count(&log, "on_error = \"on\""), 1, "said once in the log\n{log}");
        assert_eq!(count(&log, "maintenance off -> on"), 1, "{log}");
    }
    let (o, took) = gk_timed(&["on", "--fleet", "-c", f.nodes[0].cfg()]);
    assert!(
        !o.status.success() && took < Duration::from_millis(3500),
        "{took:?} {}",
        show(&o)
    );

    // Restarted during the outage: closed from the start. SIGKILL ends the
    // stopped etcd as it is: continuing it first would let it apply the
    // `on --fleet` write that timed out above, still in its socket buffer.
    f.etcd.kill();
    f.nodes[1].restart();
    conns[1] = f.nodes[1].conn().await;
    assert_eq!(conns[1].get("/ping").await.status, 503, "{}", f.nodes[1].log());

    f.etcd.spawn();
    f.etcd.wait_ready();
    expect_all(&f, &mut conns, 200, RECONNECT_BOUND, "etcd back: no key").await;
}

/// etcd with authentication: instances read with a read-only user and follow
/// the key; writing needs a user allowed to; a bad password is reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_auth_read_only_instances() {
    let _s = serial();
    let etcd = Etcd::start();
    for args in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["role", "add", "gatekeeper-read"],
        &["role", "grant-permission", "gatekeeper-read", "read", KEY],
        &["user", "add", "gatekeeper", "--new-user-password=gkpw"],
        &["user", "grant-role", "gatekeeper", "gatekeeper-read"],
        &["role", "add", "gatekeeper-switch"],
        &["role", "grant-permission", "gatekeeper-switch", "readwrite", KEY],
        &["user", "add", "ops", "--new-user-password=opspw"],
        &["user", "grant-role", "ops", "gatekeeper-switch"],
        &["auth", "enable"],
    ] {
        etcd.ctl(args);
    }
    let up = Upstream::start();
    let user = |u: &'static str, p: &'static str| {
        move |c: &mut Config| {
            c.set("fleet.username", &q(u));
            c.set("fleet.password", &q(p));
        }
    };
    let node = Node::start_with(&up, &etcd, "keep", user("gatekeeper", "gkpw"));
    let ops = Node::start_with(&up, &etcd, "keep", user("ops", "opspw"));
    let wrong = Fixture::new();
    let mut c = wrong.config(&up.url());
    c.set("fleet.endpoints", &arr(&[&etcd.endpoint()]));
    user("gatekeeper", "not the password")(&mut c);
    let wrong_cfg = c.write(&wrong);

    let mut conns = vec![node.conn().await];
    let f = Fleet {
        etcd,
        _up: up,
        nodes: vec![],
    };
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "start").await;

    let o = gk(&["on", "--fleet", "-c", node.cfg()]);
    assert!(!o.status.success(), "a read-only user wrote the key: {}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refused the request") && err.contains("permission denied"),
        "{}",
        show(&o)
    );

    let o = gk(&["on", "--fleet", "-c", ops.cfg(), "--message", "ops says so"]);
    assert!(o.status.success(), "{}", show(&o));
    expect_all(&f, &mut conns, 503, FLIP_BOUND, "on --fleet as ops").await;
    assert_eq!(message(&mut conns[0]).await, "ops says so");

    let out = stdout(&gk(&["status", "-c", wrong_cfg.to_str().unwrap()]));
    assert!(
        out.contains("fleet: error (") && out.contains("authentication failed"),
        "{out}"
    );

    assert!(gk(&["off", "--fleet", "-c", ops.cfg()]).status.success());
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "off --fleet as ops").await;
}

/// etcd over TLS with client certificates (`[fleet.tls]`): instances follow the
/// key and the CLI writes it; without the CA, nothing is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls() {
    let _s = serial();
    let etcd = Etcd::start_with(true);
    assert!(etcd.endpoint().starts_with("https://"));
    let up = Upstream::start();
    let t = etcd.tls.as_ref().unwrap();
    let (ca, cert, key) = (
        t.ca.display().to_string(),
        t.client_cert.display().to_string(),
        t.client_key.display().to_string(),
    );
    let node = Node::start_with(&up, &etcd, "keep", |c| {
        c.set("fleet.tls.ca", &q(&ca));
        c.set("fleet.tls.cert", &q(&cert));
        c.set("fleet.tls.key", &q(&key));
    });
    // (Written as dotted keys `tls.ca = ...` under [fleet]: the same TOML as a [fleet.tls] table.)
    let mut conns = vec![node.conn().await];
    let nocert = Fixture::new();
    let mut c = nocert.config(&up.url());
    c.set("fleet.endpoints", &arr(&[&etcd.endpoint()]));
    let nocert_cfg = c.write(&nocert);
    let f = Fleet {
        etcd,
        _up: up,
        nodes: vec![],
    };
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "start").await;
    // Written once the TLS connection and the watch are up, which the 200s
    // above (maintenance is off before as after) do not wait for.
    assert!(
        node.gk()
            .wait_for_log("watching the fleet key", RECONNECT_BOUND)
            .is_some(),
        "{}",
        node.log()
    );

    let o = gk(&["on", "--fleet", "-c", node.cfg()]);
    assert!(o.status.success(), "{}", show(&o));
    expect_all(&f, &mut conns, 503, FLIP_BOUND, "on --fleet over TLS").await;
    f.etcd.del();
    expect_all(&f, &mut conns, 200, FLIP_BOUND, "etcdctl del over TLS").await;

    // Without a CA nothing would be trusted (no system store with rustls + ring):
    // the config says so up front instead of failing at every connection.
    let o = gk(&["check", "-c", nocert_cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fleet.tls.ca: https:// endpoints need [fleet.tls] ca"),
        "{}",
        show(&o)
    );
}

/// A free port below the ephemeral range (32768+ here), for etcd: its URLs
/// name fixed ports (it takes no :0), and it is restarted on the same ones.
/// Below the ephemeral range no outgoing connection and no bind to port 0 can
/// take it in between; only a process that asks for this very number could,
/// and then etcd fails to start and [`Etcd::start_with`] tries other ports.
fn stable_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000 after 200 tries");
}
