//! Area: packaging (systemd units, Dockerfile, container config).
//!
//! Packaging: the systemd units (`systemd-analyze verify` and `security`, the
//! hardening directives, sysusers.d/tmpfiles.d), the Dockerfile and
//! .dockerignore (checked statically: no Docker engine runs in CI), and the
//! container config the Dockerfile writes (against `gatekeeper check`).
//!
//! `systemd-analyze` and `systemd-sysusers` come from the Debian package
//! `systemd`; the tests fail, not skip, when it is missing.

use std::collections::BTreeSet;
mod common;
use common::{show, BIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Where the unit (as the Debian package installs it) and the image put the
/// binary, and where both keep the config and the toggle.
const UNIT_BIN: &str = "/usr/bin/gatekeeper";
const IMAGE_BIN: &str = "/usr/local/bin/gatekeeper";
const CONFIG: &str = "/etc/gatekeeper/gatekeeper.toml";
const TOGGLE_DIR: &str = "/var/lib/gatekeeper";

fn read(rel: &str) -> String {
    let p = Path::new(ROOT).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------
// systemd unit files
// ---------------------------------------------------------------------------

/// A unit file as (section, key, value) triples in file order: comments
/// dropped, backslash continuations joined, repeated keys kept.
struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut out = Vec::new();
        let mut section = String::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let mut line = line.trim().to_string();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            while line.ends_with('\\') {
                match lines.next() {
                    Some(next) if next.trim_start().starts_with(['#', ';']) => continue,
                    Some(next) => {
                        line.pop();
                        line.push(' ');
                        line.push_str(next.trim());
                    }
                    None => {
                        line.pop();
                        break;
                    }
                }
            }
            if line.starts_with('[') && line.ends_with(']') {
                section = line[1..line.len() - 1].to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {line:?}"));
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
        Unit(out)
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value of a key that must be set exactly once.
    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key)[..] {
            [v] => v,
            ref vs => panic!("[{section}] {key}= must be set exactly once, found {vs:?}"),
        }
    }
}

fn service() -> Unit {
    Unit::parse(&read("systemd/gatekeeper.service"))
}

fn socket() -> Unit {
    Unit::parse(&read("systemd/gatekeeper.socket"))
}

/// Each must be set exactly once (a second line could widen a list such as
/// ReadWritePaths= or SystemCallFilter=, or reset it) and to this value.
const SERVICE_DIRECTIVES: &[(&str, &str)] = &[
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("User", "gatekeeper"),
    ("Group", "gatekeeper"),
    ("StateDirectory", "gatekeeper"),
    ("Restart", "on-failure"),
    ("TimeoutStopSec", "35"),
    ("LimitNOFILE", "65536"),
    ("UMask", "0027"),
    ("ProtectSystem", "strict"),
    ("ReadWritePaths", TOGGLE_DIR),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
    ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
    ("PrivateTmp", "yes"),
    ("ProtectHome", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallArchitectures", "native"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
];

#[test]
fn service_sets_every_hardening_directive() {
    let u = service();
    let mut wrong = Vec::new();
    for &(key, want) in SERVICE_DIRECTIVES {
        match u.all("Service", key)[..] {
            [v] if v == want => {}
            ref vs => wrong.push(format!("{key}={want} (found {vs:?})")),
        }
    }
    assert!(
        wrong.is_empty(),
        "gatekeeper.service [Service] needs exactly:\n  {}",
        wrong.join("\n  ")
    );
    // These would quietly undo the above.
    for key in [
        "PrivateUsers",
        "DynamicUser",
        "ReadWriteDirectories",
        "ProtectSystemPaths",
    ] {
        assert!(u.all("Service", key).is_empty(), "{key}= must not be set");
    }
    assert_eq!(u.one("Install", "WantedBy"), "multi-user.target");
}

#[test]
fn service_runs_check_then_run_and_reloads_with_sighup() {
    let u = service();
    assert_eq!(
        u.one("Service", "ExecStartPre"),
        format!("{UNIT_BIN} check -c {CONFIG}")
    );
    assert_eq!(u.one("Service", "ExecStart"), format!("{UNIT_BIN} run -c {CONFIG}"));
    let reload = u.all("Service", "ExecReload");
    assert_eq!(
        reload.last(),
        Some(&"/bin/kill -HUP $MAINPID"),
        "ExecReload: {reload:?}"
    );
    // Every command that runs gatekeeper uses the one installed path (the
    // verify test below rewrites it to the freshly built binary).
    for (s, k, v) in &u.0 {
        if k.starts_with("Exec") && v.contains("gatekeeper ") {
            assert!(v.starts_with(UNIT_BIN), "[{s}] {k}={v}");
        }
    }
}

#[test]
fn stop_timeout_outlasts_the_default_grace_period() {
    let example: toml::Value = toml::from_str(&read("config/gatekeeper.toml")).unwrap();
    let grace = example["server"]["grace_period"]
        .as_str()
        .expect("config/gatekeeper.toml: server.grace_period");
    let grace = humantime::parse_duration(grace).unwrap();
    let stop: u64 = service().one("Service", "TimeoutStopSec").parse().unwrap();
    assert!(
        stop > grace.as_secs(),
        "TimeoutStopSec={stop} must exceed grace_period {grace:?}"
    );
}

#[test]
fn socket_unit_activates_the_service() {
    let u = socket();
    assert!(
        !u.all("Socket", "ListenStream").is_empty(),
        "gatekeeper.socket: no ListenStream="
    );
    for v in u.all("Socket", "Service") {
        assert_eq!(v, "gatekeeper.service");
    }
    assert_eq!(u.one("Install", "WantedBy"), "sockets.target");
    let text = read("systemd/gatekeeper.service");
    assert!(
        text.contains("gatekeeper.socket") && text.contains("`listen`"),
        "the service must say that with gatekeeper.socket the `listen` key is ignored"
    );
}

#[test]
fn sysusers_and_tmpfiles_agree_with_the_service() {
    let svc = service();
    // u gatekeeper - "GECOS" /var/lib/gatekeeper
    let sysusers = read("systemd/gatekeeper.sysusers");
    let user = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .expect("gatekeeper.sysusers: no `u` line");
    let fields: Vec<&str> = user.split_whitespace().collect();
    assert_eq!(fields[1], svc.one("Service", "User"), "{user}");
    assert!(user.ends_with(TOGGLE_DIR), "home should be the state directory: {user}");

    // d /var/lib/gatekeeper MODE USER GROUP -
    let tmpfiles = read("systemd/gatekeeper.tmpfiles");
    let line = tmpfiles
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 5 && f[1] == TOGGLE_DIR)
        .unwrap_or_else(|| panic!("gatekeeper.tmpfiles: no line for {TOGGLE_DIR}"));
    assert_eq!(line[0], "d");
    assert_eq!(
        line[2],
        svc.one("Service", "StateDirectoryMode"),
        "mode differs from StateDirectoryMode="
    );
    assert_eq!(line[3], svc.one("Service", "User"));
    assert_eq!(line[4], svc.one("Service", "Group"));

    let root = tempfile::tempdir().unwrap();
    let file = Path::new(ROOT).join("systemd/gatekeeper.sysusers");
    let o = Command::new("systemd-sysusers")
        .arg("--dry-run")
        .arg(format!("--root={}", root.path().display()))
        .arg(&file)
        .env("SYSTEMD_LOG_LEVEL", "info")
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap_or_else(|e| panic!("systemd-sysusers: {e}: {MISSING}"));
    assert!(o.status.success(), "{}", show(&o));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("Creating user 'gatekeeper'"), "{}", show(&o));
    assert!(
        !all.to_lowercase().contains("warn") && !all.contains("ignoring"),
        "{}",
        show(&o)
    );
}

const MISSING: &str = "systemd-analyze / systemd-sysusers not found: install the Debian package `systemd` \
     (apt-get install -y systemd); CI installs it in .ci/";

/// `systemd-analyze --version` → 252.
fn systemd_version() -> u32 {
    let o = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}: {MISSING}"));
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("version? {out}"))
}

/// The units in a temp dir, mode 0644, with the installed binary path
/// rewritten to the one cargo built (verify insists that ExecStart exists).
fn units_in_tempdir(extra_service_line: Option<&str>) -> (tempfile::TempDir, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let text = read("systemd/gatekeeper.service");
    assert!(text.matches(UNIT_BIN).count() >= 2, "unit does not use {UNIT_BIN}");
    let mut text = text.replace(UNIT_BIN, BIN);
    if let Some(line) = extra_service_line {
        text = text.replace("[Service]\n", &format!("[Service]\n{line}\n"));
    }
    let svc = dir.path().join("gatekeeper.service");
    let sock = dir.path().join("gatekeeper.socket");
    std::fs::write(&svc, text).unwrap();
    std::fs::write(&sock, read("systemd/gatekeeper.socket")).unwrap();
    for p in [&svc, &sock] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    (dir, svc, sock)
}

fn analyze(args: &[&str], files: &[&Path]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .args(files)
        // Warnings and up, uncoloured, without source locations or times,
        // whatever the caller's environment says.
        .env("SYSTEMD_LOG_LEVEL", "info")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_LOG_LOCATION", "0")
        .env("SYSTEMD_LOG_TIME", "0")
        .env("SYSTEMD_PAGER", "cat")
        .env_remove("SYSTEMD_UNIT_PATH")
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}: {MISSING}"))
}

fn verify_args(version: u32) -> Vec<&'static str> {
    let mut args = vec!["verify", "--man=no"];
    if version >= 250 {
        // Our units decide the exit status, not the host's units that
        // network-online.target and sysinit.target pull in.
        args.push("--recursive-errors=no");
    }
    args
}

/// What `verify` printed, less lines about *other* units ("foo.service: ...")
/// that the dependency walk loads from the host: those are the host's
/// business (in containers: units for hardware or services that are absent),
/// never our files'. Everything else, including any line naming our files,
/// counts.
fn reported(o: &Output) -> Vec<String> {
    let other_unit = regex::Regex::new(
        r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|target|mount|automount|swap|path|timer|slice|scope|device):",
    )
    .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .filter(|l| !other_unit.is_match(l) || l.starts_with("gatekeeper."))
    .map(str::to_string)
    .collect()
}

#[test]
fn systemd_analyze_verify_reports_nothing() {
    let version = systemd_version();
    let (_dir, svc, sock) = units_in_tempdir(None);
    let o = analyze(&verify_args(version), &[&svc, &sock]);
    assert!(o.status.success(), "systemd-analyze verify failed:\n{}", show(&o));
    let lines = reported(&o);
    assert!(
        lines.is_empty(),
        "systemd-analyze verify reported:\n{}\n\n{}",
        lines.join("\n"),
        show(&o)
    );

    // Control: the same run does report a mistake, so silence above means
    // something (verify exits 0 on unknown keys; only its output tells).
    let (_dir, svc, sock) = units_in_tempdir(Some("ProtectClok=yes"));
    let o = analyze(&verify_args(version), &[&svc, &sock]);
    let lines = reported(&o);
    assert!(
        lines.iter().any(|l| l.contains("ProtectClok")),
        "control run not reported:\n{}",
        show(&o)
    );
}

#[test]
fn systemd_analyze_security_rates_the_service_ok() {
    let version = systemd_version();
    assert!(
        version >= 250,
        "systemd {version}: `security --offline` needs 250 or later"
    );
    let (_dir, svc, _sock) = units_in_tempdir(None);
    let o = analyze(&["security", "--offline=yes", "--no-pager"], &[&svc]);
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let level: f64 = out
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for gatekeeper.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{}", show(&o)));
    // 0 = fully locked down, 10 = unprotected; the unit scores 1.8 on systemd 252.
    assert!(level <= 2.5, "exposure {level} > 2.5: hardening was lost\n{out}");
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// One Dockerfile instruction: continuations joined, heredoc bodies attached.
#[derive(Debug)]
struct Instr {
    cmd: String,
    args: String,
    heredocs: Vec<String>,
}

fn parse_dockerfile(text: &str) -> Vec<Instr> {
    let marker = regex::Regex::new(r#"<<(-?)(["']?)([A-Za-z_][A-Za-z0-9_]*)["']?"#).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let mut line = line.trim().to_string();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        while line.ends_with('\\') {
            match lines.next() {
                Some(next) if next.trim_start().starts_with('#') => continue,
                Some(next) => {
                    line.pop();
                    line.push_str(next);
                }
                None => {
                    line.pop();
                    break;
                }
            }
        }
        let (cmd, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let mut heredocs = Vec::new();
        for m in marker.captures_iter(args) {
            let (strip_tabs, delim) = (&m[1] == "-", m[3].to_string());
            let mut body = String::new();
            loop {
                let l = lines.next().unwrap_or_else(|| panic!("heredoc {delim} not closed"));
                let l = if strip_tabs { l.trim_start_matches('\t') } else { l };
                if l == delim {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            heredocs.push(body);
        }
        out.push(Instr {
            cmd: cmd.to_uppercase(),
            args: args.trim().to_string(),
            heredocs,
        });
    }
    out
}

#[derive(Debug)]
struct Stage {
    image: String,
    name: String,
    instrs: Vec<Instr>,
}

fn stages() -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for i in parse_dockerfile(&read("Dockerfile")) {
        if i.cmd == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let (image, name) = match words[..] {
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => (image, name),
                _ => panic!("every stage is `FROM image AS name`: FROM {}", i.args),
            };
            stages.push(Stage {
                image: image.into(),
                name: name.into(),
                instrs: Vec::new(),
            });
        } else {
            stages.last_mut().expect("instruction before FROM").instrs.push(i);
        }
    }
    stages
}

impl Stage {
    fn find(&self, cmd: &str) -> impl Iterator<Item = &Instr> + '_ {
        let cmd = cmd.to_string();
        self.instrs.iter().filter(move |i| i.cmd == cmd)
    }
    fn last(&self, cmd: &str) -> &Instr {
        self.find(cmd)
            .last()
            .unwrap_or_else(|| panic!("final stage has no {cmd}"))
    }
}

fn json_array(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not a JSON (exec form) array: {s}: {e}"))
}

/// `--flag=value` options, then the remaining words.
fn flags_and_words(args: &str) -> (Vec<(&str, &str)>, Vec<&str>) {
    let (flags, words): (Vec<&str>, Vec<&str>) = args.split_whitespace().partition(|w| w.starts_with("--"));
    (
        flags
            .into_iter()
            .map(|f| f[2..].split_once('=').unwrap_or((&f[2..], "")))
            .collect(),
        words,
    )
}

/// The config the final stage writes to /etc/gatekeeper/gatekeeper.toml
/// (`COPY <<EOF /etc/gatekeeper/gatekeeper.toml`).
fn container_config_text() -> String {
    let stages = stages();
    let last = stages.last().unwrap();
    let copy = last
        .find("COPY")
        .find(|i| !i.heredocs.is_empty() && i.args.split_whitespace().last() == Some(CONFIG))
        .unwrap_or_else(|| panic!("final stage: no `COPY <<EOF {CONFIG}`"));
    copy.heredocs[0].clone()
}

fn container_config() -> toml::Value {
    toml::from_str(&container_config_text()).unwrap_or_else(|e| panic!("container config: {e}"))
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .port()
}

#[test]
fn dockerfile_builds_in_rust_and_runs_non_root() {
    let text = read("Dockerfile");
    assert!(
        text.starts_with("# syntax=docker/dockerfile:1"),
        "heredocs need the Dockerfile 1.4+ frontend: first line `# syntax=docker/dockerfile:1`"
    );
    let stages = stages();
    assert!(stages.len() >= 2, "multi-stage: {} stage(s)", stages.len());
    let build = &stages[0];
    assert_eq!(build.image, "rust:1-bookworm");
    assert!(
        build
            .find("RUN")
            .any(|i| i.args.contains("cargo build --release --locked")),
        "build stage must run `cargo build --release --locked`"
    );
    let last = stages.last().unwrap();
    assert!(
        last.image == "gcr.io/distroless/cc-debian12:nonroot" || last.image.starts_with("debian:bookworm-slim"),
        "runtime image: {}",
        last.image
    );

    // USER: not root, by name or number.
    let user = last.last("USER").args.clone();
    let uid = user.split(':').next().unwrap();
    assert!(!["root", "0", ""].contains(&uid), "final USER is root: {user:?}");

    // The binary comes from a build stage, to where ENTRYPOINT runs it.
    let names: Vec<&str> = stages[..stages.len() - 1].iter().map(|s| s.name.as_str()).collect();
    assert!(
        last.find("COPY").any(|i| {
            let (flags, words) = flags_and_words(&i.args);
            flags.iter().any(|(k, v)| *k == "from" && names.contains(v)) && words.last() == Some(&IMAGE_BIN)
        }),
        "final stage must COPY --from=<build stage> ... {IMAGE_BIN}"
    );
    assert_eq!(json_array(&last.last("ENTRYPOINT").args), [IMAGE_BIN]);
    assert_eq!(json_array(&last.last("CMD").args), ["run", "-c", CONFIG]);
    assert_eq!(last.last("STOPSIGNAL").args, "SIGTERM");
    let config_env: Vec<&str> = last
        .find("ENV")
        .filter_map(|env| env.args.strip_prefix("GATEKEEPER_CONFIG="))
        .collect();
    assert_eq!(config_env, [CONFIG], "ENV GATEKEEPER_CONFIG in the last stage");
}

#[test]
fn dockerfile_toggle_volume_is_owned_by_the_runtime_user() {
    let stages = stages();
    let last = stages.last().unwrap();
    let cfg = container_config();
    let toggle = cfg["maintenance"]["toggle"].as_str().expect("maintenance.toggle");
    assert_eq!(
        Path::new(toggle).parent(),
        Some(Path::new(TOGGLE_DIR)),
        "toggle {toggle}"
    );

    let volumes: Vec<String> = last
        .find("VOLUME")
        .flat_map(|i| {
            if i.args.starts_with('[') {
                json_array(&i.args)
            } else {
                i.args.split_whitespace().map(String::from).collect()
            }
        })
        .collect();
    assert!(
        volumes.iter().any(|v| v == TOGGLE_DIR),
        "VOLUME {volumes:?} lacks {TOGGLE_DIR}"
    );

    // A named volume starts as a copy of the image's directory: it must
    // belong to the runtime user, or `gatekeeper on` inside fails.
    let user = last.last("USER").args.clone();
    let uid = user.split(':').next().unwrap();
    assert!(
        last.find("COPY").any(|i| {
            let (flags, words) = flags_and_words(&i.args);
            flags
                .iter()
                .any(|(k, v)| *k == "chown" && v.split(':').next() == Some(uid))
                && words.last().map(|w| w.trim_end_matches('/')) == Some(TOGGLE_DIR)
        }),
        "final stage must create {TOGGLE_DIR} with COPY --chown={uid}:..."
    );
}

#[test]
fn dockerfile_exposes_exactly_the_listen_ports() {
    let stages = stages();
    let last = stages.last().unwrap();
    let cfg = container_config();
    let mut listen: Vec<&str> = cfg["listen"]
        .as_array()
        .expect("listen")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    if let Some(tls) = cfg.get("tls").and_then(|t| t.get("listen")).and_then(|l| l.as_array()) {
        listen.extend(tls.iter().map(|v| v.as_str().unwrap()));
    }
    let listen_ports: BTreeSet<u16> = listen.iter().copied().map(port_of).collect();
    for a in &listen {
        let ip = a.parse::<std::net::SocketAddr>().unwrap().ip();
        assert!(
            ip.is_unspecified(),
            "{a}: a container must listen on every interface to be reachable"
        );
    }
    let exposed: BTreeSet<u16> = last
        .find("EXPOSE")
        .flat_map(|i| i.args.split_whitespace().map(String::from).collect::<Vec<_>>())
        .map(|p| {
            p.trim_end_matches("/tcp")
                .parse()
                .unwrap_or_else(|_| panic!("EXPOSE {p}"))
        })
        .collect();
    assert_eq!(exposed, listen_ports, "EXPOSE vs the container config's listen ports");
}

#[test]
fn dockerfile_healthcheck_asks_the_admin_endpoint() {
    let stages = stages();
    let last = stages.last().unwrap();
    let hc = last.last("HEALTHCHECK");
    let (_, cmd) = hc.args.split_once("CMD").expect("HEALTHCHECK ... CMD [...]");
    let argv = json_array(cmd.trim());
    assert_eq!(
        argv,
        [IMAGE_BIN, "health", "-c", CONFIG],
        "HEALTHCHECK runs `gatekeeper health`"
    );
    // `health` GETs the admin /healthz, which must be up and reachable from
    // inside the container.
    let cfg = container_config();
    let admin = cfg
        .get("admin")
        .and_then(|a| a["listen"].as_str())
        .expect("container config: [admin] listen");
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    assert!(admin.ip().is_loopback(), "admin listens on {admin}: keep it loopback");
}

/// The config the image ships passes `gatekeeper check` (toggle moved to a
/// temp dir, as /var/lib/gatekeeper does not exist here).
#[test]
fn container_config_passes_gatekeeper_check() {
    let dir = tempfile::tempdir().unwrap();
    let text = container_config_text().replace(TOGGLE_DIR, dir.path().to_str().unwrap());
    let cfg = dir.path().join("gatekeeper.toml");
    std::fs::write(&cfg, text).unwrap();
    let o = Command::new(BIN).arg("check").arg("-c").arg(&cfg).output().unwrap();
    assert!(
        o.status.success(),
        "container config (Dockerfile heredoc) fails `gatekeeper check`:\n{}",
        show(&o)
    );
}

/// HEALTHCHECK relies on a (hidden) `gatekeeper health` subcommand.
#[test]
fn health_subcommand_exists_for_the_docker_healthcheck() {
    let o = Command::new(BIN).args(["health", "--help"]).output().unwrap();
    assert!(
        o.status.success(),
        "`gatekeeper health` (used by the Dockerfile HEALTHCHECK):\n{}",
        show(&o)
    );
}

#[test]
fn dockerignore_keeps_what_the_build_needs() {
    let text = read(".dockerignore");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .collect();
    assert!(patterns.contains(&"target"), "target/ must not be sent to the daemon");
    for needed in ["Cargo.toml", "Cargo.lock", "src/main.rs", "static/index.html"] {
        for p in &patterns {
            let hit = *p == "*" || *p == "**" || needed == *p || needed.starts_with(&format!("{p}/"));
            assert!(
                !hit,
                ".dockerignore pattern {p:?} excludes {needed}, which the build needs"
            );
        }
    }
}
