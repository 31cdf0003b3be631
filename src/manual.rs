//! The man page and the shell completions, made from the clap definitions in
//! [`crate::cli`] so that they cannot say anything else than `--help`. The
//! Debian package ships their output from `pkg/`; tests/deb.rs checks that
//! those files are what this module prints.

use std::io;

use clap::{Command, CommandFactory};
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

use crate::cli::{Cli, Shell};
use crate::config::DEFAULT_PATH;

/// System administration commands and daemons, as nginx(8).
const SECTION: &str = "8";

/// `gatekeeper man`: one page for the daemon and every command, in roff.
pub fn man_page() -> io::Result<Vec<u8>> {
    let mut cmd = Cli::command();
    // Fills in bin names ("gatekeeper on") and the help flags.
    cmd.build();
    let top = Man::new(cmd.clone()).section(SECTION).manual("System Administration");
    let mut out = Vec::new();
    top.render_title(&mut out)?;
    body_of(&mut out, |w| top.render_name_section(w), true)?;
    body_of(&mut out, |w| top.render_synopsis_section(w), true)?;
    body_of(&mut out, |w| top.render_description_section(w), true)?;
    Roff::new()
        .control("PP", [])
        .text([roman(DESCRIPTION)])
        .to_writer(&mut out)?;
    body_of(&mut out, |w| top.render_options_section(w), true)?;

    Roff::new()
        .control("SH", ["COMMANDS"])
        .text([roman("Every command also takes -c/--config and -h/--help, as above.")])
        .to_writer(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command_section(&mut out, sub)?;
    }
    examples(&mut out, "EXAMPLES", &cmd)?;
    trailer().to_writer(&mut out)?;
    body_of(&mut out, |w| top.render_version_section(w), true)?;
    Ok(out)
}

/// `gatekeeper completions <shell>`: the completion script.
pub fn completions(shell: Shell) -> Vec<u8> {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(generator, &mut Cli::command(), "gatekeeper", &mut out);
    out
}

const DESCRIPTION: &str = "gatekeeper sits in front of a web application as a reverse proxy. \
    While the toggle file exists, every client that is not on the allowlist (and holds no bypass \
    link) gets a 503 page with Retry-After; everyone else reaches the application. \
    The toggle is watched with inotify, so touch, rm and mv take effect at once, \
    whether or not the daemon runs.";

/// One `.SS` block: what the command does, its synopsis, options and examples.
fn command_section(out: &mut Vec<u8>, sub: &Command) -> io::Result<()> {
    let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
    let mut head = Roff::new();
    head.control("SS", [name]);
    if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
        head.text([roman(about.to_string())]);
    }
    head.to_writer(out)?;
    // Said once under OPTIONS rather than in every command.
    let own = sub.clone().mut_args(|a| {
        let shared = a.get_id() == "config" || a.get_id() == "help";
        a.hide(shared)
    });
    let man = Man::new(own).section(SECTION);
    Roff::new().control("PP", []).to_writer(out)?;
    body_of(out, |w| man.render_synopsis_section(w), false)?;
    body_of(out, |w| man.render_options_section(w), false)?;
    examples(out, "", sub)
}

/// The command's `after_help` under a `.SH` of that name (which then stands
/// for its "Examples:" line), or inline when the name is empty. Indented
/// lines (commands, output) are kept as they are; the others are filled.
fn examples(out: &mut Vec<u8>, heading: &str, cmd: &Command) -> io::Result<()> {
    let Some(text) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) else {
        return Ok(());
    };
    let text = text.to_string();
    let mut lines = text.lines().peekable();
    let mut r = Roff::new();
    if heading.is_empty() {
        r.control("PP", []);
    } else {
        r.control("SH", [heading]);
        lines.next_if(|l| l.starts_with("Example"));
    }
    let mut verbatim = false;
    for line in lines {
        let indented = line.starts_with(' ');
        if indented != verbatim {
            r.control(if indented { "nf" } else { "fi" }, []);
            verbatim = indented;
        }
        if line.trim().is_empty() {
            r.control("PP", []);
        } else {
            r.text([roman(line)]);
        }
    }
    if verbatim {
        r.control("fi", []);
    }
    r.to_writer(out)
}

/// Writes what `render` writes, less roff's preamble (already at the top of
/// the page) and, when `keep_heading` is false, its `.SH` line.
fn body_of(
    out: &mut Vec<u8>,
    render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    keep_heading: bool,
) -> io::Result<()> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut heading_seen = keep_heading;
    for line in text.lines() {
        if line.starts_with(".ie \\n(.g") || line.starts_with(".el .ds Aq") {
            continue;
        }
        if !heading_seen && line.starts_with(".SH") {
            heading_seen = true;
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    Ok(())
}

/// FILES, ENVIRONMENT, EXIT STATUS, SIGNALS and SEE ALSO: what `--help` has
/// no place for.
fn trailer() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["FILES"]);
    for (path, what) in [
        (DEFAULT_PATH, "The configuration (TOML), the default for -c. Every key is commented in the file the package installs."),
        ("/var/lib/gatekeeper/maintenance-mode-on", "The toggle in the packaged configuration: maintenance is on while it exists. Members of group gatekeeper may create and remove it."),
        ("/usr/share/gatekeeper/static", "The maintenance page (index.html with {{message}}) and its assets."),
        ("/usr/lib/systemd/system/gatekeeper.service", "The hardened service (user gatekeeper, read-only system, Type=notify)."),
        ("/usr/lib/systemd/system/gatekeeper.socket", "Optional socket activation; not enabled by the package."),
    ] {
        r.control("TP", []).text([bold(path)]).text([roman(what)]);
    }
    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []).text([bold("GATEKEEPER_CONFIG")]);
    r.text([roman("The configuration file when -c is not given.")]);
    r.control("TP", []).text([bold("RUST_LOG")]);
    r.text([
        roman("Overrides the configuration's log level, e.g. "),
        italic("debug"),
        roman("."),
    ]);
    r.control("SH", ["SIGNALS"]);
    r.control("TP", []).text([bold("SIGHUP")]);
    r.text([roman(
        "Reload the configuration; an invalid one is refused and the running one stays.",
    )]);
    r.control("TP", []).text([bold("SIGTERM, SIGINT")]);
    r.text([roman(
        "Stop accepting, let in-flight requests finish for grace_period, exit 0.",
    )]);
    r.control("SH", ["EXIT STATUS"]);
    r.text([roman(
        "0 on success, 2 for configuration errors (each named by file, line, column and key), 1 for anything else.",
    )]);
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("systemctl"),
        roman("(1), "),
        bold("systemd.socket"),
        roman("(5), "),
        bold("tmpfiles.d"),
        roman("(5), "),
        bold("sysusers.d"),
        roman("(5); /usr/share/doc/gatekeeper/README.md"),
    ]);
    r
}
