//! A sync-worker stand-in application (gunicorn sync workers, unicorn,
//! PHP-FPM): a fixed pool of N threads, each accepting and serving ONE
//! connection at a time. A worker reads the whole request (head, then a
//! Content-Length or chunked body), answers with `Connection: close` and
//! closes. Reads have no short timeout, so a client that trickles its request
//! (or reads its answer slowly) holds a worker: exactly what the proxy in
//! front must prevent. Its send buffer is fixed at 16 KiB ([`APP_SNDBUF`]).
//!
//! Routes:
//! * `GET /big[?bytes=N][&accel=no]`: N bytes (default 1 MiB) of the
//!   deterministic pattern (`common::pattern_block`), with Content-Length;
//!   `accel=no` adds `X-Accel-Buffering: no`.
//! * anything else: `200`, body `ok <len> <fnv>` of the request body received.
//!
//! Every connection is recorded ([`ConnRec`]): when it was accepted, when its
//! first byte arrived, the raw bytes received so far (live), when the request
//! was complete, how far the answer has been written, when the worker let go.
//! Bench counterpart: `bench/syncapp.py` (same behaviour, in Python).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{pattern_block, Fnv, CHUNK};

/// Bytes of a request kept in [`ConnRec::raw`] (the rest is only counted).
const RAW_CAP: usize = 1 << 20;
/// A worker gives up on a client that sends nothing for this long (gunicorn's
/// default worker timeout): long compared with any test here, so a slow client
/// holds the worker for the whole attack.
const WORKER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// SO_SNDBUF of the app's connections. On loopback the kernel sizes a send
/// buffer from the 64 KiB loopback MSS and lets it grow to tcp_wmem's maximum
/// (4 MiB): it would take any answer under a few MiB off the worker at once,
/// and no slow reader could ever hold one. On a real network the buffer
/// starts near 16 KiB and grows only as fast as the client acknowledges;
/// this fixed size models that.
pub const APP_SNDBUF: libc::c_int = 16 * 1024;

#[derive(Debug, Clone)]
pub struct ConnRec {
    pub accepted: Instant,
    pub first_byte: Option<Instant>,
    /// The request as received so far (head and body, raw), up to 1 MiB.
    pub raw: Vec<u8>,
    pub raw_len: u64,
    /// The request line, once the head is complete.
    pub request_line: Option<String>,
    pub head: Option<String>,
    /// The request (head and body) was complete at this moment.
    pub complete: Option<Instant>,
    /// Decoded body length and FNV-1a.
    pub body_len: u64,
    pub body_fnv: String,
    /// Answer bytes handed to the kernel so far.
    pub written: u64,
    /// The last byte of the answer was handed to the kernel.
    pub answered: Option<Instant>,
    /// The worker let go of the connection.
    pub released: Option<Instant>,
    pub error: Option<String>,
}

impl ConnRec {
    fn new() -> ConnRec {
        ConnRec {
            accepted: Instant::now(),
            first_byte: None,
            raw: Vec::new(),
            raw_len: 0,
            request_line: None,
            head: None,
            complete: None,
            body_len: 0,
            body_fnv: Fnv::default().hex(),
            written: 0,
            answered: None,
            released: None,
            error: None,
        }
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// How long the worker was held by this connection (so far).
    pub fn held(&self) -> Duration {
        self.released.unwrap_or_else(Instant::now) - self.accepted
    }
}

struct Inner {
    stop: AtomicBool,
    busy: AtomicUsize,
    busy_max: AtomicUsize,
    served: AtomicU64,
    conns: Mutex<Vec<Arc<Mutex<ConnRec>>>>,
}

pub struct SyncApp {
    pub addr: SocketAddr,
    pub workers: usize,
    inner: Arc<Inner>,
}

impl SyncApp {
    /// Starts `workers` threads on 127.0.0.1:0 (listen backlog 2048, as gunicorn).
    pub fn start(workers: usize) -> SyncApp {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind sync app");
        // Linux lets a second listen() change the backlog of a listening socket.
        unsafe {
            libc::listen(l.as_raw_fd(), 2048);
        }
        let addr = l.local_addr().unwrap();
        let inner = Arc::new(Inner {
            stop: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            busy_max: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        for i in 0..workers {
            let l = l.try_clone().unwrap();
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("syncapp-{i}"))
                .spawn(move || worker(l, inner))
                .unwrap();
        }
        SyncApp { addr, workers, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Workers busy right now.
    pub fn busy(&self) -> usize {
        self.inner.busy.load(Ordering::SeqCst)
    }

    /// Most workers ever busy at once.
    pub fn busy_max(&self) -> usize {
        self.inner.busy_max.load(Ordering::SeqCst)
    }

    /// Answers written completely.
    pub fn served(&self) -> u64 {
        self.inner.served.load(Ordering::SeqCst)
    }

    /// Snapshot of every connection so far, in accept order.
    pub fn conns(&self) -> Vec<ConnRec> {
        let v = self.inner.conns.lock().unwrap();
        v.iter().map(|c| c.lock().unwrap().clone()).collect()
    }

    pub fn conn_count(&self) -> usize {
        self.inner.conns.lock().unwrap().len()
    }

    /// Forgets the recorded connections (counters stay).
    pub fn clear(&self) {
        self.inner.conns.lock().unwrap().clear();
    }
}

impl Drop for SyncApp {
    fn drop(&mut self) {
        // Wake the workers blocked in accept(); the ones held by a slow client
        // let go when it closes or after WORKER_READ_TIMEOUT. Not joined.
        self.inner.stop.store(true, Ordering::SeqCst);
        for _ in 0..self.workers {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
        }
    }
}

fn worker(l: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((s, _)) = l.accept() else {
            if inner.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let now = inner.busy.fetch_add(1, Ordering::SeqCst) + 1;
        inner.busy_max.fetch_max(now, Ordering::SeqCst);
        let rec = Arc::new(Mutex::new(ConnRec::new()));
        inner.conns.lock().unwrap().push(rec.clone());
        let r = serve(s, &rec);
        {
            let mut g = rec.lock().unwrap();
            if let Err(e) = r {
                g.error = Some(e);
            } else {
                inner.served.fetch_add(1, Ordering::SeqCst);
            }
            g.released = Some(Instant::now());
        }
        inner.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads from the client, recording every byte as it arrives.
struct Recv<'a> {
    s: &'a mut TcpStream,
    rec: &'a Mutex<ConnRec>,
    buf: Vec<u8>,
    pos: usize,
}

impl Recv<'_> {
    fn fill(&mut self) -> Result<(), String> {
        let mut tmp = [0u8; 65536];
        let n = self.s.read(&mut tmp).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("client closed before the request was complete".into());
        }
        let mut g = self.rec.lock().unwrap();
        g.first_byte.get_or_insert_with(Instant::now);
        g.raw_len += n as u64;
        let room = RAW_CAP.saturating_sub(g.raw.len());
        g.raw.extend_from_slice(&tmp[..n.min(room)]);
        drop(g);
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(l);
            }
            if self.buf.len() - self.pos > 1 << 20 {
                return Err("line too long".into());
            }
            self.fill()?;
        }
    }

    /// Up to `max` bytes of body.
    fn some(&mut self, max: usize) -> Result<Vec<u8>, String> {
        if self.pos == self.buf.len() {
            self.fill()?;
        }
        let n = max.min(self.buf.len() - self.pos);
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }
}

fn serve(mut s: TcpStream, rec: &Mutex<ConnRec>) -> Result<(), String> {
    s.set_read_timeout(Some(WORKER_READ_TIMEOUT)).unwrap();
    unsafe {
        let v = APP_SNDBUF;
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let _ = s.set_nodelay(true);
    let mut r = Recv {
        s: &mut s,
        rec,
        buf: Vec::new(),
        pos: 0,
    };
    let request_line = r.line()?;
    let mut head = request_line.clone();
    let mut content_length: u64 = 0;
    let mut chunked = false;
    loop {
        let l = r.line()?;
        if l.is_empty() {
            break;
        }
        head.push('\n');
        head.push_str(&l);
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse().map_err(|_| format!("bad content-length {v:?}"))?;
            } else if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    {
        let mut g = rec.lock().unwrap();
        g.request_line = Some(request_line.clone());
        g.head = Some(head);
    }
    let mut fnv = Fnv::default();
    let mut body_len: u64 = 0;
    let mut take = |r: &mut Recv<'_>, mut n: u64| -> Result<(), String> {
        while n > 0 {
            let b = r.some(usize::try_from(n).unwrap_or(usize::MAX).min(65536))?;
            fnv.update(&b);
            body_len += b.len() as u64;
            n -= b.len() as u64;
        }
        Ok(())
    };
    if chunked {
        loop {
            let size_line = r.line()?;
            let size = u64::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                while !r.line()?.is_empty() {}
                break;
            }
            take(&mut r, size)?;
            if !r.line()?.is_empty() {
                return Err("chunk not followed by CRLF".into());
            }
        }
    } else {
        take(&mut r, content_length)?;
    }
    {
        let mut g = rec.lock().unwrap();
        g.complete = Some(Instant::now());
        g.body_len = body_len;
        g.body_fnv = fnv.hex();
    }

    let target = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
    };
    let head_only = request_line.starts_with("HEAD ");
    if path == "/big" {
        let n: u64 = param("bytes").and_then(|v| v.parse().ok()).unwrap_or(1 << 20);
        let accel = if param("accel").as_deref() == Some("no") {
            "X-Accel-Buffering: no\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n{accel}Connection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).map_err(|e| format!("write: {e}"))?;
        if !head_only {
            let mut off = 0u64;
            while off < n {
                let len = usize::try_from(n - off).unwrap_or(CHUNK).min(CHUNK);
                s.write_all(&pattern_block(off / CHUNK as u64, len))
                    .map_err(|e| format!("write at {off}: {e}"))?;
                off += len as u64;
                rec.lock().unwrap().written = off;
            }
        }
    } else {
        let body = format!("ok {body_len} {}\n", fnv.hex());
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(body.as_bytes());
        }
        s.write_all(&out).map_err(|e| format!("write: {e}"))?;
        rec.lock().unwrap().written = out.len() as u64;
    }
    rec.lock().unwrap().answered = Some(Instant::now());
    let _ = s.flush();
    Ok(())
}

// ---------------------------------------------------------------------------
// The probe
// ---------------------------------------------------------------------------

/// One ordinary request's outcome: status (0 = no answer in time) and latency.
#[derive(Debug, Clone, Copy)]
pub struct ProbeHit {
    pub status: u16,
    pub latency: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    pub hits: Vec<ProbeHit>,
}

impl ProbeReport {
    pub fn sent(&self) -> usize {
        self.hits.len()
    }
    pub fn ok(&self) -> usize {
        self.hits.iter().filter(|h| h.status == 200).count()
    }
    pub fn success_pct(&self) -> f64 {
        if self.hits.is_empty() {
            return 0.0;
        }
        100.0 * self.ok() as f64 / self.hits.len() as f64
    }
    /// Latency percentile over every probe (a failure counts with its elapsed time).
    pub fn pct_ms(&self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.hits.iter().map(|h| h.latency.as_secs_f64() * 1000.0).collect();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
    pub fn statuses(&self) -> Vec<(u16, usize)> {
        let mut m = std::collections::BTreeMap::new();
        for h in &self.hits {
            *m.entry(h.status).or_insert(0usize) += 1;
        }
        m.into_iter().collect()
    }
    pub fn summary(&self) -> String {
        format!(
            "{}/{} probes 200 ({:.2} %), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, statuses {:?}",
            self.ok(),
            self.sent(),
            self.success_pct(),
            self.pct_ms(50.0),
            self.pct_ms(99.0),
            self.pct_ms(100.0),
            self.statuses()
        )
    }
}

/// `GET path` on a fresh connection, `Connection: close`; 0 when no complete
/// status line arrives within `timeout`.
pub fn probe_once(addr: SocketAddr, path: &str, timeout: Duration) -> ProbeHit {
    let t0 = Instant::now();
    let status = (|| -> Option<u16> {
        let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
        let _ = s.set_nodelay(true);
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.set_write_timeout(Some(timeout)).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        loop {
            let left = timeout.checked_sub(t0.elapsed())?;
            s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
            match s.read(&mut tmp) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(_) => return None,
            }
        }
        let line = buf.split(|&b| b == b'\r').next()?;
        let line = std::str::from_utf8(line).ok()?;
        line.split(' ').nth(1)?.parse().ok()
    })()
    .unwrap_or(0);
    ProbeHit {
        status,
        latency: t0.elapsed(),
    }
}

/// A probe running in the background: one request every `interval` on a
/// fresh connection (each in its own thread, on a fixed schedule, so a slow
/// answer never delays the next probe), at most `max` probes.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<ProbeReport>>,
}

impl Probe {
    pub fn start(addr: SocketAddr, path: &str, interval: Duration, timeout: Duration, max: usize) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let path = path.to_string();
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let hits: Arc<Mutex<Vec<ProbeHit>>> = Arc::default();
            let mut threads = Vec::new();
            for i in 0..max {
                let due = start + interval * i as u32;
                while Instant::now() < due {
                    if st.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep((due - Instant::now()).min(Duration::from_millis(10)));
                }
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let hits = hits.clone();
                let path = path.clone();
                threads.push(std::thread::spawn(move || {
                    let h = probe_once(addr, &path, timeout);
                    hits.lock().unwrap().push(h);
                }));
            }
            for t in threads {
                let _ = t.join();
            }
            let hits = hits.lock().unwrap().clone();
            ProbeReport { hits }
        });
        Probe {
            stop,
            handle: Some(handle),
        }
    }

    /// Sends the remaining probes on schedule and waits for every answer.
    pub fn wait(mut self) -> ProbeReport {
        self.handle.take().unwrap().join().expect("probe thread")
    }

    /// Stops sending and waits for the probes in flight (each bounded by its timeout).
    pub fn finish(mut self) -> ProbeReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().expect("probe thread")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
