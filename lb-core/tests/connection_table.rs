//! The connection table at its bound, through BPF_PROG_TEST_RUN: a table
//! of `flow_capacity` entries filled past capacity. It is a kernel LRU
//! hash: a new flow takes the place of one that has not been used lately;
//! flows that keep sending keep their entry, and so their backend, even
//! when the Maglev table has changed since they began. An evicted flow
//! that sends again is scheduled afresh by the current table. Evictions
//! are not counted (the kernel does not report them); the live flows of a
//! service are `lb_service_active_flows`, and new flows over the SYN-flood
//! guard are
//! counted as unpinned (see `new_flows_over_the_cap_are_forwarded_unrecorded`
//! in xdp_test_run.rs).
mod common;

use common::*;
use lb_core::{
    datapath::{Datapath, Limits},
    table::{Member, build_maglev},
};
use lb_ebpf::abi::{self, Backend, FlowKey, VipKey, VipMeta};

const XDP_TX: u32 = 3;
const CLIENT: [u8; 4] = [198, 18, 0, 1];
const VIP: [u8; 4] = [198, 18, 0, 100];
const BE: [[u8; 4]; 2] = [[198, 18, 1, 1], [198, 18, 1, 2]];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const BE_MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2]];
const TABLE: u32 = 1_009;
/// Small on purpose: filled three times over in a second.
const CAPACITY: u32 = 1_024;
/// Established flows that keep sending while the table churns.
const RECENT: u16 = 64;

fn ip(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

fn pin_to_cpu0() {
    // The LRU keeps per-CPU free lists: one CPU makes the run repeatable.
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// A dr VIP with both backends programmed and backend `only` in the table.
fn setup() -> Datapath {
    require_root();
    let mut dp = Datapath::load(Limits {
        max_vips: 1,
        max_backends: 2,
        ring_stride: TABLE,
        flow_capacity: CAPACITY,
        new_flow_cap: 0,
    })
    .expect("loading the datapath");
    dp.set_vip(
        VipKey {
            addr: ip(VIP),
            port: 80u16.to_be(),
            proto: TCP,
            _pad: 0,
        },
        VipMeta {
            id: 0,
            mode: abi::MODE_DR,
            tcp_timeout_s: 900,
            udp_timeout_s: 900,
            ..Default::default()
        },
    )
    .expect("set_vip");
    for id in 0..2 {
        dp.set_backend(
            id,
            Backend {
                addr: ip(BE[id as usize]),
                port: 80u16.to_be(),
                mac: BE_MAC[id as usize],
                src_mac: LB_MAC,
                ..Default::default()
            },
        )
        .expect("set_backend");
    }
    only(&mut dp, 0);
    dp
}

/// Makes backend `id` the whole table.
fn only(dp: &mut Datapath, id: u32) {
    let m = [Member {
        id,
        addr: std::net::SocketAddr::from((BE[id as usize], 80)),
        weight: 1,
    }];
    let t = build_maglev(&m, TABLE).expect("maglev");
    dp.set_members(0, &[id]).expect("members");
    dp.swap_table(0, abi::TABLE_MAGLEV, &t).expect("swap");
}

fn syn(sport: u16) -> Vec<u8> {
    frame(CLIENT_MAC, LB_MAC, CLIENT, VIP, sport, 80, TCP, b"")
}

fn ack(sport: u16) -> Vec<u8> {
    let mut f = syn(sport);
    f[47] = 0x10;
    f
}

/// The backend a packet was sent to.
fn sent_to(dp: &Datapath, f: &[u8]) -> usize {
    let out = dp.test_run(abi::prog::XDP_LB, f, 1).expect("test run");
    assert_eq!(out.verdict, XDP_TX);
    BE_MAC
        .iter()
        .position(|m| out.data[0..6] == *m)
        .expect("sent to a known backend")
}

fn in_table(dp: &Datapath, sport: u16) -> bool {
    dp.flows()
        .expect("flows")
        .iter()
        .any(|(k, _): &(FlowKey, _)| k.src_port == sport.to_be())
}

#[test]
fn a_full_connection_table_evicts_idle_flows_and_keeps_active_ones() {
    pin_to_cpu0();
    let mut dp = setup();
    let old = 10_000..10_000 + CAPACITY as u16;
    let recent = 30_000..30_000 + RECENT;
    for p in old.clone().chain(recent.clone()) {
        assert_eq!(sent_to(&dp, &syn(p)), 0);
    }
    // New flows now go to backend 1; the established ones stay on 0 for as
    // long as they hold their entry.
    only(&mut dp, 1);
    let churn = 40_000..40_000 + 2 * CAPACITY as u16;
    for (n, p) in churn.clone().enumerate() {
        assert_eq!(sent_to(&dp, &syn(p)), 1);
        if n % 64 == 0 {
            for r in recent.clone() {
                assert_eq!(
                    sent_to(&dp, &ack(r)),
                    0,
                    "active flow {r} lost its backend after {n} new flows"
                );
            }
        }
    }
    let flows = dp.flows().expect("flows");
    assert!(
        flows.len() <= CAPACITY as usize,
        "{} entries in a table of {CAPACITY}",
        flows.len()
    );
    let kept = |range: std::ops::Range<u16>| {
        range
            .filter(|p| flows.iter().any(|(k, _)| k.src_port == p.to_be()))
            .count()
    };
    let (old_kept, recent_kept, churn_kept) = (kept(old.clone()), kept(recent), kept(churn));
    println!(
        "after {} new flows in a table of {CAPACITY}: {old_kept} of {CAPACITY} idle flows kept, \
         {recent_kept} of {RECENT} active flows kept, {churn_kept} of the new ones",
        2 * CAPACITY
    );
    assert_eq!(recent_kept, RECENT as usize, "active flows were evicted");
    assert!(
        old_kept * 10 < CAPACITY as usize,
        "{old_kept} idle flows survived two table-fulls of new ones"
    );
    // An evicted flow that sends again is a new flow to the table: it goes
    // where Maglev says now (here backend 1, not the 0 it began on).
    let evicted = old
        .clone()
        .find(|p| !in_table(&dp, *p))
        .expect("an evicted flow");
    assert_eq!(sent_to(&dp, &ack(evicted)), 1);
    assert!(in_table(&dp, evicted), "a rescheduled flow is pinned again");
    let c = dp.vip_counters(0).expect("counters");
    assert_eq!(c.unpinned, 0, "no guard configured: every flow is pinned");
}
