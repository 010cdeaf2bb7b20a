//! The `botbridge` command: run the proxy, or check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use botbridge::config::{admin, private_dir};
use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A protocol-translating reverse proxy for chatbot APIs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(short, long, global = true, default_value = "proxy.toml")]
    config: PathBuf,
    /// Take over the listening sockets of a running instance (graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the configuration and exit (non-zero, naming the key, if it is invalid).
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match botbridge::config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("botbridge: {}: {e}", cli.config.display());
            return ExitCode::from(2);
        }
    };
    let dirs = match cli.command {
        Some(Command::Check) => private_dir::check_all(&config),
        None => private_dir::prepare_all(&config),
    };
    if let Err(e) = dirs {
        eprintln!("botbridge: {}: {e}", cli.config.display());
        return ExitCode::from(2);
    }
    if cli.command.is_none() {
        if let Err(e) = botbridge::instance_lock::acquire(&config, cli.upgrade) {
            eprintln!("botbridge: {}: {e}", cli.config.display());
            return ExitCode::from(2);
        }
    }
    match cli.command {
        Some(Command::Check) => {
            if let Some(warning) =
                admin::exposure_warning(&config.process.admin, &config.admin_lock)
            {
                eprintln!("botbridge: warning: {warning}");
            }
            println!(
                "{}: ok ({} routes, {} backends)",
                cli.config.display(),
                config.routes.len(),
                config.backends.len()
            );
            ExitCode::SUCCESS
        }
        None => {
            botbridge::logging::init(config.process.log.format, &config.process.log.filter);
            if let Err(e) = botbridge::otel::start(config.process.tracing.as_ref()) {
                eprintln!("botbridge: {}: {e}", cli.config.display());
                return ExitCode::from(2);
            }
            botbridge::server::run(
                config,
                cli.config,
                botbridge::server::RunOptions {
                    upgrade: cli.upgrade,
                },
            )
        }
    }
}
