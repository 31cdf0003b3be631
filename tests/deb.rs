//! What the Debian package ships besides the binary and the units: the man
//! page and the completions (`gatekeeper man` / `gatekeeper completions`
//! output kept in pkg/, which must be current and must name every command and
//! flag that `--help` shows), the packaged config (the example with package
//! paths, and valid), and the `[package.metadata.deb]` asset list.
//!
//! After changing the command line or config/gatekeeper.toml, rewrite pkg/
//! with `GATEKEEPER_BLESS=1 cargo test --test deb`. The package itself is
//! built, installed and purged by .ci/deb-test (root; changes the system).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_gatekeeper");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Each generated file in pkg/ and the arguments that print it.
const GENERATED: &[(&str, &[&str])] = &[
    ("pkg/gatekeeper.8", &["man"]),
    ("pkg/completions/gatekeeper.bash", &["completions", "bash"]),
    ("pkg/completions/_gatekeeper", &["completions", "zsh"]),
    ("pkg/completions/gatekeeper.fish", &["completions", "fish"]),
];

/// pkg/gatekeeper.toml is config/gatekeeper.toml with these passages
/// replaced: a toggle where the package makes its directory, the packaged
/// page, no allowlisted address.
const PACKAGED_CONFIG: &[(&str, &str)] = &[
    (
        "# gatekeeper — example configuration.\n#\n\
         # Every key is shown with its default. Only `listen`, `upstream.url` and\n\
         # `maintenance.toggle` are required. Relative paths are relative to the\n\
         # directory of this file, so this example runs as-is from a checkout:\n#\n\
         #   cargo run --release -- run -c config/gatekeeper.toml\n",
        "# gatekeeper — configuration, as the Debian package installs it.\n#\n\
         # Every key is shown with its default. Only `listen`, `upstream.url` and\n\
         # `maintenance.toggle` are required. Relative paths are relative to the\n\
         # directory of this file. After an edit:\n#\n\
         #   gatekeeper check && systemctl reload gatekeeper\n",
    ),
    (
        "# In production: \"/var/lib/gatekeeper/maintenance-mode-on\".\n\
         toggle = \"maintenance-mode-on\"\n",
        "# Members of group gatekeeper may create and remove it (gatekeeper on/off).\n\
         toggle = \"/var/lib/gatekeeper/maintenance-mode-on\"\n",
    ),
    (
        "# Default: the page built into the binary (the same as ../static).\n\
         # dir = \"/usr/share/gatekeeper/static\"\n",
        "# Default: the page built into the binary. The package's copy is below; to\n\
         # change the page, copy it (say to /etc/gatekeeper/page) and point `dir` there.\n\
         dir = \"/usr/share/gatekeeper/static\"\n",
    ),
    (
        "# Default: []. 127.0.0.2 is here so the README's walk-through can show an\n\
         # allowed client (curl --interface 127.0.0.2); replace it with your office.\n\
         allow = [\"127.0.0.2\"]\n",
        "# Default: []. For example [\"203.0.113.7\", \"2001:db8::/32\"].\nallow = []\n",
    ),
];

fn read(rel: &str) -> String {
    let p = Path::new(ROOT).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn gk(args: &[&str]) -> Output {
    let o = Command::new(BIN)
        .args(args)
        .env_remove("GATEKEEPER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "gatekeeper {args:?}: {o:?}");
    o
}

fn stdout(args: &[&str]) -> String {
    String::from_utf8(gk(args).stdout).unwrap()
}

fn bless() -> bool {
    std::env::var_os("GATEKEEPER_BLESS").is_some()
}

/// Compares `want` with the file, or writes it under GATEKEEPER_BLESS;
/// returns a complaint when they differ.
fn compare_or_bless(rel: &str, want: &str) -> Option<String> {
    let path = Path::new(ROOT).join(rel);
    if bless() {
        std::fs::write(&path, want).unwrap();
        return None;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    (have != want).then(|| format!("{rel} is out of date"))
}

#[test]
fn pkg_files_are_what_the_binary_prints() {
    let stale: Vec<String> = GENERATED
        .iter()
        .filter_map(|(rel, args)| compare_or_bless(rel, &stdout(args)))
        .collect();
    assert!(
        stale.is_empty(),
        "{}\nrewrite them with: GATEKEEPER_BLESS=1 cargo test --test deb",
        stale.join("\n")
    );
}

#[test]
fn packaged_config_is_the_example_with_package_paths() {
    let mut text = read("config/gatekeeper.toml");
    for (from, to) in PACKAGED_CONFIG {
        assert_eq!(
            text.matches(from).count(),
            1,
            "config/gatekeeper.toml no longer has this passage; update PACKAGED_CONFIG:\n{from}"
        );
        text = text.replacen(from, to, 1);
    }
    if let Some(stale) = compare_or_bless("pkg/gatekeeper.toml", &text) {
        panic!("{stale}; rewrite it with: GATEKEEPER_BLESS=1 cargo test --test deb");
    }

    // Valid, once its two package paths exist (here: a temporary toggle
    // directory and the checkout's page).
    let dir = tempfile::tempdir().unwrap();
    let static_dir = Path::new(ROOT).join("static");
    let text = text
        .replace("/var/lib/gatekeeper", dir.path().to_str().unwrap())
        .replace("/usr/share/gatekeeper/static", static_dir.to_str().unwrap());
    let cfg = dir.path().join("gatekeeper.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = stdout(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(out.starts_with("config OK"), "{out}");
}

/// The commands and the flags (`-c`, `--config`, ...) of one `--help` page.
struct Help {
    commands: Vec<String>,
    flags: Vec<String>,
}

fn help(args: &[&str]) -> Help {
    let text = stdout(&[args, &["--help"]].concat());
    let mut section = "";
    let mut h = Help {
        commands: Vec::new(),
        flags: Vec::new(),
    };
    for line in text.lines() {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        match section {
            "Commands:" => h.commands.push(first.to_string()),
            "Options:" => {
                let words = line.split([' ', ',']).filter(|w| w.starts_with('-'));
                h.flags.extend(words.take(2).map(str::to_string));
            }
            _ => {}
        }
    }
    h
}

/// Every command and flag, by the command that takes it ("" for the top).
fn every_flag() -> Vec<(String, Vec<String>)> {
    let top = help(&[]);
    assert!(top.commands.contains(&"status".to_string()), "{:?}", top.commands);
    let mut all = vec![(String::new(), top.flags)];
    for cmd in top.commands.iter().filter(|c| *c != "help") {
        let sub = help(&[cmd]);
        assert!(sub.flags.contains(&"--help".to_string()), "{cmd}: {:?}", sub.flags);
        all.push((cmd.clone(), sub.flags));
    }
    all
}

#[test]
fn man_page_names_every_command_and_flag() {
    // roff writes "-" as "\-" and switches fonts with \fB, \fI and \fR.
    let mut page = read("pkg/gatekeeper.8").replace("\\-", "-");
    for font in ["\\fB", "\\fI", "\\fR", "\\fP"] {
        page = page.replace(font, " ");
    }
    let words: BTreeSet<&str> = page
        .split(|c: char| c.is_whitespace() || "[]|,\"".contains(c))
        .collect();
    let mut missing = Vec::new();
    for (cmd, flags) in every_flag() {
        if !cmd.is_empty() && !page.contains(&format!(".SS \"gatekeeper {cmd}\"")) {
            missing.push(format!("command {cmd}"));
        }
        // `-c` and `--help` are described once, under OPTIONS.
        missing.extend(
            flags
                .iter()
                .filter(|f| !words.contains(f.as_str()))
                .map(|f| format!("{cmd} {f}")),
        );
    }
    assert!(missing.is_empty(), "not in pkg/gatekeeper.8: {missing:?}");
}

#[test]
fn zsh_and_fish_completions_name_every_command_and_flag() {
    let zsh = read("pkg/completions/_gatekeeper");
    let fish = read("pkg/completions/gatekeeper.fish");
    let mut missing = Vec::new();
    for (cmd, flags) in every_flag() {
        if !cmd.is_empty() {
            if !zsh.contains(&format!("\n'{cmd}:")) {
                missing.push(format!("zsh: command {cmd}"));
            }
            if !fish.contains(&format!("-a \"{cmd}\"")) {
                missing.push(format!("fish: command {cmd}"));
            }
        }
        for f in &flags {
            // zsh: '--message=[...]' or '-h[...]'; fish: -l message / -s c.
            // zsh: '--until=[...]', or '(--for)--until=[...]' with exclusions,
            // or '*--path=[...]' when repeatable.
            if !zsh.contains(&format!("'{f}")) && !zsh.contains(&format!("){f}")) && !zsh.contains(&format!("'*{f}")) {
                missing.push(format!("zsh: {cmd} {f}"));
            }
            let fish_form = match f.strip_prefix("--") {
                Some(long) => format!(" -l {long}"),
                None => format!(" -s {}", &f[1..]),
            };
            if !fish
                .lines()
                .any(|l| l.contains(&fish_form) && (cmd.is_empty() || l.contains(&cmd)))
            {
                missing.push(format!("fish: {cmd} {f}"));
            }
        }
    }
    assert!(missing.is_empty(), "missing from the completions: {missing:?}");
}

/// What bash offers for the last word of `line`, with pkg's script loaded.
fn bash_complete(line: &[&str]) -> Vec<String> {
    let script = Path::new(ROOT).join("pkg/completions/gatekeeper.bash");
    let words = line.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" ");
    let prog = format!(
        "source '{}'\nCOMP_WORDS=({words})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n\
         _gatekeeper gatekeeper \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let o = Command::new("bash").arg("-c").arg(prog).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_every_command_and_flag() {
    assert_eq!(bash_complete(&["gatekeeper", "st"]), ["status"]);
    let all = every_flag();
    let commands = bash_complete(&["gatekeeper", ""]);
    let mut missing = Vec::new();
    for (cmd, flags) in &all {
        if !cmd.is_empty() && !commands.contains(cmd) {
            missing.push(format!("command {cmd}"));
        }
        let offered = if cmd.is_empty() {
            bash_complete(&["gatekeeper", "-"])
        } else {
            bash_complete(&["gatekeeper", cmd, "-"])
        };
        missing.extend(
            flags
                .iter()
                .filter(|f| !offered.contains(f))
                .map(|f| format!("{cmd} {f}")),
        );
    }
    assert!(missing.is_empty(), "bash does not complete: {missing:?}");
}

#[test]
fn deb_assets_exist_and_the_config_is_a_conffile() {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let mut sources = Vec::new();
    for asset in deb["assets"].as_array().unwrap() {
        let a = asset.as_array().unwrap();
        let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        if src.starts_with("target/release/") {
            continue;
        }
        // "static/*", "docs/*.md": a directory with a file of that ending.
        let found = match src.split_once('*') {
            Some((dir, ending)) => std::fs::read_dir(Path::new(ROOT).join(dir))
                .map(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(ending))
                })
                .unwrap_or(false),
            None => Path::new(ROOT).join(src).is_file(),
        };
        assert!(found, "asset {src} -> {dest}: no such file");
        sources.push((src.to_string(), dest.to_string()));
    }
    for (rel, _) in GENERATED {
        assert!(sources.iter().any(|(s, _)| s == rel), "{rel} is not packaged");
    }
    let conf: Vec<&str> = deb["conf-files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(conf, ["/etc/gatekeeper/gatekeeper.toml"]);
    assert!(sources.contains(&("pkg/gatekeeper.toml".into(), "etc/gatekeeper/gatekeeper.toml".into())));
}

#[test]
fn changelog_is_for_this_version() {
    let changelog = read("pkg/changelog");
    let first = changelog.lines().next().unwrap_or("");
    let want = format!("gatekeeper ({}) ", env!("CARGO_PKG_VERSION"));
    assert!(
        first.starts_with(&want),
        "pkg/changelog starts with {first:?}; a new version needs an entry starting {want:?}"
    );
}
