//! The aya loader and every write into the datapath's maps.
//!
//! [`Datapath`] owns the loaded object: it attaches the XDP program (native
//! first, generic as fallback) and the tc egress helper, writes VIPs and
//! backends, swaps scheduler tables atomically ([`ring`]), keeps lc/wlc's
//! active flow counts right ([`active`]) and sums the per-CPU counters.
//! Attachments are bpf_links owned by the process, so the programs leave
//! the interfaces when it exits, even on SIGKILL — unless a pin directory is
//! set ([`Datapath::pin_xdp_in`], `daemon.pin_dir`): the XDP link is then
//! pinned in bpffs and keeps forwarding, with its maps, after a crash of the
//! process (as IPVS outlives keepalived), until the next start replaces it
//! or a clean stop removes it.
//!
//! [`balancer`] builds on it with services, id allocation and neighbour
//! resolution ([`neigh`]).

pub mod active;
pub mod balancer;
mod batch;
mod ids;
mod ipv6;
mod mmap;
pub mod neigh;
pub mod neigh6;
mod ring;

use std::{collections::HashMap, fmt};

use aya::{
    Ebpf, EbpfLoader, TestRun, TestRunOptions,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
    },
};
use lb_ebpf::abi::{self, Backend, Counters, Flow, FlowKey, VipKey, VipMeta};

pub use ipv6::{addr6, fmt_vip6, from_addr6};
pub use ring::Tables;

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0} (needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN)")]
    Load(String),
    #[error("eBPF program {0} missing or of the wrong type")]
    Program(&'static str),
    #[error("eBPF map {0} missing or of the wrong type")]
    Map(&'static str),
    #[error("interface {0}: no such interface")]
    NoInterface(String),
    #[error("attaching XDP to {iface}: {error}")]
    AttachXdp { iface: String, error: String },
    #[error("attaching tc egress to {iface}: {error}")]
    AttachTc { iface: String, error: String },
    #[error("{what}: {error}")]
    MapWrite { what: String, error: String },
    #[error("VIP id {id} is out of range (max_vips = {max})")]
    VipIdRange { id: u32, max: u32 },
    #[error("backend id {id} is out of range (max_backends = {max})")]
    BackendIdRange { id: u32, max: u32 },
    #[error("table of {len} slots does not fit the ring stride {stride}")]
    TableTooBig { len: usize, stride: u32 },
    #[error("mapping the {0} map: {1}")]
    Mmap(&'static str, std::io::Error),
    #[error("starting the datapath thread: {0}")]
    Thread(std::io::Error),
    #[error("the datapath thread exited")]
    ThreadGone,
    #[error("test run of {prog}: {error}")]
    TestRun { prog: &'static str, error: String },
    #[error(
        "pinning the XDP link of {iface} at {path}: {error} (pin_dir must be on a bpf filesystem: mount -t bpf bpf /sys/fs/bpf)"
    )]
    Pin {
        iface: String,
        path: String,
        error: String,
    },
}

type Result<T> = std::result::Result<T, DatapathError>;

fn write_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    let what = what.into();
    move |e| DatapathError::MapWrite {
        what,
        error: describe(&e),
    }
}

/// An error and its sources on one line. aya's errors often keep the OS
/// error (EPERM, ENOENT...) in a source that a plain Display would drop.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// Sizes fixed at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// VIP slots. Default 64. Each costs 2 × `ring_stride` × 8 bytes of table.
    pub max_vips: u32,
    /// Backend slots across all VIPs. Default 4096.
    pub max_backends: u32,
    /// Largest Maglev table size a VIP may use. Default 65537.
    pub ring_stride: u32,
    /// Connection table entries (LRU) of each family: IPv4 (`FLOWS`) and
    /// IPv6 (`FLOWS6`) have one table each. Default 262144; a nat flow
    /// takes two.
    pub flow_capacity: u32,
    /// SYN-flood guard: new dr/tun flows per CPU per second recorded in the
    /// connection table; beyond it they are forwarded unrecorded. Default
    /// 125000 (Katran's MAX_CONN_RATE); 0 = no limit.
    pub new_flow_cap: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_vips: abi::DEFAULT_MAX_VIPS,
            max_backends: abi::DEFAULT_MAX_BACKENDS,
            ring_stride: abi::DEFAULT_RING_SIZE,
            flow_capacity: abi::DEFAULT_FLOW_CAPACITY,
            new_flow_cap: 125_000,
        }
    }
}

/// How to attach XDP. `Auto` tries native (driver) mode and falls back to
/// generic (skb) mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    #[default]
    Auto,
    Native,
    Generic,
}

/// The mode XDP actually runs in on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpRunMode {
    Native,
    Generic,
}

impl fmt::Display for XdpRunMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpRunMode::Native => "native",
            XdpRunMode::Generic => "generic",
        })
    }
}

/// Runs `prog` once (or `repeat` times) on `frame` with BPF_PROG_TEST_RUN:
/// lb's programs, or a peer's loaded elsewhere (the benchmark's Katran).
pub fn test_run<P>(
    prog: &P,
    frame: &[u8],
    repeat: u32,
) -> std::result::Result<TestRunOutput, aya::programs::ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
{
    // Room for headers a program pushes (encapsulation).
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: repeat.max(1),
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok(TestRunOutput {
        verdict: r.return_value,
        data: out,
        duration: r.duration,
    })
}

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Debug)]
pub struct TestRunOutput {
    /// The program's verdict (`XDP_*` or `TC_ACT_*`).
    pub verdict: u32,
    /// The frame as the program left it.
    pub data: Vec<u8>,
    /// Kernel-measured mean time per run.
    pub duration: std::time::Duration,
}

pub struct Datapath {
    ebpf: Ebpf,
    limits: Limits,
    tables: Tables,
    active: active::ActiveFlows,
    /// Interfaces with an attached XDP program, and their mode.
    attached: HashMap<String, XdpRunMode>,
    vip_addr_refs: HashMap<u32, u32>,
    snat_refs: HashMap<u32, u32>,
    vip_addr6_refs: HashMap<abi::Addr6, u32>,
    snat6_refs: HashMap<abi::Addr6, u32>,
    /// Where XDP links are pinned, if anywhere.
    pin_dir: Option<std::path::PathBuf>,
    pinned: Vec<PinnedLink>,
    /// The load balancer's XDP link per interface, until pinned.
    xdp_links: HashMap<String, aya::programs::xdp::XdpLinkId>,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.release_pins();
    }
}

impl Datapath {
    /// Loads the object into the kernel (maps sized by `limits`, programs
    /// verified) without attaching anything.
    pub fn load(limits: Limits) -> Result<Self> {
        let ring = 2u64 * limits.max_vips as u64 * limits.ring_stride as u64;
        let ring = u32::try_from(ring).map_err(|_| DatapathError::TableTooBig {
            len: ring as usize,
            stride: limits.ring_stride,
        })?;
        let member_words = limits.max_backends.div_ceil(64);
        let mut ebpf = EbpfLoader::new()
            .override_global(abi::global::RING_STRIDE, &limits.ring_stride, true)
            .override_global(abi::global::MEMBER_WORDS, &member_words, true)
            .override_global(abi::global::NEW_FLOW_CAP, &limits.new_flow_cap, true)
            .map_max_entries(abi::map::MEMBERS, limits.max_vips * member_words)
            .map_max_entries(abi::map::PERSIST, limits.flow_capacity)
            .override_global(abi::global::MAX_VIPS, &limits.max_vips, true)
            .map_max_entries(abi::map::VIPS, limits.max_vips)
            .map_max_entries(abi::map::VIP_ADDRS, limits.max_vips)
            .map_max_entries(abi::map::SNAT_ADDRS, limits.max_vips)
            .map_max_entries(abi::map::TABLE_STATE, limits.max_vips)
            .map_max_entries(abi::map::RING, ring)
            .map_max_entries(abi::map::BACKENDS, limits.max_backends)
            .map_max_entries(abi::map::BACKEND_STATS, limits.max_backends)
            .map_max_entries(abi::map::VIP_STATS, limits.max_vips + 1)
            .map_max_entries(abi::map::FLOWS, limits.flow_capacity)
            .map_max_entries(abi::map::CURSORS, limits.max_vips)
            .map_max_entries(abi::map::ACTIVE, limits.max_backends)
            .map_max_entries(abi::map::VIPS6, limits.max_vips)
            .map_max_entries(abi::map::VIP_ADDRS6, limits.max_vips)
            .map_max_entries(abi::map::SNAT_ADDRS6, limits.max_vips)
            .map_max_entries(abi::map::BACKENDS6, limits.max_backends)
            .map_max_entries(abi::map::FLOWS6, limits.flow_capacity)
            .map_max_entries(abi::map::PERSIST6, limits.flow_capacity)
            .load(OBJECT)
            .map_err(|e| DatapathError::Load(describe(&e)))?;
        for name in [abi::prog::XDP_LB, abi::prog::XDP_PASS, abi::prog::XDP_DECAP] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(DatapathError::Program(name))?;
            p.load().map_err(|e| DatapathError::Load(describe(&e)))?;
        }
        let p: &mut SchedClassifier = ebpf
            .program_mut(abi::prog::TC_EGRESS)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Program(abi::prog::TC_EGRESS))?;
        p.load().map_err(|e| DatapathError::Load(describe(&e)))?;
        let tables = Tables::map(&ebpf, limits)?;
        let active = active::ActiveFlows::map(&ebpf, limits.max_backends)?;
        Ok(Datapath {
            ebpf,
            limits,
            tables,
            active,
            attached: HashMap::new(),
            vip_addr_refs: HashMap::new(),
            snat_refs: HashMap::new(),
            vip_addr6_refs: HashMap::new(),
            snat6_refs: HashMap::new(),
            pin_dir: None,
            pinned: Vec::new(),
            xdp_links: HashMap::new(),
        })
    }

    /// From now on, [`Datapath::attach`] pins each XDP link as
    /// `dir/xdp-IFACE`, replacing a link left there by a previous process.
    pub fn pin_xdp_in(&mut self, dir: std::path::PathBuf) {
        self.pin_dir = Some(dir);
    }

    /// Unpins the links: they leave their interfaces with the process, as
    /// a clean stop must. Also done on drop.
    pub fn release_pins(&mut self) {
        for p in self.pinned.drain(..) {
            if let Err(e) = p.unpin() {
                tracing::warn!(error = %e, "unpinning an XDP link");
            }
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Attaches the load balancer at XDP on `iface` and the nat reply helper
    /// at its tc egress. Returns the XDP mode obtained.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpRunMode> {
        let pin = self
            .pin_dir
            .as_ref()
            .map(|d| (d.clone(), d.join(format!("xdp-{iface}"))));
        if let Some((_, path)) = &pin
            && let Ok(old) = PinnedLink::from_pin(path)
        {
            // A datapath left by a process that did not stop cleanly: it
            // must go before ours can attach (one XDP link per interface).
            match old.unpin() {
                Ok(_) => tracing::info!(iface, "replaced the datapath a previous lb left attached"),
                Err(e) => tracing::warn!(iface, error = %e, "removing a stale pinned XDP link"),
            }
        }
        let run = self.attach_xdp(abi::prog::XDP_LB, iface, mode)?;
        if let Some((dir, path)) = pin {
            self.pin_last(iface, &dir, &path)?;
        }
        if let Err(e) = tc::qdisc_add_clsact(iface) {
            // EEXIST: the clsact qdisc is already there, which is fine.
            if !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
            {
                tracing::debug!(iface, error = %e, "adding clsact qdisc");
            }
        }
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(abi::prog::TC_EGRESS)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Program(abi::prog::TC_EGRESS))?;
        p.attach(iface, TcAttachType::Egress)
            .map_err(|e| DatapathError::AttachTc {
                iface: iface.to_string(),
                error: describe(&e),
            })?;
        self.attached.insert(iface.to_string(), run);
        tracing::info!(iface, mode = %run, "XDP attached");
        Ok(run)
    }

    /// Pins the XDP link `attach` just made.
    fn pin_last(
        &mut self,
        iface: &str,
        dir: &std::path::Path,
        path: &std::path::Path,
    ) -> Result<()> {
        let err = |error: String| DatapathError::Pin {
            iface: iface.to_string(),
            path: path.display().to_string(),
            error,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let p: &mut Xdp = self
            .ebpf
            .program_mut(abi::prog::XDP_LB)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Program(abi::prog::XDP_LB))?;
        let id = self
            .xdp_links
            .remove(iface)
            .ok_or_else(|| err("no link to pin".into()))?;
        let link = p.take_link(id).map_err(|e| err(describe(&e)))?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| err(describe(&e)))?;
        let pinned = fd.pin(path).map_err(|e| err(describe(&e)))?;
        self.pinned.push(pinned);
        Ok(())
    }

    /// Attaches the trivial XDP_PASS program. Native-mode veth drops XDP_TX
    /// frames unless the peer has an XDP program too; this is that program.
    pub fn attach_pass(&mut self, iface: &str, mode: AttachMode) -> Result<XdpRunMode> {
        self.attach_xdp(abi::prog::XDP_PASS, iface, mode)
    }

    /// Attaches the tun-mode decapsulation helper (on a backend host).
    pub fn attach_decap(&mut self, iface: &str, mode: AttachMode) -> Result<XdpRunMode> {
        self.attach_xdp(abi::prog::XDP_DECAP, iface, mode)
    }

    fn attach_xdp(
        &mut self,
        prog: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<XdpRunMode> {
        if neigh::ifindex(iface).is_none() {
            return Err(DatapathError::NoInterface(iface.to_string()));
        }
        let p: &mut Xdp = self
            .ebpf
            .program_mut(prog)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Program(prog))?;
        let err = |e: aya::programs::ProgramError| DatapathError::AttachXdp {
            iface: iface.to_string(),
            error: describe(&e),
        };
        let (id, run) = match mode {
            AttachMode::Native => (
                p.attach(iface, XdpMode::Driver).map_err(err)?,
                XdpRunMode::Native,
            ),
            AttachMode::Generic => (
                p.attach(iface, XdpMode::Skb).map_err(err)?,
                XdpRunMode::Generic,
            ),
            AttachMode::Auto => match p.attach(iface, XdpMode::Driver) {
                Ok(id) => (id, XdpRunMode::Native),
                Err(e) => {
                    tracing::warn!(iface, error = %e, "native XDP unavailable, falling back to generic");
                    (
                        p.attach(iface, XdpMode::Skb).map_err(err)?,
                        XdpRunMode::Generic,
                    )
                }
            },
        };
        if prog == abi::prog::XDP_LB {
            self.xdp_links.insert(iface.to_string(), id);
        }
        Ok(run)
    }

    /// Interfaces with the load balancer attached, and their XDP mode.
    pub fn attached(&self) -> &HashMap<String, XdpRunMode> {
        &self.attached
    }

    /// Adds or updates a VIP. On error nothing about this VIP changed.
    pub fn set_vip(&mut self, key: VipKey, meta: VipMeta) -> Result<()> {
        if meta.id >= self.limits.max_vips {
            return Err(DatapathError::VipIdRange {
                id: meta.id,
                max: self.limits.max_vips,
            });
        }
        let what = format!("VIP {}", fmt_vip(&key));
        let mut vips: BpfHashMap<_, VipKey, VipMeta> = self.typed(abi::map::VIPS)?;
        let old = vips.get(&key, 0).ok();
        vips.insert(key, meta, 0).map_err(write_err(&what))?;
        if old.is_none() {
            self.bump(abi::map::VIP_ADDRS, key.addr, 1)?;
        }
        let was_nat = old.is_some_and(|o| o.mode == abi::MODE_NAT);
        if was_nat
            && (meta.mode != abi::MODE_NAT || old.map(|o| o.snat_addr) != Some(meta.snat_addr))
        {
            self.bump(abi::map::SNAT_ADDRS, old.map_or(0, |o| o.snat_addr), -1)?;
        }
        if meta.mode == abi::MODE_NAT
            && !(was_nat && old.map(|o| o.snat_addr) == Some(meta.snat_addr))
        {
            self.bump(abi::map::SNAT_ADDRS, meta.snat_addr, 1)?;
        }
        Ok(())
    }

    /// What `VIPS` holds for a VIP.
    pub fn vip_meta(&self, key: &VipKey) -> Option<VipMeta> {
        let m = self.ebpf.map(abi::map::VIPS)?;
        let vips: BpfHashMap<&MapData, VipKey, VipMeta> = BpfHashMap::try_from(m).ok()?;
        vips.get(key, 0).ok()
    }

    /// Writes connection-table entries (connection-state sync). An entry of
    /// the same key is replaced; a full table evicts its least recently used
    /// entries, as for the datapath's own inserts.
    pub fn write_flows(&mut self, entries: &[(FlowKey, Flow)]) -> Result<()> {
        let mut m: BpfHashMap<_, FlowKey, Flow> = self.typed(abi::map::FLOWS)?;
        for (k, f) in entries {
            m.insert(k, f, 0)
                .map_err(write_err("connection table entry"))?;
        }
        Ok(())
    }

    /// One connection-table entry, if present.
    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        let m = self.ebpf.map(abi::map::FLOWS)?;
        let flows: BpfHashMap<&MapData, FlowKey, Flow> = BpfHashMap::try_from(m).ok()?;
        flows.get(key, 0).ok()
    }

    /// Removes a connection-table entry; absent is fine.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        let mut m: BpfHashMap<_, FlowKey, Flow> = self.typed(abi::map::FLOWS)?;
        match m.remove(key) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(write_err("removing a connection table entry")(e)),
        }
    }

    /// Removes a VIP: new packets to it reach the kernel again. Its flows
    /// stay in the connection table until they idle out or are evicted.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let mut vips: BpfHashMap<_, VipKey, VipMeta> = self.typed(abi::map::VIPS)?;
        let Ok(old) = vips.get(key, 0) else {
            return Ok(());
        };
        vips.remove(key)
            .map_err(write_err(format!("removing VIP {}", fmt_vip(key))))?;
        self.bump(abi::map::VIP_ADDRS, key.addr, -1)?;
        if old.mode == abi::MODE_NAT {
            self.bump(abi::map::SNAT_ADDRS, old.snat_addr, -1)?;
        }
        self.tables.clear(old.id)
    }

    /// Reference-counted membership of an address in a set map.
    fn bump(&mut self, name: &'static str, addr: u32, delta: i32) -> Result<()> {
        let refs = match name {
            abi::map::VIP_ADDRS => &mut self.vip_addr_refs,
            _ => &mut self.snat_refs,
        };
        let n = refs.entry(addr).or_insert(0);
        *n = n.saturating_add_signed(delta);
        let n = *n;
        if n == 0 {
            refs.remove(&addr);
        }
        let mut m: BpfHashMap<_, u32, u32> = self.typed(name)?;
        let what = format!("{name} {}", std::net::Ipv4Addr::from(addr.to_ne_bytes()));
        if n == 0 {
            m.remove(&addr).map_err(write_err(what))
        } else {
            m.insert(addr, n, 0).map_err(write_err(what))
        }
    }

    pub fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        if id >= self.limits.max_backends {
            return Err(DatapathError::BackendIdRange {
                id,
                max: self.limits.max_backends,
            });
        }
        let mut m: Array<_, Backend> = self.typed(abi::map::BACKENDS)?;
        m.set(id, backend, 0)
            .map_err(write_err(format!("backend id {id}")))
    }

    /// Records which backends are in the VIP's table (persistence templates
    /// are only followed to those).
    pub fn set_members(&mut self, vip_id: u32, ids: &[u32]) -> Result<()> {
        if vip_id >= self.limits.max_vips {
            return Err(DatapathError::VipIdRange {
                id: vip_id,
                max: self.limits.max_vips,
            });
        }
        let words = self.limits.max_backends.div_ceil(64);
        let mut bits = vec![0u64; words as usize];
        for id in ids.iter().filter(|id| **id < self.limits.max_backends) {
            bits[(*id / 64) as usize] |= 1 << (id % 64);
        }
        let mut m: Array<_, u64> = self.typed(abi::map::MEMBERS)?;
        for (i, w) in bits.into_iter().enumerate() {
            m.set(vip_id * words + i as u32, w, 0)
                .map_err(write_err(format!("members of VIP id {vip_id}")))?;
        }
        Ok(())
    }

    /// Installs `table` (of kind `abi::TABLE_*`) as the VIP's live table:
    /// written into the inactive half, then made active by one atomic store.
    /// Returns the new generation. An empty table makes the VIP drop new
    /// flows.
    pub fn swap_table(&mut self, vip_id: u32, kind: u8, table: &[u32]) -> Result<u32> {
        self.tables.swap(vip_id, kind, table)
    }

    /// The datapath's active flow count of a backend id (lc/wlc).
    pub fn active_flows(&self, backend_id: u32) -> i64 {
        self.active.get(backend_id)
    }

    /// Recounts active flows from the connection table and corrects the
    /// datapath's counts (see [`active`]). Returns the sum of corrections.
    pub fn reconcile_active(&self) -> Result<u64> {
        let now = monotonic_ns();
        self.active.reconcile(
            || {
                let flows = self.flows()?;
                let flows6 = self.flows6()?;
                let name = abi::map::VIPS;
                let m = self.ebpf.map(name).ok_or(DatapathError::Map(name))?;
                let m: BpfHashMap<&MapData, VipKey, VipMeta> =
                    BpfHashMap::try_from(m).map_err(|_| DatapathError::Map(name))?;
                let mut vips: Vec<VipMeta> =
                    m.iter().filter_map(|r| r.ok()).map(|(_, v)| v).collect();
                vips.extend(self.vips6()?.into_iter().map(|v| v.meta));
                Ok(active::Scan {
                    flows,
                    flows6,
                    vips,
                })
            },
            now,
        )
    }

    /// Current generation and size of the VIP's live table.
    pub fn table_state(&self, vip_id: u32) -> Option<abi::TableState> {
        self.tables.state(vip_id)
    }

    fn counters(&self, name: &'static str, idx: u32) -> Result<Counters> {
        let m = self.ebpf.map(name).ok_or(DatapathError::Map(name))?;
        let m: PerCpuArray<&MapData, Counters> =
            PerCpuArray::try_from(m).map_err(|_| DatapathError::Map(name))?;
        let per_cpu = m
            .get(&idx, 0)
            .map_err(write_err(format!("reading {name}[{idx}]")))?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Zeroes one counter slot on every CPU.
    fn zero_counters(&mut self, name: &'static str, idx: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| DatapathError::MapWrite {
            what: format!("counting CPUs ({what})"),
            error: e.to_string(),
        })?;
        let m = self.ebpf.map_mut(name).ok_or(DatapathError::Map(name))?;
        let mut m: PerCpuArray<&mut MapData, Counters> =
            PerCpuArray::try_from(m).map_err(|_| DatapathError::Map(name))?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(|e| {
            DatapathError::MapWrite {
                what: format!("zeroing {name}[{idx}]"),
                error: e.to_string(),
            }
        })?;
        m.set(idx, zeros, 0)
            .map_err(write_err(format!("zeroing {name}[{idx}]")))
    }

    /// Zeroes a VIP id's counters, for a new service that takes the id.
    pub fn zero_vip_counters(&mut self, vip_id: u32) -> Result<()> {
        self.zero_counters(abi::map::VIP_STATS, vip_id)
    }

    /// Zeroes a backend id's counters, for a backend new to the id.
    pub fn zero_backend_counters(&mut self, backend_id: u32) -> Result<()> {
        self.zero_counters(abi::map::BACKEND_STATS, backend_id)
    }

    /// Counters of one VIP, summed over CPUs.
    pub fn vip_counters(&self, vip_id: u32) -> Result<Counters> {
        self.counters(abi::map::VIP_STATS, vip_id)
    }

    /// Counters of one backend, summed over CPUs.
    pub fn backend_counters(&self, backend_id: u32) -> Result<Counters> {
        self.counters(abi::map::BACKEND_STATS, backend_id)
    }

    /// Drops of packets to a VIP address that matched no VIP (fragments, IP
    /// options, malformed headers).
    pub fn unmatched_counters(&self) -> Result<Counters> {
        self.counters(abi::map::VIP_STATS, self.limits.max_vips)
    }

    /// A snapshot of the connection table (batched reads where the kernel
    /// has them).
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.lru_entries(abi::map::FLOWS)
    }

    /// Every entry of the LRU hash map `name`, batched where the kernel can.
    fn lru_entries<K: aya::Pod + Default, V: aya::Pod + Default>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, V)>> {
        let m = self.ebpf.map(name).ok_or(DatapathError::Map(name))?;
        let m: BpfHashMap<&MapData, K, V> =
            BpfHashMap::try_from(m).map_err(|_| DatapathError::Map(name))?;
        let data = match self.ebpf.map(name) {
            Some(aya::maps::Map::LruHashMap(d)) => d,
            _ => return Err(DatapathError::Map(name)),
        };
        match batch::dump(data) {
            Ok(Some(all)) => Ok(all),
            Ok(None) => Ok(m.iter().filter_map(|r| r.ok()).collect()),
            Err(e) => Err(DatapathError::MapWrite {
                what: format!("reading {name}"),
                error: e.to_string(),
            }),
        }
    }

    /// Runs a program once (or `repeat` times) on `frame` with
    /// BPF_PROG_TEST_RUN, against the live maps. Used by the tests and the
    /// per-packet benchmark.
    pub fn test_run(&self, prog: &'static str, frame: &[u8], repeat: u32) -> Result<TestRunOutput> {
        let p = self
            .ebpf
            .program(prog)
            .ok_or(DatapathError::Program(prog))?;
        match p {
            aya::programs::Program::Xdp(x) => test_run(x, frame, repeat),
            aya::programs::Program::SchedClassifier(c) => test_run(c, frame, repeat),
            _ => return Err(DatapathError::Program(prog)),
        }
        .map_err(|e| DatapathError::TestRun {
            prog,
            error: describe(&e),
        })
    }

    fn typed<'a, T>(&'a mut self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map>,
    {
        let m = self.ebpf.map_mut(name).ok_or(DatapathError::Map(name))?;
        T::try_from(m).map_err(|_| DatapathError::Map(name))
    }
}

/// The clock the datapath stamps flows with (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn fmt_vip(k: &VipKey) -> String {
    let proto = match k.proto {
        abi::IPPROTO_TCP => "tcp",
        abi::IPPROTO_UDP => "udp",
        _ => "?",
    };
    format!(
        "{}:{}/{proto}",
        std::net::Ipv4Addr::from(k.addr.to_ne_bytes()),
        u16::from_be(k.port)
    )
}
