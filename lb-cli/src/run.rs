//! `lb run`: the daemon with its admin API and metrics endpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lb_core::{
    admin::{AdminServer, Api},
    config,
    daemon::Daemon,
    datapath::{AttachMode, Datapath, Limits},
    metrics::MetricsServer,
};
use tokio::signal::unix::{SignalKind, signal};

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

pub async fn run(path: PathBuf) -> Result<()> {
    // The sockets are bound before the datapath loads, so a second daemon
    // on the same admin socket gives up before touching the first one's
    // XDP programs.
    let cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin = AdminServer::bind(&cfg.daemon.admin_socket)
        .await
        .context("starting the admin API")?;
    let metrics = MetricsServer::bind(cfg.daemon.metrics_listen)
        .await
        .context("starting the metrics endpoint")?;
    let (daemon, handle) = Daemon::start(path.clone())
        .await
        .with_context(|| format!("starting with {}", path.display()))?;
    let admin = tokio::spawn(admin.serve(Api::new(handle.clone())));
    let metrics = tokio::spawn(metrics.serve(handle));
    tracing::info!(
        services = daemon.config().services.len(),
        "lb running; SIGHUP or 'lb reload' reloads, SIGTERM exits"
    );
    let result = daemon.run(shutdown_signal()).await;
    // The servers hold daemon handles, which keep the datapath attached, and
    // the admin server removes its socket when dropped: end both now.
    for task in [admin, metrics] {
        task.abort();
        let _ = task.await;
    }
    result?;
    Ok(())
}

/// `lb decap`: the tun-mode helper on a backend, attached until a signal.
pub async fn decap(interface: &str, mode: AttachMode) -> Result<()> {
    // Only the decap program runs; the maps it never uses stay minimal.
    let mut dp = Datapath::load(Limits {
        max_vips: 1,
        max_backends: 1,
        ring_stride: 2,
        flow_capacity: 16,
        new_flow_cap: 0,
    })
    .context("loading the datapath")?;
    let got = dp
        .attach_decap(interface, mode)
        .with_context(|| format!("attaching the decap helper to {interface}"))?;
    tracing::info!(interface, mode = %got, "IPIP decap attached; SIGTERM detaches");
    shutdown_signal().await;
    Ok(())
}
