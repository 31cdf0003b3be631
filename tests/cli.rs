//! Area: the command line (`check`, `run` with a bad config, `on`/`off`/`status`).
//!
//! The command line: `check` (every kind of config error, with
//! file:line:col and key), `run` with a bad config, `on`/`off`/`status`
//! (idempotent, atomic), `GATEKEEPER_CONFIG`, `--help`.
mod common;
use common::*;
use std::path::Path;

const UP: &str = "http://127.0.0.1:9";

/// Writes `text` as the config and runs `gatekeeper check -c <abs path>`.
fn check_text(fx: &Fixture, text: &str) -> (String, std::process::Output) {
    let p = fx.config_path();
    std::fs::write(&p, text).unwrap();
    let path = p.to_str().unwrap().to_string();
    let o = gk(&["check", "-c", &path]);
    (path, o)
}

fn assert_ok(o: &std::process::Output) {
    assert_eq!(o.status.code(), Some(0), "{}", show(o));
    // `config OK`, optionally followed by the file name (`config OK: <file>`)
    let out = stdout(o);
    assert_eq!(out.lines().count(), 1, "{}", show(o));
    assert!(out.starts_with("config OK"), "{}", show(o));
}

/// Asserts exit 2 and a stderr line `<file>:<line>:<col>: <key>: <message>`
/// (location exactly `at`); returns the message.
fn assert_err_at(o: &std::process::Output, file: &str, key: &str, at: (usize, usize)) -> String {
    assert_eq!(o.status.code(), Some(2), "{}", show(o));
    assert!(!stdout(o).contains("config OK"), "{}", show(o));
    let prefix = format!("{file}:{}:{}: {key}: ", at.0, at.1);
    let err = stderr(o);
    let line = err
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no stderr line starting with {prefix:?}\n{}", show(o)));
    let msg = line[prefix.len()..].to_string();
    assert!(!msg.trim().is_empty(), "empty message: {line:?}");
    msg
}

/// Like [`assert_err_at`], for errors that have no meaningful source position
/// (missing key, filesystem state): `<file>: <key>: <msg>`, or
/// `<file>:<l>:<c>: <key>: <msg>` with any position.
fn assert_err_key(o: &std::process::Output, file: &str, key_re: &str) -> String {
    assert_eq!(o.status.code(), Some(2), "{}", show(o));
    let re = regex::Regex::new(&format!(
        r"(?m)^{}(?::\d+:\d+)?: (?:{key_re}): (?P<msg>.+)$",
        regex::escape(file)
    ))
    .unwrap();
    let err = stderr(o);
    let c = re
        .captures(&err)
        .unwrap_or_else(|| panic!("no stderr line matching {re}\n{}", show(o)));
    c["msg"].to_string()
}

fn base(fx: &Fixture) -> Config {
    fx.config(UP)
}

// ---------------------------------------------------------------------------
// check: valid configs
// ---------------------------------------------------------------------------

#[test]
fn check_minimal_config_ok() {
    let fx = Fixture::new();
    let mut c = Config::default();
    c.set("listen", r#"["127.0.0.1:0"]"#);
    c.set("upstream.url", &q(UP));
    c.set("maintenance.toggle", &q(fx.toggle().to_str().unwrap()));
    let (_, o) = check_text(&fx, &c.render());
    assert_ok(&o);
}

#[test]
fn check_full_config_ok() {
    let fx = Fixture::new();
    fx.write("static/index.html", "<p>{{message}}</p>");
    fx.write("static/style.css", "p{}");
    let allowlist = fx.write(
        "allowlist",
        "# office\n203.0.113.9\n\n  198.51.100.0/24  \n# vpn v6\n2001:db8:1::/48\n",
    );
    let mut c = base(&fx);
    c.set("listen", r#"["127.0.0.1:0", "127.0.0.2:0"]"#);
    c.set("upstream.connect_timeout", &q("250ms"));
    c.set("upstream.timeout", "5");
    c.set("maintenance.dir", &q(fx.path("static").to_str().unwrap()));
    c.set("maintenance.retry_after", &q("1h"));
    c.set("maintenance.bypass_paths", &arr(&["/healthz", "/api/status"]));
    c.set(
        "clients.allow",
        &arr(&["203.0.113.7", "10.0.0.0/8", "2001:db8::/32", "::1"]),
    );
    c.set("clients.allow_file", &q(allowlist.to_str().unwrap()));
    c.set("clients.trusted_proxies", &arr(&["127.0.0.1", "::1", "10.1.0.0/16"]));
    c.set("clients.header", &q("Forwarded"));
    c.set("log.format", &q("json"));
    c.set("log.level", &q("debug"));
    let (_, o) = check_text(&fx, &c.render());
    assert_ok(&o);
    // unix upstream and X-Real-IP style header
    c.set("upstream.url", &q("unix:/run/gunicorn.sock"));
    c.set("clients.header", &q("X-Real-IP"));
    c.set("upstream.timeout", &q("10m"));
    let (_, o) = check_text(&fx, &c.render());
    assert_ok(&o);
}

#[test]
fn check_accepts_buffering_section() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("buffering.requests", "false");
    c.set("buffering.responses", "false");
    let (_, o) = check_text(&fx, &c.render());
    assert_ok(&o);
}

#[test]
fn check_relative_config_path_and_spec_example_format() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("clients.allow", &arr(&["203.0.113.7", "10.0.0.0/33"]));
    let text = c.render();
    std::fs::write(fx.config_path(), &text).unwrap();
    let (l, col) = loc(&text, "\"10.0.0.0/33\"");
    let o = gk_cmd(&["check", "-c", "gatekeeper.toml"], Some(fx.root()), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let want =
        format!("gatekeeper.toml:{l}:{col}: clients.allow[1]: \"10.0.0.0/33\" is not an IP address or CIDR range");
    assert!(
        stderr(&o).lines().any(|line| line == want),
        "want line {want:?}\n{}",
        show(&o)
    );
}

// ---------------------------------------------------------------------------
// check: each error kind
// ---------------------------------------------------------------------------

#[test]
fn check_toml_syntax_error() {
    let fx = Fixture::new();
    let text = base(&fx).render().replace("timeout = \"10s\"", "timeout = = \"10s\"");
    let (l, _) = loc(&text, "timeout = =");
    let (path, o) = check_text(&fx, &text);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let re = regex::Regex::new(&format!(r"(?m)^{}:{l}:\d+: \S", regex::escape(&path))).unwrap();
    assert!(re.is_match(&stderr(&o)), "want {re}\n{}", show(&o));

    // unterminated string
    let text = base(&fx)
        .render()
        .replace("url = \"http://127.0.0.1:9\"", "url = \"http://127.0.0.1:9");
    let (l, _) = loc(&text, "url = ");
    let (path, o) = check_text(&fx, &text);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let re = regex::Regex::new(&format!(r"(?m)^{}:{l}:\d+: \S", regex::escape(&path))).unwrap();
    assert!(re.is_match(&stderr(&o)), "want {re}\n{}", show(&o));
}

#[test]
fn check_unknown_top_level_key() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("lisen", r#"["127.0.0.1:1"]"#);
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "lisen", loc(&text, "lisen"));
}

#[test]
fn check_unknown_key_in_table() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("upstream.timout", &q("2s"));
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "upstream.timout", loc(&text, "timout"));
}

#[test]
fn check_unknown_table() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("frobnicate.enabled", "true");
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "frobnicate", loc(&text, "frobnicate"));
}

#[test]
fn check_wrong_type() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("log.access", &q("yes"));
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "log.access", loc(&text, "\"yes\""));

    let mut c = base(&fx);
    c.set("maintenance.bypass_paths", "42");
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "maintenance.bypass_paths", loc(&text, "42"));
}

#[test]
fn check_bad_duration() {
    let fx = Fixture::new();
    for bad in [q("5 parsecs"), q("ms"), q("-3s"), "-1".to_string(), q("")] {
        let mut c = base(&fx);
        c.set("upstream.timeout", &bad);
        let text = c.render();
        let (path, o) = check_text(&fx, &text);
        assert_err_at(
            &o,
            &path,
            "upstream.timeout",
            loc(&text, &format!("timeout = {bad}")).add_col(10),
        );
    }
    let mut c = base(&fx);
    c.set("maintenance.retry_after", &q("soon"));
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "maintenance.retry_after", loc(&text, "\"soon\""));
}

trait AddCol {
    fn add_col(self, n: usize) -> Self;
}
impl AddCol for (usize, usize) {
    fn add_col(self, n: usize) -> Self {
        (self.0, self.1 + n)
    }
}

#[test]
fn check_bad_cidr_in_allow_exact_line() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("clients.allow", &arr(&["203.0.113.7", "10.0.0.0/33", "2001:db8::/32"]));
    let text = c.render();
    let (l, col) = loc(&text, "\"10.0.0.0/33\"");
    let (path, o) = check_text(&fx, &text);
    let msg = assert_err_at(&o, &path, "clients.allow[1]", (l, col));
    assert_eq!(msg, "\"10.0.0.0/33\" is not an IP address or CIDR range");
    // only that entry is reported
    assert!(!stderr(&o).contains("clients.allow[0]"), "{}", show(&o));
    assert!(!stderr(&o).contains("clients.allow[2]"), "{}", show(&o));

    for bad in ["203.0.113.256", "10.0.0.0/", "2001:db8::/129", "office", "10.0.0.0/8/8"] {
        let mut c = base(&fx);
        c.set("clients.allow", &arr(&["203.0.113.7", bad]));
        let text = c.render();
        let (path, o) = check_text(&fx, &text);
        let msg = assert_err_at(&o, &path, "clients.allow[1]", loc(&text, &q(bad)));
        assert_eq!(msg, format!("{} is not an IP address or CIDR range", q(bad)));
    }
}

#[test]
fn check_bad_trusted_proxy() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("clients.trusted_proxies", &arr(&["127.0.0.1", "localhost"]));
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "clients.trusted_proxies[1]", loc(&text, "\"localhost\""));
}

#[test]
fn check_bad_header_name() {
    let fx = Fixture::new();
    for bad in ["X Forwarded For", "", "X-Forwarded-For:"] {
        let mut c = base(&fx);
        c.set("clients.header", &q(bad));
        let text = c.render();
        let (path, o) = check_text(&fx, &text);
        assert_err_at(
            &o,
            &path,
            "clients.header",
            loc(&text, &format!("header = {}", q(bad))).add_col(9),
        );
    }
}

#[test]
fn check_bad_upstream_url() {
    let fx = Fixture::new();
    for bad in [
        "ftp://127.0.0.1:21",
        "http://",
        "127.0.0.1:8000",
        "unix:",
        "http://exa mple:80",
    ] {
        let mut c = base(&fx);
        c.set("upstream.url", &q(bad));
        let text = c.render();
        let (path, o) = check_text(&fx, &text);
        assert_err_at(
            &o,
            &path,
            "upstream.url",
            loc(&text, &format!("url = {}", q(bad))).add_col(6),
        );
    }
}

#[test]
fn check_missing_required_keys() {
    let fx = Fixture::new();
    for (key, re) in [
        ("maintenance.toggle", r"maintenance\.toggle"),
        ("upstream.url", r"upstream\.url"),
        ("listen", r"listen"),
    ] {
        let mut c = base(&fx);
        c.remove(key);
        let text = c.render();
        let (path, o) = check_text(&fx, &text);
        assert_err_key(&o, &path, re);
    }
    // whole [upstream] table missing
    let text: String = base(&fx)
        .render()
        .split("\n\n")
        .filter(|s| !s.starts_with("[upstream]"))
        .collect::<Vec<_>>()
        .join("\n\n");
    assert!(!text.contains("url"));
    let (path, o) = check_text(&fx, &text);
    assert_err_key(&o, &path, r"upstream(\.url)?");
}

#[test]
fn check_bad_listen_address() {
    let fx = Fixture::new();
    for bad in ["127.0.0.1:99999", "nohost", "[::1:80"] {
        let mut c = base(&fx);
        c.set("listen", &arr(&["127.0.0.1:0", bad]));
        let text = c.render();
        let (path, o) = check_text(&fx, &text);
        assert_err_at(&o, &path, "listen[1]", loc(&text, &format!(", {}", q(bad))).add_col(2));
    }
    let mut c = base(&fx);
    c.set("listen", "[]");
    let (path, o) = check_text(&fx, &c.render());
    assert_err_key(&o, &path, "listen");
}

#[test]
fn check_missing_toggle_directory() {
    let fx = Fixture::new();
    let missing = fx.path("no-such-dir");
    let mut c = base(&fx);
    c.set("maintenance.toggle", &q(missing.join(TOGGLE_NAME).to_str().unwrap()));
    let (path, o) = check_text(&fx, &c.render());
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let want = format!(
        "{path}: maintenance.toggle: directory \"{}\" does not exist",
        missing.display()
    );
    // the message may go on with a hint
    assert!(
        stderr(&o).lines().any(|l| l.starts_with(&want)),
        "want {want:?}\n{}",
        show(&o)
    );
}

#[test]
fn check_allow_file_missing() {
    let fx = Fixture::new();
    let missing = fx.path("no-allowlist");
    let mut c = base(&fx);
    c.set("clients.allow_file", &q(missing.to_str().unwrap()));
    let (path, o) = check_text(&fx, &c.render());
    let msg = assert_err_key(&o, &path, r"clients\.allow_file");
    assert!(
        msg.contains(missing.to_str().unwrap()),
        "message should name the file: {msg:?}"
    );
}

#[test]
fn check_allow_file_bad_line() {
    let fx = Fixture::new();
    let allowlist = fx.write("allowlist", "# office\n203.0.113.7\nnot-an-ip\n10.0.0.0/8\n");
    let mut c = base(&fx);
    c.set("clients.allow_file", &q(allowlist.to_str().unwrap()));
    let (_, o) = check_text(&fx, &c.render());
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let al = allowlist.to_str().unwrap();
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains(al) && l.contains("not-an-ip"))
        .unwrap_or_else(|| panic!("no line naming {al} and the entry\n{}", show(&o)));
    let re = regex::Regex::new(&format!(r"{}:3(:\d+)?:|line 3\b", regex::escape(al))).unwrap();
    assert!(re.is_match(line), "line 3 not named in {line:?}");
    assert!(!err.contains("203.0.113.7"), "valid entries reported: {err}");
}

#[test]
fn check_page_dir_without_index() {
    let fx = Fixture::new();
    fx.write("static/style.css", "p{}");
    let mut c = base(&fx);
    c.set("maintenance.dir", &q(fx.path("static").to_str().unwrap()));
    let (path, o) = check_text(&fx, &c.render());
    let msg = assert_err_key(&o, &path, r"maintenance\.dir");
    assert!(msg.contains("index.html"), "{msg:?}");

    let mut c = base(&fx);
    c.set("maintenance.dir", &q(fx.path("nope").to_str().unwrap()));
    let (path, o) = check_text(&fx, &c.render());
    assert_err_key(&o, &path, r"maintenance\.dir");
}

#[test]
fn check_buffering_dir_must_take_temp_files() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("buffering.dir", &q(fx.path("no-such-dir").to_str().unwrap()));
    let (path, o) = check_text(&fx, &c.render());
    let msg = assert_err_key(&o, &path, r"buffering\.dir");
    assert!(msg.contains("cannot create temporary files in"), "{msg:?}");

    // With both directions streaming nothing spills to disk: no directory needed.
    c.set("buffering.requests", "false");
    c.set("buffering.responses", "false");
    let (_, o) = check_text(&fx, &c.render());
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn check_bad_log_level_and_format() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("log.level", &q("loud"));
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "log.level", loc(&text, "\"loud\""));

    let mut c = base(&fx);
    c.set("log.format", &q("xml"));
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "log.format", loc(&text, "\"xml\""));
}

#[test]
fn check_reports_every_error() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("clients.allow", &arr(&["10.0.0.0/33"]));
    c.set("clients.trusted_proxies", &arr(&["nope"]));
    c.set("log.level", &q("loud"));
    let text = c.render();
    let (path, o) = check_text(&fx, &text);
    assert_err_at(&o, &path, "clients.allow[0]", loc(&text, "\"10.0.0.0/33\""));
    assert_err_at(&o, &path, "clients.trusted_proxies[0]", loc(&text, "\"nope\""));
    assert_err_at(&o, &path, "log.level", loc(&text, "\"loud\""));
}

#[test]
fn check_missing_or_unreadable_config_file() {
    let fx = Fixture::new();
    let p = fx.path("absent.toml");
    let o = gk(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains(p.to_str().unwrap()), "{}", show(&o));
    // a directory is not a readable config
    let o = gk(&["check", "-c", fx.root().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}

// ---------------------------------------------------------------------------
// run with a bad config
// ---------------------------------------------------------------------------

#[test]
fn run_with_invalid_config_exits_2_with_same_format() {
    let fx = Fixture::new();
    let mut c = base(&fx);
    c.set("clients.allow", &arr(&["203.0.113.7", "10.0.0.0/33"]));
    let text = c.render();
    let (l, col) = loc(&text, "\"10.0.0.0/33\"");
    let p = c.write(&fx);
    let path = p.to_str().unwrap();
    let o = gk(&["run", "-c", path]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let want = format!("{path}:{l}:{col}: clients.allow[1]: \"10.0.0.0/33\" is not an IP address or CIDR range");
    assert!(stderr(&o).lines().any(|x| x == want), "want {want:?}\n{}", show(&o));

    // missing toggle directory
    let mut c = base(&fx);
    let missing = fx.path("gone");
    c.set("maintenance.toggle", &q(missing.join(TOGGLE_NAME).to_str().unwrap()));
    c.write(&fx);
    let o = gk(&["run", "-c", path]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let want = format!(
        "{path}: maintenance.toggle: directory \"{}\" does not exist",
        missing.display()
    );
    assert!(
        stderr(&o).lines().any(|x| x.starts_with(&want)),
        "want {want:?}\n{}",
        show(&o)
    );

    // unreadable config
    let absent = fx.path("absent.toml");
    let o = gk(&["run", "-c", absent.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains(absent.to_str().unwrap()), "{}", show(&o));
}

// ---------------------------------------------------------------------------
// on / off / status
// ---------------------------------------------------------------------------

fn cfg_fixture() -> (Fixture, String) {
    let fx = Fixture::new();
    let p = base(&fx).write(&fx);
    let path = p.to_str().unwrap().to_string();
    (fx, path)
}

/// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) to unix seconds.
fn rfc3339_to_unix(s: &str) -> i64 {
    let re = regex::Regex::new(
        r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))$",
    )
    .unwrap();
    let c = re.captures(s).unwrap_or_else(|| panic!("not RFC 3339: {s:?}"));
    let n = |i: usize| c[i].parse::<i64>().unwrap();
    let (y, m, d) = (n(1), n(2), n(3));
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let mut t = days * 86400 + n(4) * 3600 + n(5) * 60 + n(6);
    if c.get(7).is_none() {
        let off = n(9) * 3600 + n(10) * 60;
        t -= if &c[8] == "+" { off } else { -off };
    }
    t
}

fn set_mtime(p: &Path, secs: i64) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        },
    ];
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat");
}

fn status_line(path: &str) -> String {
    let o = gk(&["status", "-c", path]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "status must print exactly one line: {out:?}");
    assert!(out.ends_with('\n'), "{out:?}");
    out.trim_end_matches('\n').to_string()
}

fn status_on_re() -> regex::Regex {
    regex::Regex::new(r"^maintenance: on since (\S+) \((.*)\)$").unwrap()
}

#[test]
fn on_off_status_idempotent() {
    let (fx, path) = cfg_fixture();
    assert_eq!(status_line(&path), "maintenance: off");

    let o = gk(&[
        "on",
        "-c",
        &path,
        "--message",
        "Deploying v2 (db)",
        "--retry-after",
        "5m",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).starts_with("maintenance: on"), "{}", show(&o));
    assert!(fx.toggle().is_file());
    let content = std::fs::read_to_string(fx.toggle()).unwrap();
    assert!(
        content.lines().any(|l| l.trim() == r#"message = "Deploying v2 (db)""#),
        "{content:?}"
    );
    assert!(
        regex::Regex::new(r#"(?m)^\s*retry_after = "[^"]+"\s*$"#)
            .unwrap()
            .is_match(&content),
        "{content:?}"
    );

    let line = status_line(&path);
    let c = status_on_re().captures(&line).unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(&c[2], "Deploying v2 (db)");
    let since = rfc3339_to_unix(&c[1]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - since).abs() <= 60, "since {} is not now", &c[1]);

    // again: still exit 0, still on, message replaced
    let o = gk(&["on", "-c", &path, "--message", "second"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).starts_with("maintenance: on"), "{}", show(&o));
    let line = status_line(&path);
    assert_eq!(&status_on_re().captures(&line).unwrap()[2], "second", "{line}");

    let o = gk(&["off", "-c", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).starts_with("maintenance: off"), "{}", show(&o));
    assert!(!fx.toggle().exists());
    let o = gk(&["off", "-c", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).starts_with("maintenance: off"), "{}", show(&o));
    assert_eq!(status_line(&path), "maintenance: off");

    // no temporary files left behind in the toggle directory (the history is meant to stay)
    let left: Vec<_> = std::fs::read_dir(fx.toggle_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "maintenance-mode-on.history")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn on_without_message_and_status_since_is_toggle_mtime() {
    let (fx, path) = cfg_fixture();
    let o = gk(&["on", "-c", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(fx.toggle().is_file());
    let line = status_line(&path);
    assert!(status_on_re().is_match(&line), "{line:?}");

    // a toggle created by `touch` (empty) with a known mtime
    std::fs::write(fx.toggle(), b"").unwrap();
    set_mtime(&fx.toggle(), 1614834367); // 2021-03-04T05:06:07Z
    let line = status_line(&path);
    let c = status_on_re().captures(&line).unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(rfc3339_to_unix(&c[1]), 1614834367, "{line}");
    assert!(!c[2].is_empty(), "default message expected: {line:?}");
}

#[test]
fn on_rejects_bad_retry_after() {
    let (fx, path) = cfg_fixture();
    let o = gk(&["on", "-c", &path, "--retry-after", "soon"]);
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(!fx.toggle().exists(), "toggle created despite the error");
}

#[test]
fn message_with_quotes_round_trips() {
    let (_fx, path) = cfg_fixture();
    let msg = r#"Back at 15:00 "UTC" \ <soon> & ünïcode"#;
    let o = gk(&["on", "-c", &path, "--message", msg]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let line = status_line(&path);
    assert_eq!(&status_on_re().captures(&line).unwrap()[2], msg, "{line}");
}

/// inotify events (mask, name) in `dir` while `f` runs.
fn inotify_events(dir: &Path, f: impl FnOnce()) -> Vec<(u32, String)> {
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0);
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    let mask = libc::IN_CREATE
        | libc::IN_MODIFY
        | libc::IN_CLOSE_WRITE
        | libc::IN_MOVED_TO
        | libc::IN_MOVED_FROM
        | libc::IN_DELETE
        | libc::IN_ATTRIB;
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    assert!(wd >= 0);
    f();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr() as *const libc::inotify_event) };
            let hdr = std::mem::size_of::<libc::inotify_event>();
            let name_bytes = &buf[off + hdr..off + hdr + ev.len as usize];
            let name = String::from_utf8_lossy(name_bytes).trim_end_matches('\0').to_string();
            out.push((ev.mask, name));
            off += hdr + ev.len as usize;
        }
    }
    unsafe { libc::close(fd) };
    out
}

#[test]
fn on_writes_toggle_atomically() {
    let (fx, path) = cfg_fixture();
    // On the toggle's own name only a rename may happen (IN_MOVED_TO; an
    // IN_CLOSE_WRITE after it, from closing the renamed temp file, is
    // harmless). IN_CREATE / IN_MODIFY on that name mean a reader could see
    // an empty or partial toggle.
    let flags = |evs: &[(u32, String)]| -> Vec<u32> {
        evs.iter()
            .filter(|(_, n)| n == TOGGLE_NAME)
            .map(|(m, _)| *m & !libc::IN_CLOSE_WRITE)
            .filter(|m| *m != 0)
            .collect()
    };
    // toggle absent -> present
    let evs = inotify_events(&fx.toggle_dir(), || {
        let o = gk(&["on", "-c", &path, "--message", "first"]);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    });
    assert_eq!(
        flags(&evs),
        vec![libc::IN_MOVED_TO],
        "the toggle must only appear by rename: {evs:?}"
    );
    // toggle present -> replaced (content must never be seen truncated)
    let evs = inotify_events(&fx.toggle_dir(), || {
        let o = gk(&["on", "-c", &path, "--message", "second"]);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    });
    assert_eq!(
        flags(&evs),
        vec![libc::IN_MOVED_TO],
        "the toggle must only be replaced by rename: {evs:?}"
    );
    let content = std::fs::read_to_string(fx.toggle()).unwrap();
    assert!(content.contains("message = \"second\""), "{content:?}");
}

#[test]
fn on_concurrent_reader_never_sees_partial_toggle() {
    let (fx, path) = cfg_fixture();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toggle = fx.toggle();
    let s2 = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut bad = Vec::new();
        let mut reads = 0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(c) = std::fs::read_to_string(&toggle) {
                reads += 1;
                if !(c.contains("message = \"aaaa\"") || c.contains("message = \"bbbb\"")) {
                    bad.push(c);
                }
            }
        }
        (reads, bad)
    });
    for i in 0..16 {
        let m = if i % 2 == 0 { "aaaa" } else { "bbbb" };
        let o = gk(&["on", "-c", &path, "--message", m]);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, bad) = reader.join().unwrap();
    assert!(reads > 0);
    assert!(
        bad.is_empty(),
        "partial toggle contents seen: {:?}",
        &bad[..bad.len().min(3)]
    );
}

#[test]
fn gatekeeper_config_env_var() {
    let (fx, path) = cfg_fixture();
    let env = [("GATEKEEPER_CONFIG", path.as_str())];
    let o = gk_cmd(&["check"], None, &env);
    assert_ok(&o);
    let o = gk_cmd(&["on", "--message", "via env"], None, &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(fx.toggle().is_file());
    let o = gk_cmd(&["status"], None, &env);
    let out = stdout(&o);
    let c = status_on_re()
        .captures(out.trim_end())
        .unwrap_or_else(|| panic!("{}", show(&o)));
    assert_eq!(&c[2], "via env");
    let o = gk_cmd(&["off"], None, &env);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(!fx.toggle().exists());
    // -c wins over the environment
    let o = gk_cmd(
        &["check", "-c", &path],
        None,
        &[("GATEKEEPER_CONFIG", "/nonexistent/x.toml")],
    );
    assert_ok(&o);
    // a bad GATEKEEPER_CONFIG is used (and fails) when -c is absent
    let o = gk_cmd(&["check"], None, &[("GATEKEEPER_CONFIG", "/nonexistent/x.toml")]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("/nonexistent/x.toml"), "{}", show(&o));
}

#[test]
fn help_for_every_command() {
    for cmd in ["run", "check", "on", "off", "status"] {
        let o = gk(&[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{cmd} --help\n{}", show(&o));
        let out = stdout(&o);
        assert!(
            out.to_lowercase().contains("example"),
            "{cmd} --help has no example:\n{out}"
        );
        assert!(
            out.contains(&format!("gatekeeper {cmd}")),
            "{cmd} --help example does not show `gatekeeper {cmd}`:\n{out}"
        );
    }
    let o = gk(&["on", "--help"]);
    let out = stdout(&o);
    assert!(out.contains("--message") && out.contains("--retry-after"), "{out}");
    let o = gk(&["--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    for cmd in ["run", "check", "on", "off", "status"] {
        assert!(stdout(&o).contains(cmd), "top-level help lacks {cmd}");
    }
}
