//! `lb`: the load balancer daemon and its operator commands.
//!
//! Exit codes: 0 ok, 1 the operation failed, 2 usage error (clap's).
mod ops;
mod run;
mod service;
mod table;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lb_core::{
    admin::Client,
    config::{self, DEFAULT_ADMIN_SOCKET},
};

use service::Service;

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "L4 load balancer (XDP datapath, keepalived-compatible VRRP)",
    long_about = "An L4 load balancer that replaces LVS/IPVS + keepalived: an XDP datapath \
                  for IPv4 and IPv6 with LVS's schedulers and a connection table, health \
                  checks, and hot table swaps that never move an established flow.\n\n\
                  Exit codes: 0 ok, 1 the operation failed, 2 usage error."
)]
struct Cli {
    /// The daemon's admin socket, for status, drain, undrain, weight and
    /// reload (`daemon.admin_socket` in the config). Default
    /// /run/lb/admin.sock.
    #[arg(
        long,
        global = true,
        env = "LB_ADMIN_SOCKET",
        value_name = "PATH",
        default_value = DEFAULT_ADMIN_SOCKET,
        hide_default_value = true
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr).
    ///
    /// Loads the config, attaches the XDP program to every service's
    /// interface (native mode, falling back to generic) and keeps the
    /// backend tables in step with health checks. Serves the admin API on
    /// `daemon.admin_socket` (default /run/lb/admin.sock, mode 0600) and
    /// Prometheus metrics on `daemon.metrics_listen` (default
    /// 127.0.0.1:9658). SIGHUP or `lb reload` reloads the config (a bad
    /// config is rejected and the running one keeps serving); SIGTERM/SIGINT
    /// detach the programs and exit. Needs root (or CAP_BPF, CAP_NET_ADMIN,
    /// CAP_NET_RAW). `--socket` does not apply: the config decides.
    Run {
        /// Config file (TOML; see configs/reference.toml).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// On a tun-mode backend: strip the IPIP (or IPv6-in-IPv6) header of
    /// packets from the LB.
    ///
    /// For backends without a tunnel device (or whose kernel has none):
    /// attaches lb's decapsulation XDP program to INTERFACE and keeps it
    /// there until SIGTERM/SIGINT. IPIP and IPv6-in-IPv6 packets lose their
    /// outer header and reach the stack as the client sent them, to the VIP,
    /// which the backend must hold on a loopback (with arp_ignore=1,
    /// arp_announce=2 for IPv4, as for dr). Other packets pass untouched. Needs root (or CAP_BPF,
    /// CAP_PERFMON, CAP_NET_ADMIN).
    Decap {
        /// The interface the LB's packets arrive on.
        #[arg(long, value_name = "INTERFACE")]
        interface: String,
        /// XDP mode: auto (native, falling back to generic), native or
        /// generic.
        #[arg(long, value_name = "MODE", default_value = "auto")]
        xdp_mode: DecapMode,
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
    #[command(flatten)]
    Admin(AdminCommand),
}

/// Commands that talk to a running daemon through its admin socket.
#[derive(Subcommand)]
enum AdminCommand {
    /// Show services, backends and VRRP instances, like `ipvsadm -Ln`.
    ///
    /// Per service: protocol, VIP, forwarding method, scheduler, quorum,
    /// active flows, packets/s, packets and bytes. Per backend: health,
    /// configured weight, admin weight (set by drain or weight), weight in
    /// the live table (`-` when out of it), the same traffic columns, and
    /// the last health check result. Packets/s are averaged between two
    /// counter samples at least a second apart, so a first call may take a
    /// second.
    Status {
        /// Print the admin API's JSON (GET /v1/status) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drain a backend: weight 0, so it gets no new flows while its
    /// existing flows finish. Undo with `lb undrain`.
    Drain {
        /// The service: ADDRESS:PORT with an optional /tcp or /udp (default
        /// tcp), such as 198.18.0.100:80/tcp.
        #[arg(value_name = "VIP")]
        service: Service,
        /// The backend's ADDRESS:PORT, as in the config.
        backend: SocketAddr,
        /// Wait until the backend has no active flows, showing how many
        /// remain every second; exit 1 if some remain at the timeout (the
        /// backend stays drained).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, such as 90s or 10m. Default 5m.
        #[arg(
            long,
            value_name = "DURATION",
            requires = "wait",
            default_value = "5m",
            hide_default_value = true,
            value_parser = humantime::parse_duration
        )]
        timeout: Duration,
    },
    /// Return a drained (or reweighted) backend to its configured weight.
    Undrain {
        /// The service: ADDRESS:PORT with an optional /tcp or /udp (default
        /// tcp).
        #[arg(value_name = "VIP")]
        service: Service,
        /// The backend's ADDRESS:PORT, as in the config.
        backend: SocketAddr,
    },
    /// Set a backend's weight (0..=65535) until `lb undrain` or a restart;
    /// 0 drains it. Existing flows keep their backend.
    Weight {
        /// The service: ADDRESS:PORT with an optional /tcp or /udp (default
        /// tcp).
        #[arg(value_name = "VIP")]
        service: Service,
        /// The backend's ADDRESS:PORT, as in the config.
        backend: SocketAddr,
        /// The new weight, 0 to 65535.
        #[arg(value_name = "N")]
        weight: u32,
    },
    /// Make the daemon re-read its config, as SIGHUP does. A config with
    /// errors is rejected (they are printed, exit 1) and the running one
    /// keeps serving; a valid one is applied by difference.
    Reload,
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
        Command::Decap {
            interface,
            xdp_mode,
        } => {
            init_logging("info");
            runtime(false).and_then(|rt| rt.block_on(run::decap(&interface, xdp_mode.into())))
        }
        Command::Run { config } => {
            // `[daemon] log_level` sets the default; RUST_LOG overrides it. A
            // config that does not load is reported by `run` itself.
            let level =
                config::load(&config).map_or_else(|_| "info".to_string(), |c| c.daemon.log_level);
            init_logging(&level);
            runtime(true).and_then(|rt| rt.block_on(run::run(config)))
        }
        Command::Admin(command) => {
            let client = Client::new(cli.socket);
            runtime(false).and_then(|rt| rt.block_on(operate(&client, command)))
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

fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DecapMode {
    Auto,
    Native,
    Generic,
}

impl From<DecapMode> for lb_core::datapath::AttachMode {
    fn from(m: DecapMode) -> Self {
        match m {
            DecapMode::Auto => Self::Auto,
            DecapMode::Native => Self::Native,
            DecapMode::Generic => Self::Generic,
        }
    }
}

/// One worker thread for the daemon too. Its tasks (probes, VRRP, the
/// admin API) each do little per wake-up and the datapath's blocking map IO
/// has a thread of its own, so a second worker mostly adds cross-thread
/// wake-ups: with two, 1000 HTTP probes a second cost 6.3% of a core, with
/// one 4.8% (`lb-bench-health`, BENCHMARKS.md).
fn runtime(daemon: bool) -> Result<tokio::runtime::Runtime> {
    let mut b = if daemon {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(1);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().context("starting the async runtime")
}

async fn operate(client: &Client, command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Status { json } => ops::status(client, json).await,
        AdminCommand::Drain {
            service,
            backend,
            wait,
            timeout,
        } => ops::drain(client, service, backend, wait.then_some(timeout)).await,
        AdminCommand::Undrain { service, backend } => ops::undrain(client, service, backend).await,
        AdminCommand::Weight {
            service,
            backend,
            weight,
        } => ops::weight(client, service, backend, weight).await,
        AdminCommand::Reload => ops::reload(client).await,
    }
}
