//! The operator commands: each is one or a few admin API calls.

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use lb_core::admin::{Client, StatusView};
use tokio::time::Instant;

use crate::{service::Service, table};

/// `lb drain --wait` re-reads the active flows every second.
const WAIT_POLL: Duration = Duration::from_secs(1);

pub async fn status(client: &Client, json: bool) -> Result<()> {
    let v = client.status().await?;
    if json {
        let text = serde_json::to_string_pretty(&v).context("encoding the status as JSON")?;
        println!("{text}");
    } else {
        print!("{}", table::render(&v));
    }
    Ok(())
}

pub async fn drain(
    client: &Client,
    svc: Service,
    backend: SocketAddr,
    wait: Option<Duration>,
) -> Result<()> {
    println!("{}", client.drain(svc.vip, svc.protocol, backend).await?);
    match wait {
        Some(timeout) => wait_drained(client, svc, backend, timeout).await,
        None => Ok(()),
    }
}

pub async fn undrain(client: &Client, svc: Service, backend: SocketAddr) -> Result<()> {
    println!("{}", client.undrain(svc.vip, svc.protocol, backend).await?);
    Ok(())
}

pub async fn weight(client: &Client, svc: Service, backend: SocketAddr, w: u32) -> Result<()> {
    println!(
        "{}",
        client.set_weight(svc.vip, svc.protocol, backend, w).await?
    );
    Ok(())
}

pub async fn reload(client: &Client) -> Result<()> {
    println!("{}", client.reload().await?);
    Ok(())
}

/// Active flows of one backend in a status answer.
pub fn active_flows(v: &StatusView, svc: Service, backend: SocketAddr) -> Result<u64> {
    if let Some(e) = &v.usage_error {
        bail!("cannot count active flows: {e}");
    }
    let s = v
        .services
        .iter()
        .find(|s| s.vip == svc.vip && s.protocol == svc.protocol.to_string())
        .ok_or_else(|| anyhow!("service {svc} is gone from the daemon"))?;
    let b = s
        .backends
        .iter()
        .find(|b| b.address == backend)
        .ok_or_else(|| anyhow!("backend {backend} is gone from {svc}"))?;
    let u = b.usage.as_ref().ok_or_else(|| {
        anyhow!("cannot count the active flows of {backend}: it is not programmed in the datapath")
    })?;
    Ok(u.active_flows)
}

/// Polls until the backend has no active flow, showing the count on one
/// refreshed line (a line per poll when stderr is not a terminal).
async fn wait_drained(
    client: &Client,
    svc: Service,
    backend: SocketAddr,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    loop {
        let flows = active_flows(&client.status().await?, svc, backend)?;
        let elapsed = start.elapsed();
        let line = format!(
            "{backend}: {flows} active flows remaining ({}s elapsed, timeout {}s)",
            elapsed.as_secs(),
            timeout.as_secs()
        );
        let mut err = std::io::stderr();
        // Progress output is best effort: a closed stderr must not fail the wait.
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        if flows == 0 || elapsed >= timeout {
            if tty {
                let _ = writeln!(err);
            }
            if flows == 0 {
                println!("{backend} of {svc}: drained, no active flows");
                return Ok(());
            }
            bail!(
                "timed out after {}s with {flows} active flows on {backend} of {svc} (it stays drained)",
                elapsed.as_secs()
            );
        }
        tokio::time::sleep(WAIT_POLL.min(timeout - elapsed)).await;
    }
}
