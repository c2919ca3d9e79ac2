//! Active flows per backend (`ACTIVE`), which lc and wlc schedule by.
//!
//! The datapath adds 1 when it records a flow and subtracts 1 when the
//! connection closes (first FIN or RST either way) or a live entry is
//! replaced. Flows that idle out or are evicted from the LRU connection
//! tables have no such moment, so [`recount`] counts both connection tables
//! (`FLOWS` and `FLOWS6`: backend ids are shared by the two families;
//! forward entries, not closing, seen within their VIP's timeout) and the
//! difference is added to the counters, atomically through mmap since the
//! datapath keeps adding meanwhile. Flows opened or closed during the scan
//! may be counted on one side only: the counter is read before and after,
//! and the midpoint is corrected, so such an error is at most half the
//! backend's churn during one scan, and the next recount corrects it again.
//! The daemon recounts every [`RECOUNT_INTERVAL`], stretched by
//! [`recount_interval`] when the table is big.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use aya::Ebpf;
use lb_ebpf::abi::{
    self, FLOW_CLOSING, FLOW_FORWARD, Flow, Flow6, FlowKey, FlowKey6, IPPROTO_TCP, VipMeta,
};

use super::{
    DatapathError,
    mmap::{Mmap, slot_size},
};

/// How often the daemon recounts, while some service uses lc or wlc.
pub const RECOUNT_INTERVAL: Duration = Duration::from_secs(1);

/// The wait before the next recount after one that took `took`: the
/// interval, stretched so the scan takes at most a tenth of a core (a full
/// 262144-entry table takes 120–200 ms here, see BENCHMARKS.md).
pub fn recount_interval(took: Duration) -> Duration {
    RECOUNT_INTERVAL.max(took * 10)
}

pub struct ActiveFlows {
    mem: Mmap,
    backends: u32,
}

impl ActiveFlows {
    pub(super) fn map(ebpf: &Ebpf, backends: u32) -> Result<Self, DatapathError> {
        Ok(ActiveFlows {
            mem: Mmap::new(ebpf, abi::map::ACTIVE, backends as u64, 8)?,
            backends,
        })
    }

    fn cell(&self, id: u32) -> Option<&AtomicI64> {
        (id < self.backends).then(|| {
            // SAFETY: id < backends, so the 8-byte, 8-aligned slot is inside
            // the mapping, which lives as long as `self`; the kernel side
            // only touches it with atomic adds and loads.
            unsafe { AtomicI64::from_ptr(self.mem.ptr().add(id as usize * slot_size(8)).cast()) }
        })
    }

    /// The datapath's count for a backend id.
    pub fn get(&self, id: u32) -> i64 {
        self.cell(id).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn snapshot(&self) -> Vec<i64> {
        (0..self.backends).map(|id| self.get(id)).collect()
    }

    /// Recounts from `scan` (a snapshot of the connection tables taken by
    /// the caller between two reads of the counters) and corrects the
    /// counters. Returns the sum of the corrections' magnitudes.
    pub(super) fn reconcile(
        &self,
        scan: impl FnOnce() -> Result<Scan, DatapathError>,
        now_ns: u64,
    ) -> Result<u64, DatapathError> {
        let before = self.snapshot();
        let Scan {
            flows,
            flows6,
            vips,
        } = scan()?;
        let after = self.snapshot();
        let entries = flows.iter().map(Seen::from);
        let truth = recount(
            entries.chain(flows6.iter().map(Seen::from)),
            &vips,
            now_ns,
            self.backends,
        );
        let mut fixed = 0u64;
        for (id, ((b, a), want)) in before.iter().zip(&after).zip(&truth).enumerate() {
            let fix = want - (b + a).div_euclid(2);
            if fix != 0
                && let Some(c) = self.cell(id as u32)
            {
                c.fetch_add(fix, Ordering::Relaxed);
                fixed += fix.unsigned_abs();
            }
        }
        Ok(fixed)
    }
}

/// What a recount reads: both connection tables and every VIP's meta (the
/// IPv6 ones' `VipMeta6::meta`), whose ids are shared by both families.
pub(super) struct Scan {
    pub flows: Vec<(FlowKey, Flow)>,
    pub flows6: Vec<(FlowKey6, Flow6)>,
    pub vips: Vec<VipMeta>,
}

/// What [`recount`] reads of a connection table entry, of either family.
#[derive(Copy, Clone, Debug)]
pub struct Seen {
    pub proto: u8,
    pub kind: u8,
    pub flags: u8,
    pub vip: u32,
    pub backend: u32,
    pub last_seen_ns: u64,
}

impl From<&(FlowKey, Flow)> for Seen {
    fn from((k, f): &(FlowKey, Flow)) -> Self {
        Seen {
            proto: k.proto,
            kind: f.kind,
            flags: f.flags,
            vip: f.vip,
            backend: f.backend,
            last_seen_ns: f.last_seen_ns,
        }
    }
}

impl From<&(FlowKey6, Flow6)> for Seen {
    fn from((k, f): &(FlowKey6, Flow6)) -> Self {
        Seen {
            proto: k.proto,
            kind: f.kind,
            flags: f.flags,
            vip: f.vip,
            backend: f.backend,
            last_seen_ns: f.last_seen_ns,
        }
    }
}

/// Active flows per backend id (index) in connection table entries:
/// forward entries of a programmed VIP, not closing, seen within its idle
/// timeout. Ids from `backends` on are not counted.
pub fn recount(
    flows: impl IntoIterator<Item = Seen>,
    vips: &[VipMeta],
    now_ns: u64,
    backends: u32,
) -> Vec<i64> {
    const NS: u64 = 1_000_000_000;
    let slots = vips.iter().map(|v| v.id as usize + 1).max().unwrap_or(0);
    let mut idle = vec![None; slots];
    for v in vips {
        idle[v.id as usize] = Some((v.tcp_timeout_s as u64 * NS, v.udp_timeout_s as u64 * NS));
    }
    let mut n = vec![0i64; backends as usize];
    for f in flows {
        if f.kind != FLOW_FORWARD || f.flags & FLOW_CLOSING != 0 {
            continue;
        }
        let Some(Some((tcp, udp))) = idle.get(f.vip as usize) else {
            continue;
        };
        let limit = if f.proto == IPPROTO_TCP { *tcp } else { *udp };
        if now_ns.saturating_sub(f.last_seen_ns) <= limit
            && let Some(c) = n.get_mut(f.backend as usize)
        {
            *c += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_ebpf::abi::{FLOW_REPLY, IPPROTO_UDP};

    fn flow(backend: u32, last_seen_s: u64, kind: u8, flags: u8) -> Flow {
        Flow {
            last_seen_ns: last_seen_s * 1_000_000_000,
            backend,
            vip: 0,
            kind,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn long_scans_stretch_the_interval() {
        assert_eq!(
            recount_interval(Duration::from_millis(20)),
            RECOUNT_INTERVAL
        );
        assert_eq!(
            recount_interval(Duration::from_millis(150)),
            Duration::from_millis(1_500)
        );
    }

    #[test]
    fn recount_skips_closing_expired_reply_and_foreign_entries() {
        let tcp = FlowKey {
            proto: IPPROTO_TCP,
            ..Default::default()
        };
        let udp = FlowKey {
            proto: IPPROTO_UDP,
            ..Default::default()
        };
        let vip = VipMeta {
            id: 0,
            tcp_timeout_s: 100,
            udp_timeout_s: 10,
            ..Default::default()
        };
        let mut other_vip = flow(1, 195, FLOW_FORWARD, 0);
        other_vip.vip = 7;
        let flows = [
            (tcp, flow(1, 195, FLOW_FORWARD, 0)),
            (tcp, flow(1, 150, FLOW_FORWARD, 0)),
            (tcp, flow(1, 195, FLOW_FORWARD, FLOW_CLOSING)),
            (tcp, flow(1, 50, FLOW_FORWARD, 0)),
            (udp, flow(2, 195, FLOW_FORWARD, 0)),
            (udp, flow(2, 150, FLOW_FORWARD, 0)),
            (tcp, flow(2, 195, FLOW_REPLY, 0)),
            (tcp, other_vip),
        ];
        let n = recount(flows.iter().map(Seen::from), &[vip], 200 * 1_000_000_000, 3);
        assert_eq!(n, [0, 2, 1]);
    }

    /// IPv6 entries count towards the same backend ids as IPv4 ones.
    #[test]
    fn recount_adds_ipv6_entries() {
        let vip = VipMeta {
            id: 0,
            tcp_timeout_s: 100,
            ..Default::default()
        };
        let v4 = (
            FlowKey {
                proto: IPPROTO_TCP,
                ..Default::default()
            },
            flow(1, 195, FLOW_FORWARD, 0),
        );
        let f6 = |flags| Flow6 {
            last_seen_ns: 195 * 1_000_000_000,
            backend: 1,
            kind: FLOW_FORWARD,
            flags,
            ..Default::default()
        };
        let k6 = FlowKey6 {
            proto: IPPROTO_TCP,
            ..Default::default()
        };
        let v6 = [(k6, f6(0)), (k6, f6(FLOW_CLOSING))];
        let all = [Seen::from(&v4)]
            .into_iter()
            .chain(v6.iter().map(Seen::from));
        assert_eq!(recount(all, &[vip], 200 * 1_000_000_000, 2), [0, 2]);
    }
}
