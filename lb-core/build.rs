//! Builds the `lb-xdp` eBPF object (nightly, `-Z build-std=core`, bpf-linker)
//! into OUT_DIR, where `datapath` embeds it. `scripts/setup.sh` installs what
//! this needs; nothing is installed from here.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let meta = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("lb-ebpf");
    let root = meta.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF object: run scripts/setup.sh first (nightly rust-src, bpf-linker)")
}
