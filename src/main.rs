use std::process::ExitCode;

use clap::Parser;
use gatekeeper::cli::{Cli, Command};
use gatekeeper::{commands, config::Config, daemon, logging, manual, operators};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config.as_path();
    let result = match cli.command {
        Command::Run => {
            let config = match Config::load(path) {
                Ok(c) => c,
                Err(e) => return fail_config(&e),
            };
            logging::init(&config.log);
            // Workers run on threads of their own; this runtime only carries signals,
            // watchers, the admin endpoint and the fleet watch.
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
            };
            runtime.block_on(daemon::run(path, config)).map(|()| String::new())
        }
        Command::Check => match commands::check(path) {
            Ok((cfg, warnings)) => {
                let mut out = format!("config OK: {}", path.display());
                if let Some(f) = commands::check_fleet(&cfg) {
                    out = format!("{out}\n{f}");
                }
                println!("{out}");
                // Diagnostics, on stderr: stdout stays what scripts read.
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                Ok(String::new())
            }
            Err(e) => return fail_config(&e),
        },
        Command::On(args) => commands::on(path, args),
        Command::Off { fleet, reason } => commands::off(path, fleet, reason.as_deref(), "off"),
        Command::Resume { fleet } => commands::off(path, fleet, None, "resume"),
        Command::Pause(args) => commands::pause(path, args),
        Command::Drain => commands::drain(path, true),
        Command::Undrain => commands::drain(path, false),
        Command::Status { show_secret } => commands::status(path, show_secret),
        Command::Health => commands::health(path),
        Command::Man => manual::man_page().map_err(anyhow::Error::from).and_then(write_out),
        Command::Completions { shell } => write_out(manual::completions(shell)),
        Command::Token { action } => operators::token(path, action),
        Command::History { n } => operators::history(path, n),
        Command::Explain(args) => gatekeeper::explain::command::run(path, args),
    };
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => match e.downcast_ref::<gatekeeper::config::ConfigErrors>() {
            Some(ce) => fail_config(ce),
            None => fail(&e),
        },
    }
}

/// Generated text goes out as it is (no newline added); a closed pipe
/// (`| head`) is an error, not a panic.
fn write_out(bytes: Vec<u8>) -> anyhow::Result<String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(String::new())
}

fn fail_config(e: &gatekeeper::config::ConfigErrors) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("gatekeeper: {e:#}");
    ExitCode::from(1)
}
