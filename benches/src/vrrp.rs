//! `lb-bench vrrp`: the failover gap a client sees, for lb and keepalived
//! as VRRP speakers, in the network-namespace lab of `lb_testlab::vrrp`.
//!
//! Node 0 (priority 150) is master, node 1 (priority 100) backup. Each
//! repetition stops node 0 (SIGKILL: a crash, or SIGTERM: a clean stop with
//! priority 0) while the client GETs the VIP every 50 ms, then restarts it
//! and lets it preempt back. Every case runs in the same invocation, so
//! lb and keepalived are measured on the same machine under the same load.
use std::{
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use lb_testlab::vrrp::{FailoverLab, NodeSpec, Speaker, Vrrp};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Kill => "SIGKILL",
            Stop::Term => "SIGTERM",
        }
    }
}

struct Sample {
    /// From the signal to the backup holding the VIP (20 ms polling).
    takeover: Duration,
    /// Longest time between two successful answers.
    gap: Duration,
}

/// `lb` next to this binary (`cargo build --release -p lb-cli -p lb-benches`
/// puts both in target/release) unless given.
fn lb_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("lb-bench has no directory")?
            .join("lb"),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p lb-cli` or pass --lb",
            path.display()
        );
    }
    Ok(path)
}

fn lab_err(e: String) -> anyhow::Error {
    anyhow!(e)
}

/// One repetition: node 0 is sole master when it starts and again when it
/// returns.
fn once(fl: &mut FailoverLab, stop: Stop) -> Result<Sample> {
    const SETTLE: Duration = Duration::from_millis(300);
    let prober = fl.probe();
    thread::sleep(SETTLE);
    match stop {
        Stop::Kill => fl.kill(0),
        Stop::Term => fl.term(0),
    }
    let takeover = fl.wait_vip(1, Duration::from_secs(15)).map_err(lab_err)?;
    fl.wait_answers(Duration::from_secs(5)).map_err(lab_err)?;
    thread::sleep(SETTLE);
    let probed = prober.stop();
    if !probed.recovered {
        bail!("the VIP stopped answering\n{}", fl.logs());
    }
    fl.start(0);
    fl.wait_sole_master(0, Duration::from_secs(20))
        .map_err(lab_err)?;
    Ok(Sample {
        takeover,
        gap: probed.longest_gap,
    })
}

fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

pub fn bench(reps: usize, lb: Option<PathBuf>) -> Result<()> {
    if reps == 0 || reps > 50 {
        bail!("--reps must be 1..=50");
    }
    let lb = lb_binary(lb)?;
    let settings = [
        Vrrp {
            version: 2,
            advert_int: Duration::from_secs(1),
        },
        Vrrp {
            version: 3,
            advert_int: Duration::from_millis(100),
        },
    ];
    let pairs = [
        (Speaker::Lb, Speaker::Lb),
        (Speaker::Keepalived, Speaker::Keepalived),
        (Speaker::Lb, Speaker::Keepalived),
    ];
    // The gaps are wall-clock figures on a possibly shared machine: the load
    // goes with the table so that a noisy run can be told apart.
    let load_before = loadavg();
    let mut rows = Vec::new();
    for (si, vrrp) in settings.iter().enumerate() {
        for (pi, (master, backup)) in pairs.iter().enumerate() {
            eprintln!(
                "VRRPv{} {:?}: {} → {} ...",
                vrrp.version,
                vrrp.advert_int,
                master.name(),
                backup.name()
            );
            let samples = measure_pair(&lb, &format!("vb{si}{pi}"), *vrrp, *master, *backup, reps)?;
            for (stop, s) in samples {
                rows.push((*vrrp, *master, *backup, stop, s));
            }
        }
    }
    println!(
        "| VRRP | master → backup | stop | runs | takeover median | gap median | gap max | expected takeover |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (vrrp, master, backup, stop, samples) in rows {
        let (t_med, _) = median_max(samples.iter().map(|s| s.takeover).collect());
        let (g_med, g_max) = median_max(samples.iter().map(|s| s.gap).collect());
        let expected = match stop {
            Stop::Kill => format!("≤ {} (3 × advert + skew)", ms(vrrp.master_down(100))),
            Stop::Term => format!("{} (skew)", ms(vrrp.skew(100))),
        };
        println!(
            "| v{} {} | {} → {} | {} | {} | {} | {} | {} | {expected} |",
            vrrp.version,
            ms(vrrp.advert_int),
            master.name(),
            backup.name(),
            stop.name(),
            samples.len(),
            ms(t_med),
            ms(g_med),
            ms(g_max),
        );
    }
    println!(
        "\nLoad average (1, 5, 15 min) before: {load_before}; after: {}.",
        loadavg()
    );
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

fn measure_pair(
    lb: &Path,
    tag: &str,
    vrrp: Vrrp,
    master: Speaker,
    backup: Speaker,
    reps: usize,
) -> Result<Vec<(Stop, Vec<Sample>)>> {
    let spec = |speaker, priority| NodeSpec {
        speaker,
        priority,
        nopreempt: false,
    };
    let mut fl = FailoverLab::new(tag, lb, vrrp, spec(master, 150), spec(backup, 100));
    fl.start(0);
    fl.start(1);
    fl.wait_sole_master(0, Duration::from_secs(20))
        .map_err(lab_err)?;
    let mut out = vec![(Stop::Kill, Vec::new()), (Stop::Term, Vec::new())];
    // Alternate the two stops so that drift over the run hits both alike.
    for _ in 0..reps {
        for (stop, samples) in &mut out {
            samples.push(once(&mut fl, *stop).with_context(|| stop.name())?);
        }
    }
    Ok(out)
}
