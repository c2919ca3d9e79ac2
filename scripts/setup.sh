#!/usr/bin/env bash
# One-time setup of a fresh Debian 12 machine for building and testing lb.
# Installs: apt packages used by the tests and the lab, the nightly rust-src
# (needed by -Z build-std for the eBPF target) and bpf-linker built against the
# nightly's own libLLVM (so no apt LLVM is needed).
# Idempotent: every step is skipped when its result is already present.
set -euo pipefail

TOOLS="${LB_TOOLS_DIR:-$HOME/.cargo}"
# libnginx-mod-stream: nginx-light builds stream as a dynamic module it does
# not ship; `cargo xtask bench e2e` compares lb against nginx stream.
# clang, llvm (llc) and bpftool build and load Katran for `cargo xtask bench --katran`.
APT_PKGS=(iproute2 ethtool keepalived curl python3 tcpdump wrk haproxy nginx-light libnginx-mod-stream prometheus clang llvm bpftool)

need_root() { [ "$(id -u)" = 0 ] || { echo "setup: apt packages need root (run with sudo)" >&2; exit 1; }; }

missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The lab and tests start their own daemons in namespaces; the packaged
  # services must not grab ports or the VIP on the host.
  for s in keepalived haproxy nginx prometheus; do
    systemctl disable --now "$s" >/dev/null 2>&1 || true
  done
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
rustup component list --toolchain nightly --installed | grep -q '^rust-src' \
  || rustup component add rust-src --toolchain nightly

if ! bpf-linker --version >/dev/null 2>&1; then
  SYSROOT_LIB=$(rustc +nightly --print sysroot)/lib
  LIBLLVM=$(cd "$SYSROOT_LIB" && ls libLLVM.so.* | head -n1)
  MAJOR=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  PREFIX="$TOOLS/llvm-prefix"
  mkdir -p "$PREFIX/lib"
  ln -sfn "$SYSROOT_LIB/$LIBLLVM" "$PREFIX/lib/libLLVM.so"
  ln -sfn "$SYSROOT_LIB/$LIBLLVM" "$PREFIX/lib/$LIBLLVM"
  echo "setup: building bpf-linker 0.13.0 against $LIBLLVM (LLVM $MAJOR)"
  LLVM_PREFIX="$PREFIX" cargo +stable install bpf-linker@0.13.0 --locked \
    --no-default-features --features "llvm-$MAJOR" --root "$TOOLS"
fi
bpf-linker --version

# cargo-fuzz for `cargo xtask fuzz` (the VRRP codec and config parser
# targets; CI runs them briefly).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo +stable install cargo-fuzz@0.13.2 --locked --root "$TOOLS"
fi
echo "setup: done"
