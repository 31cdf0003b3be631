//! Shared harness for the gatekeeper integration tests.
//!
//! * [`Fixture`]: a temp directory with a toggle directory and a config writer
//!   (base config + per-test overrides).
//! * [`Gatekeeper`]: the daemon process (start, listening address, stderr log,
//!   `wait_for_log`, SIGTERM, SIGKILL on drop).
//! * [`Upstream`]: an in-process upstream application on its own tokio runtime
//!   (TCP on 127.0.0.1:0, optionally a unix socket).
//! * Client helpers: [`get`], [`Conn`] (one kept-alive HTTP/1.1 connection),
//!   [`raw`] / [`raw_response`] for hand-written requests, [`eventually`].
#![allow(dead_code)]

pub mod syncapp;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub const BIN: &str = env!("CARGO_BIN_EXE_gatekeeper");
pub const TOGGLE_NAME: &str = "maintenance-mode-on";
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
pub const IP3: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

// ---------------------------------------------------------------------------
// Checksums and deterministic payloads
// ---------------------------------------------------------------------------

/// Streaming 64-bit FNV-1a.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

pub fn fnv_hex(data: &[u8]) -> String {
    let mut f = Fnv::default();
    f.update(data);
    f.hex()
}

pub const CHUNK: usize = 64 * 1024;

fn base_block() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        (0..CHUNK)
            .map(|j| (j.wrapping_mul(7) ^ (j >> 8) ^ 0x5a) as u8)
            .collect()
    })
}

/// Block `idx` (64 KiB aligned) of the deterministic pattern, truncated to `len`.
/// The first 8 bytes of every block carry its index, so reordered, dropped or
/// duplicated chunks change the checksum.
pub fn pattern_block(idx: u64, len: usize) -> Bytes {
    let mut v = base_block()[..len].to_vec();
    let tag = idx.to_le_bytes();
    let n = len.min(8);
    v[..n].copy_from_slice(&tag[..n]);
    Bytes::from(v)
}

/// Checksum of the first `n` bytes of the pattern.
pub fn pattern_fnv(n: u64) -> String {
    let mut f = Fnv::default();
    let mut off = 0u64;
    while off < n {
        let len = ((n - off) as usize).min(CHUNK);
        f.update(&pattern_block(off / CHUNK as u64, len));
        off += len as u64;
    }
    f.hex()
}

/// A body that streams `n` bytes of the pattern in 64 KiB chunks.
pub fn pattern_body(n: u64) -> Body {
    let s = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= n {
            return None;
        }
        let len = ((n - off) as usize).min(CHUNK);
        let chunk = pattern_block(off / CHUNK as u64, len);
        Some((Ok::<_, BoxError>(Frame::data(chunk)), off + len as u64))
    });
    BodyExt::boxed(StreamBody::new(s))
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Polls `f` every 3 ms until it returns true or `timeout` elapses.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Async version of [`eventually`].
pub async fn eventually_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

// ---------------------------------------------------------------------------
// Fixture + config writer
// ---------------------------------------------------------------------------

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("gatekeeper-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("toggle")).unwrap();
        Fixture { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn toggle_dir(&self) -> PathBuf {
        self.path("toggle")
    }

    /// Default toggle path: `<tmp>/toggle/maintenance-mode-on`.
    pub fn toggle(&self) -> PathBuf {
        self.toggle_dir().join(TOGGLE_NAME)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("gatekeeper.toml")
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Base config for an upstream URL (`http://…` or `unix:…`).
    pub fn config(&self, upstream_url: &str) -> Config {
        let mut c = Config::default();
        c.set("listen", r#"["127.0.0.1:0"]"#);
        c.set("upstream.url", &q(upstream_url));
        c.set("upstream.connect_timeout", &q("2s"));
        c.set("upstream.timeout", &q("10s"));
        c.set("maintenance.toggle", &q(self.toggle().to_str().unwrap()));
        c.set("maintenance.retry_after", &q("10m"));
        c.set("log.level", &q("info"));
        c.set("log.format", &q("text"));
        c.set("log.access", "true");
        c
    }

    pub fn toggle_on(&self) {
        std::fs::write(self.toggle(), b"").unwrap();
    }

    pub fn toggle_off(&self) {
        match std::fs::remove_file(self.toggle()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove toggle: {e}"),
        }
    }
}

/// A fixture, an in-process upstream and the daemon in front of it.
pub struct Env {
    pub fx: Fixture,
    pub up: Upstream,
    pub gk: Gatekeeper,
}

impl Env {
    /// The base config for `up`, changed by `edit`, and the daemon started on it.
    pub fn launch(fx: Fixture, up: Upstream, edit: impl FnOnce(&Fixture, &Upstream, &mut Config)) -> Env {
        let mut c = fx.config(&up.url());
        edit(&fx, &up, &mut c);
        let gk = Gatekeeper::start(&fx, &c);
        Env { fx, up, gk }
    }

    /// [`Env::launch`] with a new fixture and a TCP upstream.
    pub fn start(edit: impl FnOnce(&Fixture, &mut Config)) -> Env {
        Self::launch(Fixture::new(), Upstream::start(), |fx, _, c| edit(fx, c))
    }
}

/// TOML string literal.
pub fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// TOML array of strings.
pub fn arr(items: &[&str]) -> String {
    let v: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", v.join(", "))
}

/// A config as ordered (section, key, raw TOML value) entries.
#[derive(Clone, Debug, Default)]
pub struct Config {
    top: Vec<(String, String)>,
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Config {
    /// `key` is `name` (top level) or `section.name`; `value` is raw TOML.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        match key.split_once('.') {
            None => {
                if let Some(e) = self.top.iter_mut().find(|(k, _)| k == key) {
                    e.1 = value.to_string();
                } else {
                    self.top.push((key.to_string(), value.to_string()));
                }
            }
            Some((sec, name)) => {
                let idx = match self.sections.iter().position(|(s, _)| s == sec) {
                    Some(i) => i,
                    None => {
                        self.sections.push((sec.to_string(), Vec::new()));
                        self.sections.len() - 1
                    }
                };
                let entries = &mut self.sections[idx].1;
                if let Some(e) = entries.iter_mut().find(|(k, _)| k == name) {
                    e.1 = value.to_string();
                } else {
                    entries.push((name.to_string(), value.to_string()));
                }
            }
        }
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        match key.split_once('.') {
            None => self.top.retain(|(k, _)| k != key),
            Some((sec, name)) => {
                for (s, entries) in &mut self.sections {
                    if s == sec {
                        entries.retain(|(k, _)| k != name);
                    }
                }
            }
        }
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.top {
            let _ = writeln!(out, "{k} = {v}");
        }
        for (sec, entries) in &self.sections {
            let _ = writeln!(out, "\n[{sec}]");
            for (k, v) in entries {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
        out
    }

    /// Writes the config to `<fixture>/gatekeeper.toml` and returns the path.
    pub fn write(&self, fx: &Fixture) -> PathBuf {
        let p = fx.config_path();
        std::fs::write(&p, self.render()).unwrap();
        p
    }
}

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
pub fn loc(text: &str, needle: &str) -> (usize, usize) {
    let off = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in config:\n{text}"));
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

// ---------------------------------------------------------------------------
// The daemon process
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LogBuf {
    text: String,
    closed: bool,
}

#[derive(Clone, Default)]
pub struct SharedLog(Arc<(Mutex<LogBuf>, Condvar)>);

impl SharedLog {
    fn push_line(&self, line: &str) {
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        g.text.push_str(&strip_ansi(line));
        if !line.ends_with('\n') {
            g.text.push('\n');
        }
        cv.notify_all();
    }
    fn close(&self) {
        let (m, cv) = &*self.0;
        m.lock().unwrap().closed = true;
        cv.notify_all();
    }
    pub fn text(&self) -> String {
        self.0 .0.lock().unwrap().text.clone()
    }
    /// Waits until `re` matches somewhere in the log; returns the matched text
    /// (capture group 1 when present). None on timeout or when the stream closed
    /// without a match.
    pub fn wait_for(&self, re: &regex::Regex, timeout: Duration) -> Option<String> {
        let (m, cv) = &*self.0;
        let deadline = Instant::now() + timeout;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(c) = re.captures(&g.text) {
                let m = c.get(1).or_else(|| c.get(0)).unwrap();
                return Some(m.as_str().to_string());
            }
            if g.closed {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }
    fn spawn_reader(&self, r: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => log.push_line(&String::from_utf8_lossy(&buf)),
                }
            }
            log.close();
        })
    }
}

pub fn strip_ansi(s: &str) -> String {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\x1b\[[0-9;]*[A-Za-z]").unwrap())
        .replace_all(s, "")
        .into_owned()
}

pub struct Gatekeeper {
    child: Child,
    pub config: PathBuf,
    /// First listener.
    pub addr: SocketAddr,
    /// All listeners with their kind ("http", …), in log order.
    pub listeners: Vec<(SocketAddr, String)>,
    pub stderr: SharedLog,
    pub stdout: SharedLog,
    exited: Option<ExitStatus>,
}

impl Gatekeeper {
    /// Writes `cfg` into the fixture and starts `gatekeeper run -c <cfg>`;
    /// waits up to 10 s for `ready`.
    pub fn start(fx: &Fixture, cfg: &Config) -> Gatekeeper {
        let path = cfg.write(fx);
        Self::start_with_path(&path)
    }

    pub fn start_with_path(config: &Path) -> Gatekeeper {
        match Self::try_start(config, Duration::from_secs(10)) {
            Ok(gk) => gk,
            Err(msg) => panic!("{msg}"),
        }
    }

    pub fn try_start(config: &Path, timeout: Duration) -> Result<Gatekeeper, String> {
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("GATEKEEPER_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {BIN}: {e}"))?;
        let stderr = SharedLog::default();
        let stdout = SharedLog::default();
        stderr.spawn_reader(child.stderr.take().unwrap());
        stdout.spawn_reader(child.stdout.take().unwrap());
        let ready = regex::Regex::new(r"\bready\b").unwrap();
        let ok = stderr.wait_for(&ready, timeout).is_some();
        if !ok {
            let _ = child.kill();
            let status = child.wait();
            // let the reader thread collect the tail of the output
            let _ = stderr.wait_for(&regex::Regex::new("$^").unwrap(), Duration::from_millis(200));
            return Err(format!(
                "gatekeeper did not become ready within {timeout:?} (exit: {status:?})\n--- config {} ---\n{}\n--- stderr ---\n{}--- stdout ---\n{}",
                config.display(),
                std::fs::read_to_string(config).unwrap_or_default(),
                stderr.text(),
                stdout.text()
            ));
        }
        let re = regex::Regex::new(r"listening on (\S+) \((\w+)\)").unwrap();
        let text = stderr.text();
        let listeners: Vec<(SocketAddr, String)> = re
            .captures_iter(&text)
            .map(|c| {
                let a: SocketAddr = c[1]
                    .parse()
                    .unwrap_or_else(|e| panic!("bad listen addr {:?}: {e}\n{text}", &c[1]));
                (a, c[2].to_string())
            })
            .collect();
        if listeners.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no `listening on ADDR (KIND)` line before ready:\n{text}"));
        }
        Ok(Gatekeeper {
            child,
            config: config.to_path_buf(),
            addr: listeners[0].0,
            listeners,
            stderr,
            stdout,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn log(&self) -> String {
        self.stderr.text()
    }

    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Option<String> {
        let re = regex::Regex::new(pattern).expect("log regex");
        self.stderr.wait_for(&re, timeout)
    }

    /// Waits until `needle` appears in at least `n` lines of the log.
    pub fn wait_count(&self, needle: &str, n: usize, bound: Duration) -> bool {
        eventually(bound, || count(&self.log(), needle) >= n)
    }

    /// The admin endpoint's address.
    pub fn admin(&self) -> SocketAddr {
        self.listener("admin")
    }

    /// The first listener of `kind` ("http", "https", "admin") the log named.
    pub fn listener(&self, kind: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(_, k)| k == kind)
            .unwrap_or_else(|| panic!("no {kind} listener: {:?}\n{}", self.listeners, self.log()))
            .0
    }

    pub fn signal(&self, sig: libc::c_int) {
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({}, {sig})", self.child.id());
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM)
    }

    /// Waits (polling) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM")
    }

    pub fn vm_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS")
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let num = rest.trim().trim_end_matches("kB").trim();
            return num.parse().expect("kB value");
        }
    }
    panic!("{field} not in /proc/{pid}/status");
}

impl Drop for Gatekeeper {
    fn drop(&mut self) {
        if self.exited.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary to completion with a 20 s guard.
pub fn gk(args: &[&str]) -> Output {
    gk_cmd(args, None, &[])
}

pub fn gk_cmd(args: &[&str], cwd: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("GATEKEEPER_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn gatekeeper");
    let out_log = SharedLog::default();
    let err_log = SharedLog::default();
    let t1 = out_log.spawn_reader(child.stdout.take().unwrap());
    let t2 = err_log.spawn_reader(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gatekeeper {args:?} did not exit within 20 s\nstdout:\n{}\nstderr:\n{}",
                out_log.text(),
                err_log.text()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = t1.join();
    let _ = t2.join();
    Output {
        status,
        stdout: out_log.text().into_bytes(),
        stderr: err_log.text().into_bytes(),
    }
}

pub fn show(o: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------
// In-process upstream application
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Hit {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub unix_path: Option<PathBuf>,
    hits: Arc<Mutex<Vec<Hit>>>,
    done: Arc<Mutex<Vec<String>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Self::start_inner(None)
    }

    /// Also serves on a unix socket at `path`.
    pub fn start_with_unix(path: &Path) -> Upstream {
        Self::start_inner(Some(path.to_path_buf()))
    }

    fn start_inner(unix: Option<PathBuf>) -> Upstream {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let done: Arc<Mutex<Vec<String>>> = Arc::default();
        let st = UpState {
            hits: hits.clone(),
            done: done.clone(),
        };
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let unix2 = unix.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted2 = accepted.clone();
        std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    addr_tx.send(l.local_addr().unwrap()).unwrap();
                    let h = st.clone();
                    tokio::spawn(async move {
                        loop {
                            let Ok((s, _)) = l.accept().await else { continue };
                            accepted2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ = s.set_nodelay(true);
                            serve_upstream_conn(s, h.clone());
                        }
                    });
                    if let Some(p) = unix2 {
                        let ul = tokio::net::UnixListener::bind(&p).unwrap();
                        let h = st.clone();
                        tokio::spawn(async move {
                            loop {
                                let Ok((s, _)) = ul.accept().await else { continue };
                                serve_upstream_conn(s, h.clone());
                            }
                        });
                    }
                    let _ = stop_rx.await;
                });
                rt.shutdown_background();
            })
            .unwrap();
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        if let Some(p) = &unix {
            assert!(eventually(Duration::from_secs(5), || p.exists()), "unix socket");
        }
        Upstream {
            addr,
            unix_path: unix,
            hits,
            done,
            accepted,
            shutdown: Some(stop_tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn unix_url(&self) -> String {
        format!("unix:{}", self.unix_path.as_ref().unwrap().display())
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Request targets (path + query) seen so far.
    pub fn uris(&self) -> Vec<String> {
        self.hits().into_iter().map(|h| h.uri).collect()
    }

    /// Request targets of `/download` responses whose last byte the upstream
    /// has handed over (i.e. the proxy took the whole body).
    pub fn downloads_done(&self) -> Vec<String> {
        self.done.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.hits.lock().unwrap().clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Clone)]
struct UpState {
    hits: Arc<Mutex<Vec<Hit>>>,
    done: Arc<Mutex<Vec<String>>>,
}

fn serve_upstream_conn<S>(s: S, st: UpState)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| upstream_handle(req, st.clone()));
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let _ = builder.serve_connection_with_upgrades(TokioIo::new(s), svc).await;
    });
}

fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

fn resp(status: u16, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

async fn upstream_handle(mut req: Request<Incoming>, st: UpState) -> Result<Response<Body>, Infallible> {
    let uri = req.uri().clone();
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.to_string());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    st.hits.lock().unwrap().push(Hit {
        method: req.method().to_string(),
        uri: target.clone(),
        version: format!("{:?}", req.version()),
        headers: headers.clone(),
    });
    let path = uri.path().to_string();

    if path == "/echo" || path.starts_with("/echo/") {
        let method = req.method().to_string();
        let version = format!("{:?}", req.version());
        let mut body = req.into_body();
        let mut f = Fnv::default();
        let mut len: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(fr) => {
                    if let Some(d) = fr.data_ref() {
                        len += d.len() as u64;
                        f.update(d);
                    }
                }
                Err(e) => {
                    return Ok(resp(400, full(format!("body error: {e}"))));
                }
            }
        }
        let j = serde_json::json!({
            "method": method,
            "uri": target,
            "version": version,
            "headers": headers.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect::<Vec<_>>(),
            "body_len": len,
            "body_fnv": f.hex(),
        });
        let mut r = resp(200, full(j.to_string()));
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return Ok(r);
    }
    if path == "/stream-echo" {
        let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed();
        let mut r = resp(200, body);
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/octet-stream"));
        return Ok(r);
    }
    if path == "/download" {
        let n: u64 = query_param(&uri, "bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
        let done = st.done.clone();
        let t = target.clone();
        let s = futures_util::stream::unfold(0u64, move |off| {
            let done = done.clone();
            let t = t.clone();
            async move {
                if off >= n {
                    return None;
                }
                let len = ((n - off) as usize).min(CHUNK);
                let chunk = pattern_block(off / CHUNK as u64, len);
                if off + len as u64 >= n {
                    // hyper asks for the next chunk only when it has room:
                    // handing over the last one means the peer took the rest
                    done.lock().unwrap().push(t);
                }
                Some((Ok::<_, BoxError>(Frame::data(chunk)), off + len as u64))
            }
        });
        let mut r = resp(200, BodyExt::boxed(StreamBody::new(s)));
        let h = r.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/octet-stream"));
        h.insert("content-length", HeaderValue::from_str(&n.to_string()).unwrap());
        if query_param(&uri, "accel").as_deref() == Some("no") {
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        return Ok(r);
    }
    if path == "/slow" {
        let ms: u64 = query_param(&uri, "ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(resp(200, full("slow")));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        let mut r = resp(code, full(format!("status {code}")));
        r.headers_mut()
            .append("set-cookie", HeaderValue::from_static("a=1; Path=/"));
        r.headers_mut()
            .append("set-cookie", HeaderValue::from_static("b=2; Path=/"));
        r.headers_mut().insert("x-upstream", HeaderValue::from_static("yes"));
        return Ok(r);
    }
    if path == "/headers-out" {
        let mut r = resp(200, full("headers-out"));
        let h = r.headers_mut();
        h.insert("connection", HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        return Ok(r);
    }
    if path == "/ws" {
        let key = req.headers().get("sec-websocket-key").cloned();
        let is_upgrade = req
            .headers()
            .get("upgrade")
            .map(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
            .unwrap_or(false);
        let Some(key) = key.filter(|_| is_upgrade) else {
            return Ok(resp(400, full("not a websocket upgrade")));
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on_upgrade.await else { return };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if msg.is_text() || msg.is_binary() {
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut r = resp(101, empty());
        let h = r.headers_mut();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("sec-websocket-accept", HeaderValue::from_str(&accept).unwrap());
        return Ok(r);
    }
    Ok(resp(200, full(format!("upstream:{path}"))))
}

/// All values of header `name` (case-insensitive), in order.
fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Parsed `/echo` answer.
#[derive(Debug, Clone)]
pub struct Echo {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_fnv: String,
}

impl Echo {
    pub fn parse(body: &[u8]) -> Echo {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "upstream /echo body is not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        Echo {
            method: v["method"].as_str().unwrap().to_string(),
            uri: v["uri"].as_str().unwrap().to_string(),
            version: v["version"].as_str().unwrap().to_string(),
            headers: v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
                .collect(),
            body_len: v["body_len"].as_u64().unwrap(),
            body_fnv: v["body_fnv"].as_str().unwrap().to_string(),
        }
    }

    /// All values of a header (case-insensitive name), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }

    /// The single value of a header; panics when it appears more than once.
    pub fn one(&self, name: &str) -> Option<&str> {
        let v = self.all(name);
        assert!(v.len() <= 1, "header {name} appears {} times: {v:?}", v.len());
        v.first().copied()
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status,
            200,
            "expected 200 from /echo, got {}: {}",
            self.status,
            self.text()
        );
        Echo::parse(&self.body)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

/// TCP connection from a chosen local address (127.0.0.x).
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = match from {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(from, 0))?;
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// `[admin] listen` on a loopback port the daemon picks: read it with
/// [`Gatekeeper::admin`] once started.
pub fn with_admin(cfg: &mut Config) {
    cfg.set("admin.listen", &q("127.0.0.1:0"));
}

/// The value of one sample (`name` or `name{labels}`) in a Prometheus text page.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The admin endpoint's `/metrics` page.
pub async fn metrics(admin: SocketAddr) -> String {
    let r = get(LOCALHOST, admin, "/metrics", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// One sample from the admin endpoint's `/metrics`; panics when it is missing.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = metrics(admin).await;
    sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in /metrics:\n{text}"))
}

/// The WebSocket handshake for `ws://{addr}/ws` on `s`, within 5 s; the answer must be 101.
pub async fn ws_open(addr: SocketAddr, s: TcpStream) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), s),
    )
    .await
    .expect("handshake within 5 s")
    .expect("websocket handshake through gatekeeper");
    assert_eq!(resp.status(), 101);
    ws
}

/// One kept-alive HTTP/1.1 client connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    pub local: SocketAddr,
}

impl Conn {
    pub async fn open(from: IpAddr, addr: SocketAddr) -> Conn {
        let s = connect_from(from, addr)
            .await
            .unwrap_or_else(|e| panic!("connect {from} -> {addr}: {e}"));
        let local = s.local_addr().unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .expect("h1 handshake");
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Conn { sender, local }
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn request(&mut self, req: Request<Body>) -> Result<Resp, hyper::Error> {
        self.sender.ready().await?;
        let r = self.sender.send_request(req).await?;
        let (parts, body) = r.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            version: parts.version,
        })
    }

    /// Sends a request; adds `Host: localhost` unless `headers` has a Host.
    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Body) -> Resp {
        let req = build_request(method, path, headers, body);
        match self.request(req).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {path} on kept-alive connection failed: {e:?}"),
        }
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, &[], empty()).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send("GET", path, headers, empty()).await
    }
}

pub fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", "localhost");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

/// One request on a fresh connection from `from`.
pub async fn get(from: IpAddr, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut c = Conn::open(from, addr).await;
    c.send("GET", path, headers, empty()).await
}

pub async fn request(
    from: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Resp {
    let mut c = Conn::open(from, addr).await;
    c.send(method, path, headers, body).await
}

/// Sends raw bytes from 127.0.0.1 and reads until EOF (10 s bound).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_from(LOCALHOST, addr, bytes).await
}

pub async fn raw_from(from: IpAddr, addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = connect_from(from, addr).await.expect("connect");
    s.write_all(bytes).await.expect("write raw request");
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    match r {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read raw response: {e}"),
        Err(_) => panic!(
            "raw response not terminated by EOF within 10 s; got so far: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone)]
pub struct RawResp {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Tries to parse one complete response from `buf`. `head_only` for HEAD.
/// Returns None when more bytes are needed.
pub fn parse_response(buf: &[u8], head_only: bool, eof: bool) -> Option<(RawResp, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let _ver = parts.next()?;
    let status: u16 = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let hdr = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mk = |body: Vec<u8>| RawResp {
        status,
        reason: reason.clone(),
        headers: headers.clone(),
        body,
    };
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Some((mk(Vec::new()), end));
    }
    if hdr("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
    {
        let mut pos = end;
        let mut body = Vec::new();
        loop {
            let rel = buf[pos..].windows(2).position(|w| w == b"\r\n")?;
            let size_line = String::from_utf8_lossy(&buf[pos..pos + rel]).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            pos += rel + 2;
            if size == 0 {
                // trailers until empty line
                loop {
                    let rel = buf[pos..].windows(2).position(|w| w == b"\r\n")?;
                    pos += rel + 2;
                    if rel == 0 {
                        return Some((mk(body), pos));
                    }
                }
            }
            if buf.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    }
    if let Some(cl) = hdr("content-length") {
        let n: usize = cl.parse().ok()?;
        if buf.len() < end + n {
            return None;
        }
        return Some((mk(buf[end..end + n].to_vec()), end + n));
    }
    if eof {
        return Some((mk(buf[end..].to_vec()), buf.len()));
    }
    None
}

/// Sends raw bytes from 127.0.0.1 and reads exactly one response (does not
/// need the server to close the connection).
pub async fn raw_response(addr: SocketAddr, bytes: &[u8]) -> RawResp {
    let mut s = connect_from(LOCALHOST, addr).await.expect("connect");
    s.write_all(bytes).await.expect("write raw request");
    read_raw_response(&mut s, bytes.starts_with(b"HEAD ")).await
}

/// Reads one response; bytes after it (pipelined responses) are discarded.
pub async fn read_raw_response(s: &mut TcpStream, head_only: bool) -> RawResp {
    let (mut rs, _) = read_raw_responses(s, 1, head_only).await;
    rs.remove(0)
}

/// Reads `n` responses off `s`, in order (within 10 s); returns them and the
/// bytes read after them.
pub async fn read_raw_responses(s: &mut TcpStream, n: usize, head_only: bool) -> (Vec<RawResp>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut tmp = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        if let Some((r, used)) = parse_response(&buf, head_only, false) {
            buf.drain(..used);
            out.push(r);
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let got = match tokio::time::timeout(left, s.read(&mut tmp)).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => panic!("read: {e}; got {:?}", String::from_utf8_lossy(&buf)),
            Err(_) => panic!(
                "no complete response within 10 s; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        };
        if got == 0 {
            let (r, used) = parse_response(&buf, head_only, true).unwrap_or_else(|| {
                panic!(
                    "EOF after {} responses, before a complete one: {:?}",
                    out.len(),
                    String::from_utf8_lossy(&buf)
                )
            });
            buf.drain(..used);
            out.push(r);
            assert_eq!(out.len(), n, "EOF after {} of {n} responses", out.len());
        } else {
            buf.extend_from_slice(&tmp[..got]);
        }
    }
    (out, buf)
}

/// Parses a complete raw response string (as returned by [`raw`]).
pub fn parse_raw(s: &str) -> RawResp {
    parse_response(s.as_bytes(), false, true)
        .unwrap_or_else(|| panic!("not an HTTP response: {s:?}"))
        .0
}

/// Status code of a raw response, 0 when there is none.
pub fn raw_status(s: &str) -> u16 {
    s.strip_prefix("HTTP/1.1 ")
        .or_else(|| s.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Toggle state change and wait helper: polls `conn` with GET `path` until the
/// status is `want`; returns the elapsed time, or None after `bound`.
pub async fn wait_status(conn: &mut Conn, path: &str, want: u16, bound: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        let r = conn.get(path).await;
        if r.status == want {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > bound {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl Conn {
    /// Sends a request and returns the response with its body still streaming.
    pub async fn request_streaming(&mut self, req: Request<Body>) -> Result<Response<Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(req).await
    }
}

/// A request body fed through a channel.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(s)))
}

/// Full-duplex check against `/stream-echo`: sends `rounds` chunks one at a
/// time and requires each one to come back before the next is sent (so
/// neither direction may be buffered to the end). Every step is bounded by
/// `step_timeout`.
pub async fn stream_echo_rounds(conn: &mut Conn, rounds: usize, step_timeout: Duration) -> Result<(), String> {
    let (tx, body) = channel_body();
    let req = Request::builder()
        .method("POST")
        .uri("/stream-echo")
        .header("host", "localhost")
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap();
    // The first chunk goes out before we wait for the response head: a proxy
    // may legitimately wait for some body before contacting the upstream.
    let first = Bytes::from(format!("round-0:{}", "x".repeat(1000)));
    tx.send(first.clone())
        .await
        .map_err(|_| "body channel closed".to_string())?;
    let resp = tokio::time::timeout(step_timeout, conn.request_streaming(req))
        .await
        .map_err(|_| "no response head while the request body is still open (request buffered?)".to_string())?
        .map_err(|e| format!("request failed: {e:?}"))?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    for i in 0..rounds {
        let chunk = if i == 0 {
            first.clone()
        } else {
            let c = Bytes::from(format!("round-{i}:{}", "y".repeat(1000 + i)));
            tx.send(c.clone())
                .await
                .map_err(|_| "body channel closed".to_string())?;
            c
        };
        while pending.len() < chunk.len() {
            let fr = tokio::time::timeout(step_timeout, body.frame()).await.map_err(|_| {
                format!("round {i}: echo of the chunk did not arrive within {step_timeout:?} (buffered?)")
            })?;
            match fr {
                None => return Err(format!("round {i}: response ended early")),
                Some(Err(e)) => return Err(format!("round {i}: body error {e:?}")),
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        pending.extend_from_slice(d);
                    }
                }
            }
        }
        let got: Vec<u8> = pending.drain(..chunk.len()).collect();
        if got != chunk.as_ref() {
            return Err(format!("round {i}: echoed bytes differ"));
        }
    }
    drop(tx);
    match tokio::time::timeout(step_timeout, body.collect()).await {
        Ok(Ok(rest)) => {
            let rest = rest.to_bytes();
            if !rest.is_empty() || !pending.is_empty() {
                return Err(format!("{} unexpected trailing bytes", rest.len() + pending.len()));
            }
        }
        Ok(Err(e)) => return Err(format!("end of body: {e:?}")),
        Err(_) => return Err("response did not end after the request body ended".into()),
    }
    Ok(())
}

/// An HTTP/2 prior-knowledge (h2c) connection from 127.0.0.1, driven by a task of its own.
pub async fn h2c_sender(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let s = connect_from(LOCALHOST, addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// One HTTP/2 prior-knowledge (h2c) request.
pub async fn h2_request(addr: SocketAddr, req: Request<Body>) -> Resp {
    let mut sender = h2c_sender(addr).await;
    let r = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("h2 response within 10 s")
        .expect("h2 request");
    let (parts, body) = r.into_parts();
    let body = body.collect().await.expect("h2 body").to_bytes();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// Unix-socket HTTP/1.1 GET (for checking the upstream itself).
pub async fn unix_get(path: &Path, target: &str) -> Resp {
    let s = tokio::net::UnixStream::connect(path).await.expect("unix connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let r = sender
        .send_request(build_request("GET", target, &[], empty()))
        .await
        .expect("unix request");
    let (parts, body) = r.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
        version: parts.version,
    }
}

/// Streams a download and returns (length, fnv hex).
pub async fn download(conn: &mut Conn, target: &str) -> (u16, u64, String) {
    let resp = conn
        .request_streaming(build_request("GET", target, &[], empty()))
        .await
        .expect("download request");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut f = Fnv::default();
    let mut n = 0u64;
    while let Some(fr) = body.frame().await {
        let fr = fr.expect("download body");
        if let Some(d) = fr.data_ref() {
            n += d.len() as u64;
            f.update(d);
        }
    }
    (status, n, f.hex())
}

// ---------------------------------------------------------------------------
// Small shared helpers
// ---------------------------------------------------------------------------

/// Number of lines of `log` that contain `needle`.
pub fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// True when a TCP connect to `addr` is refused (nothing listens there).
pub fn refused(addr: SocketAddr) -> bool {
    matches!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Replaces `path` the way editors, certbot and config management do: temp file + rename.
pub fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls GET `path` on `c` until `ok` holds for the response (bounded).
pub async fn until_resp(c: &mut Conn, path: &str, bound: Duration, ok: impl Fn(&Resp) -> bool) -> Option<Resp> {
    let t0 = Instant::now();
    loop {
        let r = c.get(path).await;
        if ok(&r) {
            return Some(r);
        }
        if t0.elapsed() > bound {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Let through during maintenance (allowlisted client or bypass credential).
pub fn bypassed(r: &Resp) -> bool {
    r.status == 200 && r.header("x-maintenance-mode") == Some("bypass")
}

// ---------------------------------------------------------------------------
// The command line against a config, before and while the daemon runs
// ---------------------------------------------------------------------------

/// Wall-clock seconds since the epoch (the daemon's clock: same machine).
pub fn wall() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Runs `gatekeeper <args> -c <cfg>`, requires success, returns stdout.
pub fn cli_ok(cfg: &Path, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", cfg.to_str().unwrap()]);
    let o = gk(&all);
    assert!(o.status.success(), "gatekeeper {all:?} failed:\n{}", show(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// Asserts that `f` comes true within `timeout` (polled).
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    f: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>,
) {
    assert!(eventually_async(timeout, f).await, "{what} within {timeout:?}");
}

/// A fixture, an upstream and a written config, for CLI commands before the
/// daemon starts (`on --secret`, `on --from`) and while it runs.
pub struct CliEnv {
    pub fx: Fixture,
    pub up: Upstream,
    pub cfg: PathBuf,
}

impl CliEnv {
    /// Fixture, upstream and a written config (`edit` may add keys); no daemon yet.
    pub fn new(edit: impl FnOnce(&Fixture, &mut Config)) -> CliEnv {
        let fx = Fixture::new();
        let up = Upstream::start();
        let mut c = fx.config(&up.url());
        edit(&fx, &mut c);
        let cfg = c.write(&fx);
        CliEnv { fx, up, cfg }
    }

    pub fn on(&self, args: &[&str]) -> String {
        let mut all = vec!["on"];
        all.extend_from_slice(args);
        cli_ok(&self.cfg, &all)
    }

    pub fn status(&self, show_secret: bool) -> String {
        if show_secret {
            cli_ok(&self.cfg, &["status", "--show-secret"])
        } else {
            cli_ok(&self.cfg, &["status"])
        }
    }

    pub fn toggle_text(&self) -> String {
        std::fs::read_to_string(self.fx.toggle()).unwrap_or_else(|e| panic!("read toggle: {e}"))
    }

    pub fn start(&self) -> Gatekeeper {
        Gatekeeper::start_with_path(&self.cfg)
    }
}

// ---------------------------------------------------------------------------
// Test-process helpers
// ---------------------------------------------------------------------------

/// Tests that measure time or memory, or hold thousands of sockets, run one
/// at a time within their file, so that one does not skew another's figures
/// on a small machine.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (children
/// such as slowhttptest inherit it); returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// A loopback port held for the test's duration: bound but not listening, so
/// connections to it are refused and no other socket can take the port (a
/// port bound and released could be taken by anyone before its use).
/// [`HeldPort::listen`] and [`HeldPort::unlisten`] bring a server up and down
/// on it without ever letting the port go.
pub struct HeldPort {
    sock: std::os::fd::OwnedFd,
    pub addr: SocketAddr,
}

impl HeldPort {
    pub fn new() -> HeldPort {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // Linux keeps a port across a listener's shutdown only when it was
        // bound by number: take a free one with a first socket, bind a second
        // to it by number (SO_REUSEADDR on both, allowed while neither
        // listens), then close the first.
        let first = TcpSocket::new_v4().unwrap();
        first.set_reuseaddr(true).unwrap();
        first.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = first.local_addr().unwrap();
        let held = TcpSocket::new_v4().unwrap();
        held.set_reuseaddr(true).unwrap();
        held.bind(addr).unwrap();
        drop(first);
        held.set_reuseaddr(false).unwrap();
        // SAFETY: the descriptor was just taken out of `held`, which no longer owns it.
        let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(held.into_raw_fd()) };
        HeldPort { sock, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SO_REUSEADDR on the held socket: off while it only holds the port (so
    /// that no other socket can share it, not even one asking for this very
    /// number with SO_REUSEADDR), on to listen (listen(2) failed with
    /// EADDRINUSE here with it off).
    fn reuse(&self, on: bool) {
        use std::os::fd::AsRawFd;
        let v: libc::c_int = on.into();
        // SAFETY: setsockopt(2) on a socket this value owns, with a c_int value.
        let r = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_REUSEADDR: {}", std::io::Error::last_os_error());
    }

    /// Starts listening on the held port; the listener shares the socket.
    pub fn listen(&self) -> std::net::TcpListener {
        use std::os::fd::AsRawFd;
        self.reuse(true);
        // SAFETY: listen(2) on a socket this value owns.
        let r = unsafe { libc::listen(self.sock.as_raw_fd(), 1024) };
        assert_eq!(r, 0, "listen on {}: {}", self.addr, std::io::Error::last_os_error());
        let l = std::net::TcpListener::from(self.sock.try_clone().unwrap());
        l.set_nonblocking(false).unwrap();
        l
    }

    /// Stops listening (connections are refused again); the port stays held.
    pub fn unlisten(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on a socket this value owns; on a listener it
        // only ends the listening state.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RD) };
        self.reuse(false);
    }
}
