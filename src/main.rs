use std::process::ExitCode;

use clap::Parser;
use gatekeeper::cli::{Cli, Command};
use gatekeeper::{commands, config::Config, daemon, logging};

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
        Command::Off { fleet } | Command::Resume { fleet } => commands::off(path, fleet),
        Command::Pause(args) => commands::pause(path, args),
        Command::Drain => commands::drain(path, true),
        Command::Undrain => commands::drain(path, false),
        Command::Status { show_secret } => commands::status(path, show_secret),
        Command::Health => commands::health(path),
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

fn fail_config(e: &gatekeeper::config::ConfigErrors) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("gatekeeper: {e:#}");
    ExitCode::from(1)
}
