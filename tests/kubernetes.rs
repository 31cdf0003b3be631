//! Area: the Kubernetes manifests in deploy/kubernetes/.
//!
//! The Kubernetes examples in deploy/kubernetes/ stay true to the config they
//! embed: ports, paths and names agree between the gatekeeper.toml in the
//! ConfigMap, the Deployment and the Service, and the embedded config passes
//! `gatekeeper check` (with its paths moved into a temp dir).
//!
//! No YAML crate is available, so the manifests are kept to a simple subset
//! (block mappings and sequences, `|` literal blocks, `[..]` flow sequences of
//! scalars, `{}`) and read by the small parser below, which rejects anything
//! else rather than guess.

mod common;
use common::{show, BIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CONFIG_KEY: &str = "gatekeeper.toml";
const TOGGLE_KEY: &str = "maintenance-mode-on";

// ---------------------------------------------------------------------------
// A YAML subset
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Y {
    Str(String),
    Seq(Vec<Y>),
    Map(Vec<(String, Y)>),
}

impl Y {
    fn get(&self, key: &str) -> Option<&Y> {
        match self {
            Y::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A dotted path of map keys: `spec.template.spec`.
    fn at(&self, path: &str) -> &Y {
        let mut cur = self;
        for k in path.split('.') {
            cur = cur
                .get(k)
                .unwrap_or_else(|| panic!("no {path:?} (at {k:?}) in {self:?}"));
        }
        cur
    }

    fn str(&self) -> &str {
        match self {
            Y::Str(s) => s,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    fn seq(&self) -> &[Y] {
        match self {
            Y::Seq(v) => v,
            other => panic!("not a sequence: {other:?}"),
        }
    }

    fn map(&self) -> &[(String, Y)] {
        match self {
            Y::Map(v) => v,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    fn strs(&self) -> Vec<&str> {
        self.seq().iter().map(Y::str).collect()
    }

    /// The element of a sequence of mappings whose `name` is `name`.
    fn named(&self, name: &str) -> &Y {
        self.seq()
            .iter()
            .find(|e| e.get("name").map(Y::str) == Some(name))
            .unwrap_or_else(|| panic!("no element named {name:?} in {self:?}"))
    }
}

struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

/// Parses a file of `---`-separated documents.
fn parse_docs(text: &str) -> Vec<Y> {
    let mut docs = Vec::new();
    let mut cur: Vec<(usize, &str)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim_end() == "---" {
            docs.push(std::mem::take(&mut cur));
        } else {
            cur.push((i + 1, raw));
        }
    }
    docs.push(cur);
    docs.into_iter()
        .filter_map(|lines| {
            let ls: Vec<Line> = lines
                .iter()
                .map(|&(no, raw)| Line {
                    no,
                    indent: raw.len() - raw.trim_start().len(),
                    text: raw,
                })
                .collect();
            let mut p = Parser { lines: ls, pos: 0 };
            p.skip_blank();
            if p.pos >= p.lines.len() {
                return None;
            }
            let indent = p.lines[p.pos].indent;
            let y = p.node(indent);
            p.skip_blank();
            assert!(
                p.pos >= p.lines.len(),
                "line {}: unexpected indentation",
                p.lines[p.pos].no
            );
            Some(y)
        })
        .collect()
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
}

fn is_blank(text: &str) -> bool {
    let t = text.trim();
    t.is_empty() || t.starts_with('#')
}

impl<'a> Parser<'a> {
    fn skip_blank(&mut self) {
        while self.pos < self.lines.len() && is_blank(self.lines[self.pos].text) {
            self.pos += 1;
        }
    }

    /// A block node whose lines are at `indent`.
    fn node(&mut self, indent: usize) -> Y {
        self.skip_blank();
        let first = self.lines[self.pos].text.trim_start();
        if first == "-" || first.starts_with("- ") {
            self.seq(indent)
        } else {
            self.map(indent)
        }
    }

    fn seq(&mut self, indent: usize) -> Y {
        let mut items = Vec::new();
        loop {
            self.skip_blank();
            if self.pos >= self.lines.len() || self.lines[self.pos].indent != indent {
                break;
            }
            let (no, line_indent, text) = {
                let l = &self.lines[self.pos];
                (l.no, l.indent, l.text)
            };
            let t = text.trim_start();
            let Some(rest) = t.strip_prefix("- ") else { break };
            let rest = rest.trim_start();
            if is_key_line(rest) {
                // "- key: value": a mapping whose first line is this one, indented past the dash.
                let inner = text.len() - rest.len();
                assert!(inner > line_indent);
                self.lines[self.pos] = Line {
                    no,
                    indent: inner,
                    text: &text[inner..],
                };
                items.push(self.map(inner));
            } else {
                items.push(scalar(rest, no));
                self.pos += 1;
            }
        }
        Y::Seq(items)
    }

    fn map(&mut self, indent: usize) -> Y {
        let mut entries: Vec<(String, Y)> = Vec::new();
        loop {
            self.skip_blank();
            if self.pos >= self.lines.len() || self.lines[self.pos].indent != indent {
                break;
            }
            let (no, t) = (self.lines[self.pos].no, self.lines[self.pos].text.trim_start());
            if t.starts_with("- ") {
                break;
            }
            let (key, value) = split_key(t).unwrap_or_else(|| panic!("line {no}: not `key: value`: {t:?}"));
            assert!(
                !entries.iter().any(|(k, _)| k == key),
                "line {no}: duplicate key {key:?}"
            );
            self.pos += 1;
            let v = if value == "|" || value == "|-" {
                self.literal(indent, value == "|")
            } else if value.is_empty() {
                self.skip_blank();
                match self.lines.get(self.pos) {
                    Some(next) if next.indent > indent => {
                        let i = next.indent;
                        self.node(i)
                    }
                    _ => Y::Str(String::new()),
                }
            } else {
                scalar(value, no)
            };
            entries.push((key.to_string(), v));
        }
        Y::Map(entries)
    }

    /// A `|` block: the following lines indented past `indent`, dedented.
    fn literal(&mut self, indent: usize, keep_newline: bool) -> Y {
        let mut body: Vec<&str> = Vec::new();
        let mut block_indent = None;
        while self.pos < self.lines.len() {
            let l = &self.lines[self.pos];
            if l.text.trim().is_empty() {
                body.push("");
                self.pos += 1;
                continue;
            }
            if l.indent <= indent {
                break;
            }
            let bi = *block_indent.get_or_insert(l.indent);
            assert!(l.indent >= bi, "line {}: literal block dedented", l.no);
            body.push(&l.text[bi..]);
            self.pos += 1;
        }
        while body.last() == Some(&"") {
            body.pop();
        }
        let mut s = body.join("\n");
        if keep_newline {
            s.push('\n');
        }
        Y::Str(s)
    }
}

fn is_key_line(t: &str) -> bool {
    split_key(t).is_some() && !t.starts_with(['"', '\'', '['])
}

/// `key: value` (value may be empty); keys are plain words.
fn split_key(t: &str) -> Option<(&str, &str)> {
    let (k, v) = if let Some(k) = t.strip_suffix(':') {
        (k, "")
    } else {
        let i = t.find(": ")?;
        (&t[..i], t[i + 2..].trim())
    };
    let ok = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    ok.then_some((k, strip_comment(v)))
}

fn strip_comment(v: &str) -> &str {
    if v.starts_with(['"', '\'', '[', '{']) {
        return v;
    }
    match v.find(" #") {
        Some(i) => v[..i].trim_end(),
        None => v,
    }
}

fn scalar(v: &str, no: usize) -> Y {
    let v = strip_comment(v.trim());
    if v == "{}" {
        return Y::Map(Vec::new());
    }
    if let Some(inner) = v.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .unwrap_or_else(|| panic!("line {no}: unterminated flow sequence"));
        if inner.trim().is_empty() {
            return Y::Seq(Vec::new());
        }
        return Y::Seq(
            split_flow(inner, no)
                .into_iter()
                .map(|s| Y::Str(unquote(s.trim(), no)))
                .collect(),
        );
    }
    assert!(
        !v.starts_with(['{', '&', '*', '!', '|', '>']),
        "line {no}: unsupported YAML {v:?}"
    );
    Y::Str(unquote(v, no))
}

/// Splits a flow sequence's inside at commas outside double quotes.
fn split_flow(s: &str, no: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut esc) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if esc => esc = false,
            '\\' if quoted => esc = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    assert!(!quoted, "line {no}: unterminated string");
    out.push(&s[start..]);
    out
}

fn unquote(v: &str, no: usize) -> String {
    if let Some(inner) = v.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .unwrap_or_else(|| panic!("line {no}: unterminated string"));
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    other => panic!("line {no}: unsupported escape {other:?}"),
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if let Some(inner) = v.strip_prefix('\'') {
        inner
            .strip_suffix('\'')
            .unwrap_or_else(|| panic!("line {no}: unterminated string"))
            .replace("''", "'")
    } else {
        v.to_string()
    }
}

// ---------------------------------------------------------------------------
// The manifests
// ---------------------------------------------------------------------------

fn manifest(name: &str) -> Vec<Y> {
    let p = Path::new(ROOT).join("deploy/kubernetes").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    parse_docs(&text)
}

fn find<'a>(docs: &'a [Y], kind: &str, name: &str) -> &'a Y {
    docs.iter()
        .find(|d| d.get("kind").map(Y::str) == Some(kind) && d.at("metadata.name").str() == name)
        .unwrap_or_else(|| panic!("no {kind} {name:?}"))
}

fn kinds(docs: &[Y]) -> Vec<&str> {
    docs.iter().map(|d| d.at("kind").str()).collect()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Everything the checks need from one Deployment + its ConfigMaps + Service.
struct Pod<'a> {
    docs: &'a [Y],
    deployment: &'a Y,
    gatekeeper: &'a Y,
    config: toml::Table,
    config_text: String,
    config_path: String,
}

impl<'a> Pod<'a> {
    fn load(docs: &'a [Y]) -> Pod<'a> {
        let deployment = find(docs, "Deployment", "web");
        let spec = deployment.at("spec.template.spec");
        let gatekeeper = spec.at("containers").named("gatekeeper");

        // The config file path given to the daemon is the ConfigMap mount + its key.
        let args = gatekeeper.at("args").strs();
        assert_eq!(&args[..2], &["run", "-c"], "{args:?}");
        let config_path = args[2].to_string();
        let (dir, file) = config_path.rsplit_once('/').unwrap();
        assert_eq!(file, CONFIG_KEY);
        let vol = mount_volume(spec, gatekeeper, dir)
            .unwrap_or_else(|| panic!("no volume mounted at {dir:?} (the config's directory)"));
        let cm_name = vol.at("configMap.name").str();
        assert!(
            vol.at("configMap").get("items").is_none(),
            "keys are mounted under their own names"
        );
        let cm = find(docs, "ConfigMap", cm_name);
        let config_text = cm
            .at("data")
            .get(CONFIG_KEY)
            .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {CONFIG_KEY}"))
            .str()
            .to_string();
        let config: toml::Table = config_text
            .parse()
            .unwrap_or_else(|e| panic!("ConfigMap {cm_name}: {CONFIG_KEY} is not TOML: {e}\n{config_text}"));

        // GATEKEEPER_CONFIG (for `kubectl exec ... gatekeeper on`) names the same file.
        if let Some(env) = gatekeeper.get("env") {
            let v = env.named("GATEKEEPER_CONFIG").at("value").str();
            assert_eq!(v, config_path);
        }
        // So does the liveness probe.
        let probe = gatekeeper.at("livenessProbe.exec.command").strs();
        assert_eq!(probe[1..], ["health", "-c", config_path.as_str()], "{probe:?}");

        Pod {
            docs,
            deployment,
            gatekeeper,
            config,
            config_text,
            config_path,
        }
    }

    fn spec(&self) -> &'a Y {
        self.deployment.at("spec.template.spec")
    }

    fn toggle(&self) -> String {
        self.config["maintenance"]["toggle"].as_str().unwrap().to_string()
    }

    /// The volume holding the toggle, checked to be a mount of the gatekeeper container.
    fn toggle_volume(&self) -> &'a Y {
        let toggle = self.toggle();
        let (dir, _) = toggle.rsplit_once('/').unwrap();
        mount_volume(self.spec(), self.gatekeeper, dir)
            .unwrap_or_else(|| panic!("the toggle {toggle:?} does not lie in a volume mounted at {dir:?}"))
    }

    fn check_ports(&self) {
        let listen = self.config["listen"].as_array().unwrap();
        assert_eq!(listen.len(), 1, "one listener");
        let listen = listen[0].as_str().unwrap();
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{listen}: a pod listens on every interface"
        );
        let port = port_of(listen);

        let ports = self.gatekeeper.at("ports").seq();
        let http = self.gatekeeper.at("ports").named("http");
        assert_eq!(ports.len(), 1);
        assert_eq!(
            http.at("containerPort").str().parse::<u16>().unwrap(),
            port,
            "containerPort = listen port"
        );

        // The Service selects this pod and targets that port.
        let svc = find(self.docs, "Service", "web");
        let labels = self.deployment.at("spec.template.metadata.labels").map();
        assert!(!svc.at("spec.selector").map().is_empty(), "the Service selects nothing");
        for (k, v) in svc.at("spec.selector").map() {
            assert!(
                labels.iter().any(|(lk, lv)| lk == k && lv == v),
                "Service selector {k}={v:?} matches the pod"
            );
        }
        let sel = self.deployment.at("spec.selector.matchLabels").map();
        assert!(!sel.is_empty() && sel.iter().all(|s| labels.contains(s)), "{sel:?}");
        let sp = svc.at("spec.ports").seq();
        assert_eq!(sp.len(), 1);
        let target = sp[0].at("targetPort").str();
        let target_port = match target.parse::<u16>() {
            Ok(p) => p,
            Err(_) => {
                assert_eq!(target, "http", "named targetPort");
                port
            }
        };
        assert_eq!(target_port, port, "Service targetPort = listen port");
        assert_eq!(self.gatekeeper.at("readinessProbe.tcpSocket.port").str(), "http");

        // The upstream is the app container's port, on loopback (same pod).
        let up = self.config["upstream"]["url"].as_str().unwrap();
        let up_addr = up.strip_prefix("http://").unwrap();
        assert!(up_addr.starts_with("127.0.0.1:"), "{up}");
        let app = self.spec().at("containers").named("app");
        let app_port = app.at("ports").seq()[0].at("containerPort").str();
        assert_eq!(
            port_of(up_addr).to_string(),
            app_port,
            "upstream port = the app's containerPort"
        );

        // The admin endpoint stays inside the pod (the probe execs `gatekeeper health`).
        let admin = self.config["admin"]["listen"].as_str().unwrap();
        assert!(admin.starts_with("127.0.0.1:"), "{admin}");
        assert_ne!(port_of(admin), port);

        // A read-only root file system needs a writable /tmp for spilled bodies.
        if self
            .gatekeeper
            .get("securityContext")
            .and_then(|s| s.get("readOnlyRootFilesystem"))
            .map(Y::str)
            == Some("true")
        {
            let tmp = mount_volume(self.spec(), self.gatekeeper, "/tmp").expect("/tmp mount");
            assert!(tmp.get("emptyDir").is_some());
        }
    }

    /// `gatekeeper check` on the embedded config, its paths moved into a temp dir.
    fn check_config(&self, name: &str) {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = self.config.clone();
        let toggle_dir = tmp.path().join("toggle");
        std::fs::create_dir(&toggle_dir).unwrap();
        let toggle = toggle_dir.join(TOGGLE_KEY);
        cfg["maintenance"]
            .as_table_mut()
            .unwrap()
            .insert("toggle".into(), toggle.display().to_string().into());
        if let Some(f) = cfg.get_mut("fleet").and_then(|f| f.as_table_mut()) {
            // Nothing listens there: `check` warns about etcd and still passes.
            let dead = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            f.insert(
                "endpoints".into(),
                toml::Value::Array(vec![format!("http://{dead}").into()]),
            );
        }
        for key in ["dir", "allow_file"] {
            assert!(
                cfg["maintenance"].get(key).is_none() && cfg["clients"].get(key).is_none(),
                "{key}: rewrite it too"
            );
        }
        let path = tmp.path().join(CONFIG_KEY);
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        let o = run(&["check", "-c", path.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "{name}: gatekeeper check failed:\n{}\n{}",
            show(&o),
            self.config_text
        );
    }
}

/// The volume that the container mounts at exactly `dir`.
fn mount_volume<'a>(spec: &'a Y, container: &'a Y, dir: &str) -> Option<&'a Y> {
    let m = container
        .at("volumeMounts")
        .seq()
        .iter()
        .find(|m| m.at("mountPath").str().trim_end_matches('/') == dir)?;
    assert!(
        m.get("subPath").is_none(),
        "subPath mounts do not follow ConfigMap updates"
    );
    Some(spec.at("volumes").named(m.at("name").str()))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("GATEKEEPER_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run gatekeeper")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn toggle_configmap_way() {
    let docs = manifest("toggle-configmap.yaml");
    assert_eq!(kinds(&docs), ["ConfigMap", "ConfigMap", "Deployment", "Service"]);
    let pod = Pod::load(&docs);
    pod.check_ports();
    assert!(pod.config.get("fleet").is_none());

    // The toggle is the key "maintenance-mode-on" of a second ConfigMap, mounted as a directory.
    let toggle = pod.toggle();
    assert_eq!(
        toggle.rsplit_once('/').unwrap().1,
        TOGGLE_KEY,
        "the toggle file is named as the ConfigMap key"
    );
    let vol = pod.toggle_volume();
    let cm_name = vol.at("configMap.name").str();
    assert!(vol.at("configMap").get("items").is_none());
    let cm = find(&docs, "ConfigMap", cm_name);
    assert_ne!(
        cm_name,
        find(&docs, "ConfigMap", "gatekeeper-config").at("metadata.name").str()
    );
    // Off as shipped: the key is absent.
    assert!(
        cm.at("data").get(TOGGLE_KEY).is_none(),
        "maintenance must be off as shipped"
    );
    // The config's own mount is a different directory (the toggle must not be a key of the config map).
    let (cfg_dir, _) = pod.config_path.rsplit_once('/').unwrap();
    assert!(
        !toggle.starts_with(&format!("{cfg_dir}/")),
        "{toggle} inside the config mount {cfg_dir}"
    );
    pod.check_config("toggle-configmap.yaml");

    // The patch commands in the header comment name the same ConfigMap and key.
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/kubernetes/toggle-configmap.yaml")).unwrap();
    assert!(text.contains(&format!("kubectl patch configmap {cm_name} --type merge")));
    assert!(text.contains(&format!("\"path\":\"/data/{TOGGLE_KEY}\"")));
    assert!(text.contains(&format!("{{\"data\":{{\"{TOGGLE_KEY}\":")));
}

#[test]
fn fleet_etcd_way() {
    let docs = manifest("fleet-etcd.yaml");
    assert_eq!(kinds(&docs), ["ConfigMap", "Deployment", "Service"]);
    let pod = Pod::load(&docs);
    pod.check_ports();

    // The toggle (and <toggle>.fleet beside it) lives in a writable emptyDir.
    let toggle = pod.toggle();
    let vol = pod.toggle_volume();
    assert!(
        vol.get("emptyDir").is_some(),
        "the toggle directory must be writable: {vol:?}"
    );
    let (dir, _) = toggle.rsplit_once('/').unwrap();
    let mount = pod
        .gatekeeper
        .at("volumeMounts")
        .seq()
        .iter()
        .find(|m| m.at("mountPath").str() == dir)
        .unwrap();
    assert_ne!(mount.get("readOnly").map(Y::str), Some("true"));
    let state = PathBuf::from(format!("{toggle}.fleet"));
    assert!(state.starts_with(dir));

    // [fleet] points at the etcd Service of etcd.yaml.
    let fleet = pod.config["fleet"].as_table().unwrap();
    let endpoints: Vec<&str> = fleet["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(endpoints.len(), 1);
    let authority = endpoints[0].strip_prefix("http://").unwrap();
    let (host, port) = authority.rsplit_once(':').unwrap();
    let etcd = manifest("etcd.yaml");
    assert_eq!(kinds(&etcd), ["Service", "StatefulSet"]);
    let svc = find(&etcd, "Service", host);
    let sp = svc.at("spec.ports").seq();
    assert!(
        sp.iter().any(|p| p.at("port").str() == port),
        "etcd Service has port {port}"
    );
    let sts = find(&etcd, "StatefulSet", "etcd");
    let labels = sts.at("spec.template.metadata.labels").map();
    for (k, v) in svc.at("spec.selector").map() {
        assert!(labels.iter().any(|(lk, lv)| lk == k && lv == v));
    }
    let c = &sts.at("spec.template.spec.containers").seq()[0];
    let cport = c.at("ports").named("client").at("containerPort").str();
    assert_eq!(cport, "2379");
    let args = c.at("args").strs();
    assert!(args.contains(&"--listen-client-urls=http://0.0.0.0:2379"), "{args:?}");
    assert!(args
        .iter()
        .any(|a| a.starts_with("--advertise-client-urls=") && a.ends_with(&format!("{host}:{port}"))));
    assert_eq!(fleet["key"].as_str().unwrap(), "/gatekeeper/maintenance");

    assert!(["keep", "on", "off"].contains(&fleet["on_error"].as_str().unwrap()));
    pod.check_config("fleet-etcd.yaml");
}

#[test]
fn yaml_subset_parser() {
    let docs = parse_docs(
        "# c\n---\na: 1\nb:\n  - name: x\n    v: \"q # not a comment\"\n  - plain # comment\nc: |\n  line 1\n\n  line 2\nd: [\"run\", -c, 'x']\ne: {}\n",
    );
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d.at("a").str(), "1");
    assert_eq!(d.at("b").named("x").at("v").str(), "q # not a comment");
    assert_eq!(d.at("b").seq()[1].str(), "plain");
    assert_eq!(d.at("c").str(), "line 1\n\nline 2\n");
    assert_eq!(d.at("d").strs(), ["run", "-c", "x"]);
    assert_eq!(d.at("e"), &Y::Map(vec![]));
}
