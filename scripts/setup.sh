#!/usr/bin/env bash
# Installs everything podmeter's build, tests and demo need on a fresh Debian machine, idempotently:
# the pinned toolchain from rust-toolchain.toml, bpf-linker built against that toolchain's own LLVM,
# and the Debian packages the tests and demo drive (nginx, hey, wrk, curl, prometheus, ...), and
# those of the end-to-end tests' real node and of `cargo xtask image` (containerd, runc, the CNI
# plugins, buildah, busybox-static, conntrack, iptables).
# Each step checks first and does nothing when already done, so reruns take about a second.
# It honours RUSTUP_HOME and CARGO_HOME, so a fresh machine can be tried on one that is not:
#   RUSTUP_HOME=$(mktemp -d) CARGO_HOME=$(mktemp -d) PODMETER_K8S_CACHE=$(mktemp -d) \
#   CARGO_TARGET_DIR=$(mktemp -d) ./run test
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

log() { printf 'setup: %s\n' "$*" >&2; }
started=$(date +%s)
# Prints how long the step that began at $1 took.
took() { log "  done in $(($(date +%s) - $1)) s"; }

# Debian packages used by tests, the demo and the benchmarks. The last line is the real node of the
# end-to-end tests (tests/src/node: containerd 1.6 and runc 1.1 run the kubelet's pods, the CNI
# bridge and host-local plugins in /usr/lib/cni give them addresses, buildah builds the images from
# busybox-static, conntrack is what a kubelet's node is expected to have, kube-proxy writes its
# rules with iptables, nf_tables backend) and `cargo xtask image`.
packages=(nginx hey wrk curl prometheus openssl ncat bpftool nftables iproute2 procps musl-tools
  containerd runc containernetworking-plugins buildah busybox-static conntrack iptables)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step=$(date +%s)
  log "installing Debian packages: ${missing[*]} (about 30 s)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The nginx package starts a system-wide server on :80; podmeter's tests run their own.
  if command -v systemctl >/dev/null && systemctl is-active -q nginx 2>/dev/null; then systemctl stop nginx || true; fi
  # Likewise the containerd package's system daemon: the tests run their own, with their own socket.
  if command -v systemctl >/dev/null && systemctl is-active -q containerd 2>/dev/null; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
  fi
  took "$step"
fi

# The pinned toolchain (RUSTUP_AUTO_INSTALL=0 on our machines: nothing installs it implicitly).
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
  || ! rustup component list --toolchain "$toolchain" --installed 2>/dev/null | grep -q '^rust-src'; then
  step=$(date +%s)
  log "installing toolchain $toolchain (about 20 s)"
  rustup toolchain install "$toolchain" --profile minimal --component rust-src,rustfmt,clippy >/dev/null
  took "$step"
fi

# The static (musl) target of the container image's binary (`cargo xtask image`).
if ! rustup target list --toolchain "$toolchain" --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  log "adding the x86_64-unknown-linux-musl target"
  rustup target add --toolchain "$toolchain" x86_64-unknown-linux-musl >/dev/null
fi

# bpf-linker, linked against the toolchain's own libLLVM (no system LLVM needed).
linker_version=0.13.0
sysroot=$(rustup run "$toolchain" rustc --print sysroot)
llvm_major=$(rustup run "$toolchain" rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
stamp="$cargo_bin/.bpf-linker-$linker_version-$toolchain"
if [ ! -x "$cargo_bin/bpf-linker" ] || [ ! -f "$stamp" ]; then
  llvm_lib=$(basename "$(ls "$sysroot"/lib/libLLVM-"$llvm_major"-*.so | head -n1)" .so)
  llvm_lib=${llvm_lib#lib}
  step=$(date +%s)
  log "building bpf-linker $linker_version against $llvm_lib (about a minute)"
  RUSTFLAGS="-L $sysroot/lib -l dylib=$llvm_lib -C link-arg=-Wl,-rpath,$sysroot/lib" \
    rustup run "$toolchain" cargo install bpf-linker --locked --version "$linker_version" \
    --no-default-features --features "llvm-$llvm_major,no-llvm-linking" --force --quiet >/dev/null
  touch "$stamp"
  took "$step"
fi
log "ready in $(($(date +%s) - started)) s: $(rustup run "$toolchain" rustc --version), bpf-linker $linker_version"
