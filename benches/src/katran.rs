//! Katran's XDP balancer as a peer in the per-packet benchmark.
//!
//! Katran (facebookincubator/katran) forwards with IPIP encapsulation, so its
//! like-for-like lb path is `tun`. Its object is built from a Katran checkout
//! by `cargo xtask bench micro --katran DIR` (clang and llc, Katran's own
//! flags) and loaded here with `bpftool` (libbpf, as Katran itself loads
//! it: aya 0.14 does not create its map-in-map), pinned under a bpffs
//! directory of this process that is removed on drop. The maps get what
//! Katran's userspace would write for one VIP (198.18.0.100:80/tcp) over
//! eight reals: the VIP, the reals, a Maglev ring of lb's own builder, the
//! default router's MAC, and one connection-table LRU per CPU in
//! `lru_mapping` (without them Katran falls back to a shared LRU and
//! counts that as a fault).
//!
//! The layouts below are Katran's `balancer_structs.h` (C, x86-64 padding).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};
use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::Xdp,
};
use aya_obj::programs::XdpAttachType;
use lb_core::{
    datapath::{TestRunOutput, test_run},
    table::{Member, build_maglev},
};

/// Katran's `RING_SIZE`: the Maglev ring of each VIP.
const RING_SIZE: u32 = 65_537;
/// Katran's `DEFAULT_LRU_SIZE`, which an inner LRU must match.
const LRU_SIZE: u32 = 1_000;
/// `struct flow_key`: two 16-byte address unions, the ports, the protocol.
const FLOW_KEY_SIZE: u32 = 40;
/// `struct real_pos_lru`: u32 pos, u64 atime.
const REAL_POS_LRU_SIZE: u32 = 16;

pub struct Katran {
    prog: Xdp,
    pins: Pins,
}

/// This process's bpffs directory; removing it unpins Katran's program and
/// maps, which the kernel frees once our fds close too.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("lb-bench: removing {}: {e}", self.0.display());
        }
    }
}

impl Katran {
    /// Loads `object` and programs one VIP `vip` (IPv4, TCP) over `reals`,
    /// sending to `router_mac`.
    pub fn load(
        object: &Path,
        vip: ([u8; 4], u16),
        reals: &[[u8; 4]],
        router_mac: [u8; 6],
    ) -> Result<Katran> {
        if !is_bpffs(Path::new("/sys/fs/bpf")) {
            bail!("bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)");
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let pins = Pins(PathBuf::from(format!(
            "/sys/fs/bpf/lb-bench-katran-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )));
        std::fs::create_dir(&pins.0).with_context(|| format!("creating {}", pins.0.display()))?;
        let prog = pins.0.join("prog");
        bpftool(
            Command::new("bpftool")
                .args(["prog", "load"])
                .arg(object)
                .arg(&prog)
                .args(["type", "xdp", "pinmaps"])
                .arg(pins.0.join("maps")),
        )
        .with_context(|| format!("loading Katran's {}", object.display()))?;
        let k = Katran {
            prog: Xdp::from_pin(&prog, XdpAttachType::Interface)?,
            pins,
        };
        k.program(vip, reals, router_mac)?;
        Ok(k)
    }

    fn map(&self, name: &str) -> Result<MapData> {
        let path = self.pins.0.join("maps").join(name);
        MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
    }

    fn program(&self, vip: ([u8; 4], u16), reals: &[[u8; 4]], router_mac: [u8; 6]) -> Result<()> {
        let mut vips: HashMap<_, [u8; 20], [u8; 8]> =
            Map::HashMap(self.map("vip_map")?).try_into()?;
        let mut key = [0u8; 20];
        key[..4].copy_from_slice(&vip.0);
        key[16..18].copy_from_slice(&vip.1.to_be_bytes());
        key[18] = libc::IPPROTO_TCP as u8;
        // vip_meta: flags 0 (hash the 5-tuple), vip_num 0.
        vips.insert(key, [0u8; 8], 0)?;

        let mut real_map: Array<_, [u8; 20]> = Map::Array(self.map("reals")?).try_into()?;
        let mut members = Vec::with_capacity(reals.len());
        for (i, addr) in reals.iter().enumerate() {
            // Real ids start at 1: Katran reads 0 in a ring as "no real".
            let id = i as u32 + 1;
            let mut real = [0u8; 20];
            real[..4].copy_from_slice(addr);
            real_map.set(id, real, 0)?;
            members.push(Member {
                id,
                addr: SocketAddr::from((*addr, 0)),
                weight: 1,
            });
        }
        let mut ring: Array<_, u32> = Map::Array(self.map("ch_rings")?).try_into()?;
        for (slot, id) in build_maglev(&members, RING_SIZE)?.into_iter().enumerate() {
            ring.set(slot as u32, id, 0)?;
        }

        let mut ctl: Array<_, [u8; 8]> = Map::Array(self.map("ctl_array")?).try_into()?;
        let mut mac = [0u8; 8];
        mac[..6].copy_from_slice(&router_mac);
        ctl.set(0, mac, 0)?;

        let lru_mapping = self.pins.0.join("maps/lru_mapping");
        for cpu in aya::util::online_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))? {
            let lru = self.pins.0.join(format!("lru{cpu}"));
            bpftool(
                Command::new("bpftool")
                    .args(["map", "create"])
                    .arg(&lru)
                    .args(["type", "lru_hash", "key", &FLOW_KEY_SIZE.to_string()])
                    .args(["value", &REAL_POS_LRU_SIZE.to_string()])
                    .args(["entries", &LRU_SIZE.to_string(), "name", "katran_lru"]),
            )?;
            bpftool(
                Command::new("bpftool")
                    .args(["map", "update", "pinned"])
                    .arg(&lru_mapping)
                    .arg("key")
                    .args(cpu.to_le_bytes().map(|b| b.to_string()))
                    .args(["value", "pinned"])
                    .arg(&lru),
            )?;
        }
        Ok(())
    }

    /// One BPF_PROG_TEST_RUN of Katran's program.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunOutput> {
        Ok(test_run(&self.prog, frame, repeat)?)
    }
}

fn bpftool(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .context("running bpftool (apt install bpftool; scripts/setup.sh does)")?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value for statfs(2) to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid, writable statfs.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}
