//! `lb`: the load balancer daemon and its operator commands.
//!
//! Exit codes: 0 ok, 1 the operation failed, 2 usage error (clap's).
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lb_core::{config, daemon::Daemon};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "L4 load balancer (XDP datapath, keepalived-compatible VRRP)",
    long_about = "An L4 load balancer that replaces LVS/IPVS + keepalived: an XDP datapath \
                  with Maglev hashing and a connection table, health checks, and hot \
                  table swaps that never move an established flow."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr).
    ///
    /// Loads the config, attaches the XDP program to every service's
    /// interface (native mode, falling back to generic) and keeps the
    /// backend tables in step with health checks. SIGHUP reloads the config
    /// (a bad config is rejected and the running one keeps serving);
    /// SIGTERM/SIGINT detach the programs and exit. Needs root (or
    /// CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW).
    Run {
        /// Config file (TOML; see configs/reference.toml).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 if valid, 1 with every error as
    /// `file:line:col: key: reason` otherwise.
    CheckConfig {
        /// Config file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Translate a keepalived.conf into lb's TOML config.
    ///
    /// Reads FILE and its `include`s (vrrp_instance, vrrp_script,
    /// virtual_server with real_server and TCP_CHECK / HTTP_GET / SSL_GET /
    /// MISC_CHECK) and prints the TOML on stdout. Everything that cannot be
    /// mapped is reported on stderr as `file:line: warning: ...`; nothing is
    /// dropped silently. Review the warnings, then run `lb check-config`.
    ImportKeepalived {
        /// keepalived.conf to read.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

async fn run(path: PathBuf) -> Result<()> {
    let (daemon, _handle) = Daemon::start(path.clone())
        .await
        .with_context(|| format!("starting with {}", path.display()))?;
    tracing::info!(
        services = daemon.config().services.len(),
        "lb running; SIGHUP reloads, SIGTERM exits"
    );
    daemon.run(shutdown_signal()).await?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => match config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} services, {} VRRP instances)",
                    file.display(),
                    c.services.len(),
                    c.vrrp_instances.len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        Command::ImportKeepalived { file } => lb_core::import::import(&file)
            .map(|i| {
                for w in &i.warnings {
                    eprintln!("{w}");
                }
                print!("{}", i.toml);
            })
            .with_context(|| format!("importing {}", file.display())),
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")
                .and_then(|rt| rt.block_on(run(config)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::from(1)
        }
    }
}
