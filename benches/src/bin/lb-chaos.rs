//! Chaos under load against `lb run` (see `lb_testlab::chaos`): prints the
//! summary table and fails if any client error is the LB's while a healthy
//! backend existed. Run through `cargo xtask chaos`.
use std::{path::PathBuf, time::Duration};

use anyhow::{Result, ensure};
use clap::Parser;
use lb_testlab::chaos::{self, Options, classify::Class};

#[derive(Parser)]
struct Args {
    /// The `lb` binary.
    #[arg(long)]
    lb: PathBuf,
    /// Length of the load, in seconds (setup adds about 20 s).
    #[arg(long, default_value_t = 180)]
    duration: u64,
    /// Seed of the fault schedule: the same seed replays the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    lb_testlab::require_root();
    ensure!(
        (10..=3600).contains(&args.duration),
        "--duration is bounded: 10 to 3600 s"
    );
    let opts = Options::new(Duration::from_secs(args.duration), args.seed);
    let out = chaos::run(&args.lb, "chaosb", &opts);
    println!("{}", out.report.table());
    print!("{}", out.report.timeline());
    let lb = out.report.count(Class::Lb);
    ensure!(
        lb == 0,
        "{lb} client errors are the LB's while a healthy backend existed"
    );
    Ok(())
}
