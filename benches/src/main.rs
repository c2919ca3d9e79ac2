//! lb's micro benchmarks, printed as Markdown tables for BENCHMARKS.md.
//!
//! - `datapath`: ns/packet of each datapath path through BPF_PROG_TEST_RUN,
//!   beside a trivial XDP_PASS program measured in the same run. Two methods:
//!   the kernel's mean over `--repeat` back-to-back runs (median of
//!   `--rounds`), which only works for paths that leave the packet as they
//!   found it (the kernel does not restore the frame between repeats, so a
//!   nat rewrite would turn the next run into another path); and the median
//!   of `--singles` one-shot runs, which works for every path but includes
//!   the kernel's timer overhead.
//! - `maglev`: build time of a weighted Maglev table for 10/100/1000
//!   backends at M = 65537.
//! - `vrrp`: the failover gap a client sees with lb and keepalived as VRRP
//!   speakers (see `vrrp.rs`); needs root and the `lb` binary.
//!
//! `cargo xtask bench` builds it (and `lb`) in release mode and runs all
//! three (as root).
mod katran;
mod vrrp;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use etherparse::PacketBuilder;
use katran::Katran;
use lb_core::{
    config::Scheduler,
    datapath::{Datapath, Limits, TestRunOutput, addr6},
    table::{self, Member, build_maglev},
};
use lb_ebpf::abi::{self, Backend, VipKey, VipKey6, VipMeta, VipMeta6};

#[derive(Parser)]
#[command(about = "lb micro benchmarks (Markdown output)")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// ns/packet per datapath path vs a trivial XDP_PASS program (needs root).
    Datapath {
        /// Test-run repetitions per measurement (the kernel averages them).
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Measurements per case; the median is reported with min and max.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// One-shot runs per case for the second method.
        #[arg(long, default_value_t = 20_000)]
        singles: usize,
        /// Katran's `balancer.bpf.o`, to measure beside lb in the same run
        /// (needs bpftool; `cargo xtask bench micro --katran DIR` builds it
        /// from a Katran checkout).
        #[arg(long)]
        katran: Option<PathBuf>,
    },
    /// Weighted Maglev build time for 10, 100 and 1000 backends.
    Maglev {
        #[arg(long, default_value_t = 65_537)]
        size: u32,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// Time of the lc/wlc active-flow recount (a scan of the connection
    /// table) at several table fills (needs root).
    Recount {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Failover gap seen by a client, lb and keepalived as VRRP speakers
    /// (needs root; takes a few minutes).
    Vrrp {
        /// Repetitions per case (SIGKILL and SIGTERM of the master).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// The `lb` binary; default: `lb` next to this one.
        #[arg(long)]
        lb: Option<PathBuf>,
    },
}

const CLIENT: [u8; 4] = [198, 18, 0, 1];
const LB: [u8; 4] = [198, 18, 0, 2];
const VIP: [u8; 4] = [198, 18, 0, 100];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// A TCP (ACK) or UDP frame with 64 bytes of payload, IPv4 or IPv6 by the
/// addresses' length.
fn frame<const N: usize>(
    src: [u8; N],
    dst: [u8; N],
    sport: u16,
    dport: u16,
    udp: bool,
) -> Result<Vec<u8>> {
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let b = match (<[u8; 4]>::try_from(&src[..]), <[u8; 4]>::try_from(&dst[..])) {
        (Ok(s), Ok(d)) => eth.ipv4(s, d, 64),
        _ => eth.ipv6(
            <[u8; 16]>::try_from(&src[..])?,
            <[u8; 16]>::try_from(&dst[..])?,
            64,
        ),
    };
    let mut out = Vec::new();
    let payload = [0u8; 64];
    if udp {
        b.udp(sport, dport).write(&mut out, &payload)?;
    } else {
        b.tcp(sport, dport, 1, 64_000)
            .ack(1)
            .write(&mut out, &payload)?;
    }
    Ok(out)
}

fn ip(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

/// The IPv6 addresses of the bench: 2001:2::/48 (RFC 5180).
fn v6(last: u16) -> [u8; 16] {
    std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, last).octets()
}
const CLIENT6: u16 = 1;
const LB6: u16 = 2;
const VIP6: u16 = 0x100;

/// Source port offset of a frame built by [`frame`].
fn sport_at(f: &[u8]) -> usize {
    if f[12..14] == [0x86, 0xdd] { 54 } else { 34 }
}

/// A datapath with one VIP in `mode` for each family, mh over 8 backends.
fn datapath(mode: u8, timeout_s: u32, udp: bool) -> Result<Datapath> {
    scheduled(mode, timeout_s, udp, Scheduler::Mh, 8, 65_536)
}

/// Backend ids of the IPv6 VIP start here, after the IPv4 VIP's.
const IDS6: u32 = abi::LEAST_MAX_BACKENDS;

/// A datapath with one VIP in `mode` for each family, `scheduler` over
/// `backends` backends: IPv4 (VIP id 0, backend ids from 0) and IPv6 (VIP
/// id 1, backend ids from [`IDS6`]).
fn scheduled(
    mode: u8,
    timeout_s: u32,
    udp: bool,
    scheduler: Scheduler,
    backends: u32,
    flow_capacity: u32,
) -> Result<Datapath> {
    let mut dp = Datapath::load(Limits {
        max_vips: 2,
        max_backends: 2 * IDS6,
        ring_stride: 65_537,
        flow_capacity,
        new_flow_cap: 0,
    })?;
    dp.set_vip(
        VipKey {
            addr: ip(VIP),
            port: 80u16.to_be(),
            proto: if udp {
                abi::IPPROTO_UDP
            } else {
                abi::IPPROTO_TCP
            },
            _pad: 0,
        },
        VipMeta {
            id: 0,
            mode,
            snat_addr: ip(LB),
            snat_port_min: 1_024,
            snat_port_max: 32_767,
            tcp_timeout_s: timeout_s,
            udp_timeout_s: timeout_s,
            tun_src: ip([198, 19, 0, 0]),
            tun_src_bits: 8,
            mtu: 1_500,
            ..Default::default()
        },
    )?;
    let members: Vec<Member> = (0..backends)
        .map(|i| -> Result<Member> {
            dp.set_backend(
                i,
                Backend {
                    addr: ip([198, 18, 1, i as u8 + 1]),
                    port: 8033u16.to_be(),
                    mac: MAC_A,
                    src_mac: MAC_B,
                    ..Default::default()
                },
            )?;
            Ok(Member {
                id: i,
                addr: SocketAddr::from(([198, 18, 1, i as u8 + 1], 8033)),
                weight: 1,
            })
        })
        .collect::<Result<_>>()?;
    let t = table::build(scheduler, &members, 65_537)?;
    dp.swap_table(0, t.kind, &t.slots)?;
    let proto = if udp {
        abi::IPPROTO_UDP
    } else {
        abi::IPPROTO_TCP
    };
    dp.set_vip6(
        VipKey6 {
            addr: addr6(v6(VIP6).into()),
            port: 80u16.to_be(),
            proto,
            _pad: 0,
        },
        VipMeta6 {
            meta: VipMeta {
                id: 1,
                mode,
                snat_port_min: 1_024,
                snat_port_max: 32_767,
                tcp_timeout_s: timeout_s,
                udp_timeout_s: timeout_s,
                tun_src_bits: 8,
                mtu: 1_500,
                ..Default::default()
            },
            snat_addr: addr6(v6(LB6).into()),
            tun_src: addr6(std::net::Ipv6Addr::new(0x2001, 2, 0, 9, 0, 0, 0, 0)),
            persist_mask: [u32::MAX; 4],
        },
    )?;
    let members: Vec<Member> = (IDS6..IDS6 + backends)
        .map(|i| -> Result<Member> {
            let addr = v6(0x1000 + i as u16);
            dp.set_backend6(
                i,
                addr.into(),
                Backend {
                    port: 8033u16.to_be(),
                    mac: MAC_A,
                    src_mac: MAC_B,
                    ..Default::default()
                },
            )?;
            Ok(Member {
                id: i,
                addr: SocketAddr::from((addr, 8033)),
                weight: 1,
            })
        })
        .collect::<Result<_>>()?;
    let t = table::build(scheduler, &members, 65_537)?;
    dp.swap_table(1, t.kind, &t.slots)?;
    Ok(dp)
}

/// What a case runs: one of lb's programs, or Katran's balancer.
enum Target {
    Lb {
        prog: &'static str,
        dp: Box<Datapath>,
    },
    Katran(Box<Katran>),
}

impl Target {
    fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunOutput> {
        match self {
            Target::Lb { prog, dp } => Ok(dp.test_run(prog, frame, repeat)?),
            Target::Katran(k) => k.test_run(frame, repeat),
        }
    }
}

struct Case {
    name: String,
    target: Target,
    frame: Vec<u8>,
    verdict: u32,
    /// A repeat would not take the same path (the program rewrites the
    /// packet, or the case needs a new flow per packet): one-shot runs only.
    one_shot_only: bool,
    /// One-shot runs give each packet its own source port (a new flow).
    new_flows: bool,
}

fn cases(katran: Option<&Path>) -> Result<Vec<Case>> {
    const PASS: u32 = 2;
    const TX: u32 = 3;
    let tcp = frame(CLIENT, VIP, 40_000, 80, false)?;
    let tcp6 = frame(v6(CLIENT6), v6(VIP6), 40_000, 80, false)?;
    let mut out = Vec::new();
    out.push(Case {
        name: "trivial XDP_PASS (baseline)".into(),
        target: Target::Lb {
            prog: abi::prog::XDP_PASS,
            dp: Box::new(datapath(abi::MODE_DR, 900, false)?),
        },
        frame: tcp.clone(),
        verdict: PASS,
        one_shot_only: false,
        new_flows: false,
    });
    out.push(Case {
        name: "non-VIP packet (pass)".into(),
        target: Target::Lb {
            prog: abi::prog::XDP_LB,
            dp: Box::new(datapath(abi::MODE_DR, 900, false)?),
        },
        frame: frame(CLIENT, [198, 18, 0, 200], 40_000, 80, false)?,
        verdict: PASS,
        one_shot_only: false,
        new_flows: false,
    });
    for (name, mode, udp, new_flows) in [
        (
            "dr, VIP hit, established TCP flow",
            abi::MODE_DR,
            false,
            false,
        ),
        (
            "dr, VIP hit, established UDP flow",
            abi::MODE_DR,
            true,
            false,
        ),
        ("dr, new flow every packet", abi::MODE_DR, false, true),
        (
            "nat, VIP hit, established TCP flow",
            abi::MODE_NAT,
            false,
            false,
        ),
        (
            "nat, new flow every packet (SNAT port alloc)",
            abi::MODE_NAT,
            false,
            true,
        ),
        (
            "tun, VIP hit, established TCP flow (IPIP encap)",
            abi::MODE_TUN,
            false,
            false,
        ),
        (
            "tun, new flow every packet (IPIP encap)",
            abi::MODE_TUN,
            false,
            true,
        ),
    ] {
        out.push(Case {
            name: name.into(),
            target: Target::Lb {
                prog: abi::prog::XDP_LB,
                dp: Box::new(datapath(mode, 900, udp)?),
            },
            frame: frame(CLIENT, VIP, 40_000, 80, udp)?,
            verdict: TX,
            one_shot_only: mode != abi::MODE_DR || new_flows,
            new_flows,
        });
    }
    // Every other scheduler beside mh (the dr cases above), in dr mode; the
    // costliest (wlc over its most backends) for IPv6 too.
    for (s, backends) in [
        (Scheduler::Sh, 8),
        (Scheduler::Rr, 8),
        (Scheduler::Wrr, 8),
        (Scheduler::Lc, 8),
        (Scheduler::Wlc, 8),
        (Scheduler::Wlc, abi::LEAST_MAX_BACKENDS),
    ] {
        for new_flows in [false, true] {
            let what = if new_flows {
                "new flow every packet"
            } else {
                "established TCP flow"
            };
            out.push(Case {
                name: format!("dr {s} ({backends} backends), {what}"),
                target: Target::Lb {
                    prog: abi::prog::XDP_LB,
                    dp: Box::new(scheduled(abi::MODE_DR, 900, false, s, backends, 65_536)?),
                },
                frame: tcp.clone(),
                verdict: TX,
                one_shot_only: new_flows,
                new_flows,
            });
        }
    }
    for new_flows in [false, true] {
        let what = if new_flows {
            "new flow every packet"
        } else {
            "established TCP flow"
        };
        let (s, backends) = (Scheduler::Wlc, abi::LEAST_MAX_BACKENDS);
        out.push(Case {
            name: format!("IPv6 dr {s} ({backends} backends), {what}"),
            target: Target::Lb {
                prog: abi::prog::XDP_LB,
                dp: Box::new(scheduled(abi::MODE_DR, 900, false, s, backends, 65_536)?),
            },
            frame: tcp6.clone(),
            verdict: TX,
            one_shot_only: new_flows,
            new_flows,
        });
    }
    out.push(Case {
        name: "IPv6 non-VIP packet (pass)".into(),
        target: Target::Lb {
            prog: abi::prog::XDP_LB,
            dp: Box::new(datapath(abi::MODE_DR, 900, false)?),
        },
        frame: frame(v6(CLIENT6), v6(0x200), 40_000, 80, false)?,
        verdict: PASS,
        one_shot_only: false,
        new_flows: false,
    });
    for (name, mode, udp, new_flows) in [
        (
            "IPv6 dr, VIP hit, established TCP flow",
            abi::MODE_DR,
            false,
            false,
        ),
        (
            "IPv6 dr, VIP hit, established UDP flow",
            abi::MODE_DR,
            true,
            false,
        ),
        ("IPv6 dr, new flow every packet", abi::MODE_DR, false, true),
        (
            "IPv6 nat, VIP hit, established TCP flow",
            abi::MODE_NAT,
            false,
            false,
        ),
        (
            "IPv6 nat, new flow every packet (SNAT port alloc)",
            abi::MODE_NAT,
            false,
            true,
        ),
        (
            "IPv6 tun, VIP hit, established TCP flow (IPv6-in-IPv6 encap)",
            abi::MODE_TUN,
            false,
            false,
        ),
    ] {
        out.push(Case {
            name: name.into(),
            target: Target::Lb {
                prog: abi::prog::XDP_LB,
                dp: Box::new(datapath(mode, 900, udp)?),
            },
            frame: frame(v6(CLIENT6), v6(VIP6), 40_000, 80, udp)?,
            verdict: TX,
            one_shot_only: mode != abi::MODE_DR || new_flows,
            new_flows,
        });
    }
    // A nat reply: learn the SNAT port from one forwarded packet.
    let dp = datapath(abi::MODE_NAT, 900, false)?;
    let fwd = dp.test_run(abi::prog::XDP_LB, &tcp, 1)?;
    let port = u16::from_be_bytes([fwd.data[34], fwd.data[35]]);
    let be: [u8; 4] = fwd.data[30..34].try_into()?;
    out.push(Case {
        name: "nat, backend reply (un-NAT)".into(),
        target: Target::Lb {
            prog: abi::prog::XDP_LB,
            dp: Box::new(dp),
        },
        frame: frame(be, LB, 8033, port, false)?,
        verdict: TX,
        one_shot_only: true,
        new_flows: false,
    });
    let dp = datapath(abi::MODE_NAT, 900, false)?;
    let fwd = dp.test_run(abi::prog::XDP_LB, &tcp6, 1)?;
    let port = u16::from_be_bytes([fwd.data[54], fwd.data[55]]);
    let be: [u8; 16] = fwd.data[38..54].try_into()?;
    out.push(Case {
        name: "IPv6 nat, backend reply (un-NAT)".into(),
        target: Target::Lb {
            prog: abi::prog::XDP_LB,
            dp: Box::new(dp),
        },
        frame: frame(be, v6(LB6), 8033, port, false)?,
        verdict: TX,
        one_shot_only: true,
        new_flows: false,
    });
    if let Some(object) = katran {
        out.extend(katran_cases(object, &tcp)?);
    }
    Ok(out)
}

/// Katran beside lb's `tun` (both encapsulate in IPIP): a non-VIP packet,
/// an established flow, a new flow every packet. Each case has its own
/// Katran, so the new flows do not evict the established one.
fn katran_cases(object: &Path, tcp: &[u8]) -> Result<Vec<Case>> {
    const PASS: u32 = 2;
    const TX: u32 = 3;
    let reals: Vec<[u8; 4]> = (1..=8).map(|i| [198, 18, 1, i]).collect();
    let load = || Katran::load(object, (VIP, 80), &reals, MAC_A);
    let hit = load()?;
    let first = hit.test_run(tcp, 1)?;
    // Outer IPv4 header after Ethernet: protocol 4 (IPIP), to a real.
    let to_real = first
        .data
        .get(30..34)
        .and_then(|d| <[u8; 4]>::try_from(d).ok());
    if first.verdict != TX
        || first.data.get(23) != Some(&4)
        || !to_real.is_some_and(|d| reals.contains(&d))
    {
        bail!(
            "Katran did not encapsulate the VIP packet to a real (verdict {}): is {} Katran's balancer?",
            first.verdict,
            object.display()
        );
    }
    Ok(vec![
        Case {
            name: "Katran: non-VIP packet (pass)".into(),
            target: Target::Katran(Box::new(load()?)),
            frame: frame(CLIENT, [198, 18, 0, 200], 40_000, 80, false)?,
            verdict: PASS,
            one_shot_only: false,
            new_flows: false,
        },
        Case {
            name: "Katran: VIP hit, established TCP flow (IPIP encap)".into(),
            target: Target::Katran(Box::new(hit)),
            frame: tcp.to_vec(),
            verdict: TX,
            one_shot_only: true,
            new_flows: false,
        },
        Case {
            name: "Katran: new flow every packet (IPIP encap)".into(),
            target: Target::Katran(Box::new(load()?)),
            frame: tcp.to_vec(),
            verdict: TX,
            one_shot_only: true,
            new_flows: true,
        },
    ])
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn bench_datapath(repeat: u32, rounds: usize, singles: usize, katran: Option<&Path>) -> Result<()> {
    let cases = cases(katran).context("setting up the datapath (root needed)")?;
    for c in &cases {
        let first = c.target.test_run(&c.frame, 1)?;
        if first.verdict != c.verdict {
            bail!(
                "{}: verdict {} (expected {})",
                c.name,
                first.verdict,
                c.verdict
            );
        }
    }
    // Interleave rounds so drift (frequency, the other core) hits all cases.
    let mut repeated = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, c) in cases.iter().enumerate().filter(|(_, c)| !c.one_shot_only) {
            let r = c.target.test_run(&c.frame, repeat)?;
            repeated[i].push(r.duration.as_nanos() as f64);
        }
    }
    let mut single = vec![Vec::with_capacity(singles); cases.len()];
    let mut frames: Vec<Vec<u8>> = cases.iter().map(|c| c.frame.clone()).collect();
    for n in 0..singles {
        for (i, c) in cases.iter().enumerate() {
            if c.new_flows {
                // Source ports 1..=singles; the checksum is not validated.
                let at = sport_at(&frames[i]);
                frames[i][at..at + 2].copy_from_slice(&(n as u16 + 1).to_be_bytes());
            }
            let r = c.target.test_run(&frames[i], 1)?;
            single[i].push(r.duration.as_nanos() as f64);
        }
    }
    let rep: Vec<Option<(f64, f64, f64)>> = repeated
        .into_iter()
        .map(|v| (!v.is_empty()).then(|| median(v)))
        .collect();
    let one: Vec<(f64, f64, f64)> = single.into_iter().map(median).collect();
    let (rep_base, one_base) = (rep[0].map_or(1.0, |r| r.0), one[0].0);
    println!(
        "| path | ns/pkt, mean of {repeat} repeats (median of {rounds}) | × trivial | ns/pkt, one-shot (median of {singles}) | × trivial |"
    );
    println!("|---|---:|---:|---:|---:|");
    for ((c, r), o) in cases.iter().zip(&rep).zip(&one) {
        let (r_ns, r_x) = match r {
            Some((med, min, max)) => (
                format!("{med:.1} ({min:.0}–{max:.0})"),
                format!("{:.2}", med / rep_base),
            ),
            None => ("n/a: one-shot only".into(), "".into()),
        };
        println!(
            "| {} | {r_ns} | {r_x} | {:.0} | {:.2} |",
            c.name,
            o.0,
            o.0 / one_base
        );
    }
    Ok(())
}

fn bench_maglev(size: u32, rounds: usize) -> Result<()> {
    println!("| backends | M | build time (median) | min–max |");
    println!("|---:|---:|---:|---:|");
    for n in [10u32, 100, 1000] {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                id: i,
                addr: SocketAddr::from(([198, 18, (i / 250) as u8, (i % 250) as u8 + 1], 8033)),
                weight: 1 + i % 4,
            })
            .collect();
        let mut times = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            let table = build_maglev(&members, size)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(table);
        }
        let (med, min, max) = median(times);
        println!("| {n} | {size} | {med:.2} ms | {min:.2}–{max:.2} ms |");
    }
    Ok(())
}

fn bench_recount(rounds: usize) -> Result<()> {
    println!(
        "| flows in the table | recount time (median) | min–max | of which reading the table | correction |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [1_000u32, 10_000, 100_000, 262_144] {
        // Twice the entries: an LRU map starts evicting before it is full.
        let dp = scheduled(abi::MODE_DR, 900, false, Scheduler::Wlc, 8, 2 * n)
            .context("setting up the datapath (root needed)")?;
        let mut f = frame(CLIENT, VIP, 40_000, 80, false)?;
        for i in 0..n {
            // One client address and source port per flow: 198.19.x.y:1024+.
            f[26..30].copy_from_slice(&[198, 19, (i >> 8) as u8, i as u8]);
            f[34..36].copy_from_slice(&(1_024 + (i >> 16) as u16).to_be_bytes());
            dp.test_run(abi::prog::XDP_LB, &f, 1)?;
        }
        let mut times = Vec::new();
        let mut reads = Vec::new();
        let mut fixed = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            fixed += dp.reconcile_active()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            std::hint::black_box(dp.flows()?);
            reads.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (med, min, max) = median(times);
        let read = median(reads).0;
        println!("| {n} | {med:.1} ms | {min:.1}–{max:.1} ms | {read:.1} ms | {fixed} |");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Args::parse().what {
        What::Datapath {
            repeat,
            rounds,
            singles,
            katran,
        } => bench_datapath(repeat, rounds, singles, katran.as_deref()),
        What::Maglev { size, rounds } => bench_maglev(size, rounds),
        What::Recount { rounds } => bench_recount(rounds),
        What::Vrrp { reps, lb } => vrrp::bench(reps, lb),
    }
}
