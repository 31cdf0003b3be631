//! Headless Chromium driven over the DevTools protocol (CDP), just enough for
//! the browser tests: open a tab, navigate, evaluate JavaScript, emulate a
//! device, a colour scheme, a time zone, take screenshots.
//!
//! Chromium runs in its own process group with a fresh profile directory and
//! the flags that keep it from calling home; dropping [`Chromium`] kills the
//! group. The binary: `$CHROMIUM`, else `/usr/bin/chromium`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Where Chromium is, if it is installed.
pub fn binary() -> Option<PathBuf> {
    let p = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    p.exists().then_some(p)
}

/// The browser: a process and one DevTools connection.
pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    sink: tokio::sync::Mutex<Sink>,
    pending: Pending,
    next: AtomicU64,
}

impl Chromium {
    /// Starts Chromium; None (after saying why) where it is not installed,
    /// except under CI, where a missing browser is a failure.
    pub async fn launch() -> Option<Arc<Chromium>> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "Chromium is not installed (.ci/install-deps installs it)"
            );
            eprintln!("skipped: no Chromium at /usr/bin/chromium (set CHROMIUM, or apt-get install chromium)");
            return None;
        };
        Some(Arc::new(Self::launch_at(&bin).await))
    }

    async fn launch_at(bin: &Path) -> Chromium {
        let profile = tempfile::Builder::new()
            .prefix("gatekeeper-chromium-")
            .tempdir()
            .unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-proxy-server",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        // Reads on to the end, so that Chromium never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(e) => {
                kill_group(&mut child);
                panic!("Chromium did not say where DevTools listens within 60 s: {e}");
            }
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("DevTools websocket {url}: {e}"));
        let (sink, mut stream) = ws.split();
        let pending: Pending = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                // Answers carry the command's id; events (no id) are not needed.
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        Chromium {
            child,
            _profile: profile,
            sink: tokio::sync::Mutex::new(sink),
            pending,
            next: AtomicU64::new(1),
        }
    }

    /// One command (to a tab's session, or to the browser); its `result`, or
    /// its error as text. 30 s at most.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::Text(msg.to_string().into()))
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| format!("{method}: no answer within 30 s"))?
            .map_err(|_| format!("{method}: connection closed"))?;
        match v.get("error") {
            Some(e) => Err(format!("{method}: {e}")),
            None => Ok(v["result"].clone()),
        }
    }

    /// A new tab (a window of its own: its own sessionStorage).
    pub async fn tab(self: &Arc<Self>) -> Tab {
        let t = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await
            .unwrap();
        let target = t["targetId"].as_str().unwrap().to_string();
        let a = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await
            .unwrap();
        let tab = Tab {
            browser: self.clone(),
            session: a["sessionId"].as_str().unwrap().to_string(),
        };
        // Scripts to run before the page's (`before_scripts`) need the Page domain.
        tab.call("Page.enable", json!({})).await.unwrap();
        tab
    }
}

fn kill_group(child: &mut Child) {
    // SAFETY: signals only the process group this Chromium was started in.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let _ = child.wait();
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// How a screenshot is taken.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    pub width: u32,
    pub height: u32,
    pub scale: f64,
    pub mobile: bool,
}

pub const DESKTOP: Device = Device {
    width: 1280,
    height: 800,
    scale: 1.0,
    mobile: false,
};

pub const PHONE: Device = Device {
    width: 390,
    height: 844,
    scale: 2.0,
    mobile: true,
};

/// One tab.
pub struct Tab {
    browser: Arc<Chromium>,
    session: String,
}

impl Tab {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// The value of a JavaScript expression (promises awaited), or why not.
    pub async fn eval(&self, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("{expr}: {e}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` every 50 ms until it is truthy (errors, as while a page
    /// loads, count as not yet); its value, or None after `timeout`.
    pub async fn wait_for(&self, expr: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.eval(expr).await {
                Ok(v) if !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0) => {
                    return Some(v)
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Navigates and waits (30 s at most) until the new document has loaded.
    pub async fn goto(&self, url: &str) {
        self.eval("window.__gkOld = true").await.unwrap();
        let r = self.call("Page.navigate", json!({"url": url})).await.unwrap();
        assert!(r.get("errorText").is_none(), "navigate {url}: {r}");
        let loaded = format!("document.readyState === 'complete' && !window.__gkOld && location.href === {url:?}");
        assert!(
            self.wait_for(&loaded, Duration::from_secs(30)).await.is_some(),
            "{url} did not load within 30 s"
        );
    }

    /// Runs `source` in every document this tab loads from now on, before the page's scripts.
    pub async fn before_scripts(&self, source: &str) {
        self.call("Page.addScriptToEvaluateOnNewDocument", json!({"source": source}))
            .await
            .unwrap();
    }

    pub async fn emulate(&self, d: Device, dark: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": d.width, "height": d.height, "deviceScaleFactor": d.scale, "mobile": d.mobile}),
        )
        .await
        .unwrap();
        let scheme = if dark { "dark" } else { "light" };
        self.call(
            "Emulation.setEmulatedMedia",
            // Reduced motion: screenshots without an animation caught halfway.
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme},
                {"name": "prefers-reduced-motion", "value": "reduce"}]}),
        )
        .await
        .unwrap();
    }

    /// The visitor's time zone and language, as the page's scripts see them.
    pub async fn locale(&self, time_zone: &str, locale: &str) {
        self.call("Emulation.setTimezoneOverride", json!({"timezoneId": time_zone}))
            .await
            .unwrap();
        self.call("Emulation.setLocaleOverride", json!({"locale": locale}))
            .await
            .unwrap();
    }

    pub async fn disable_scripts(&self) {
        self.call("Emulation.setScriptExecutionDisabled", json!({"value": true}))
            .await
            .unwrap();
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await
            .unwrap();
        base64_decode(r["data"].as_str().unwrap())
    }
}

/// Standard base64 (padding ignored).
fn base64_decode(s: &str) -> Vec<u8> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ABC
            .iter()
            .position(|x| *x == c)
            .unwrap_or_else(|| panic!("not base64: {c}"));
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}
