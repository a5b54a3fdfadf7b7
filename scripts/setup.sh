#!/usr/bin/env bash
# Installs everything podmeter's build, tests and demo need on a fresh Debian machine, idempotently:
# the pinned toolchain from rust-toolchain.toml, bpf-linker built against that toolchain's own LLVM,
# and the Debian packages the tests and demo drive (nginx, hey, wrk, curl, prometheus, ...).
# Each step checks first and does nothing when already done, so reruns take about a second.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

log() { printf 'setup: %s\n' "$*" >&2; }

# Debian packages used by tests, the demo and the benchmarks.
packages=(nginx hey wrk curl prometheus openssl ncat bpftool nftables iproute2 procps musl-tools)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The nginx package starts a system-wide server on :80; podmeter's tests run their own.
  if command -v systemctl >/dev/null && systemctl is-active -q nginx 2>/dev/null; then systemctl stop nginx || true; fi
fi

# The pinned toolchain (RUSTUP_AUTO_INSTALL=0 on our machines: nothing installs it implicitly).
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
  || ! rustup component list --toolchain "$toolchain" --installed 2>/dev/null | grep -q '^rust-src'; then
  log "installing toolchain $toolchain"
  rustup toolchain install "$toolchain" --profile minimal --component rust-src,rustfmt,clippy >/dev/null
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
stamp="$HOME/.cargo/bin/.bpf-linker-$linker_version-$toolchain"
if [ ! -x "$HOME/.cargo/bin/bpf-linker" ] || [ ! -f "$stamp" ]; then
  llvm_lib=$(basename "$(ls "$sysroot"/lib/libLLVM-"$llvm_major"-*.so | head -n1)" .so)
  llvm_lib=${llvm_lib#lib}
  log "building bpf-linker $linker_version against $llvm_lib (about a minute)"
  RUSTFLAGS="-L $sysroot/lib -l dylib=$llvm_lib -C link-arg=-Wl,-rpath,$sysroot/lib" \
    rustup run "$toolchain" cargo install bpf-linker --locked --version "$linker_version" \
    --no-default-features --features "llvm-$llvm_major,no-llvm-linking" --force >/dev/null
  touch "$stamp"
fi
log "ready: $(rustup run "$toolchain" rustc --version), bpf-linker $linker_version"
