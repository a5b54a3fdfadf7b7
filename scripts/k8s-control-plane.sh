#!/usr/bin/env bash
# Builds a real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler
# v1.20.2) and a real node's kubelet and kube-proxy for podmeter's end-to-end tests from Debian's own
# source package, with Debian's Go 1.19, and caches the five binaries outside any work tree. Also
# installs etcd (Debian's etcd-server) and openssl, which the tests' ControlPlane guard runs next to
# them. Needs root and Debian's archive (via apt); nothing else is downloaded.
#
# Idempotent: when the cache is complete it only checks and prints, in about a second. The first
# run takes 5 to 13 minutes on 2 cores depending on the machine (recipe 3, all five binaries: 301 s
# on an idle 2-core VM; the kubelet, the scheduler and kube-proxy share most of their packages with
# the control plane's) (1.4 GB peak RSS, ~3 GB of disk in /var/tmp while building).
#
# Prints the directory holding the binaries as the last line of stdout (all other output goes to
# stderr), so callers can do: bin=$(scripts/k8s-control-plane.sh | tail -n1).
#
# Environment:
#   PODMETER_K8S_CACHE   cache directory (default /var/cache/podmeter/k8s-v1.20.2); binaries in bin/
#   PODMETER_K8S_WORK    parent of the temporary work tree (default /var/tmp)
#   PODMETER_K8S_JOBS    Go build parallelism, GOMAXPROCS (default 2; make itself runs -j1)
#
# Pitfalls handled here (see /work/shared/design/k8s-control-plane.md):
# - the vendored modern-go/reflect2 1.0.1 crashes under Go >= 1.18 ("fatal error: fault" in
#   UnsafeIterate); its files and json-iterator's are replaced with Debian's reflect2 1.0.2 and
#   json-iterator 1.1.12 before building;
# - the build scripts run in GOPATH mode and need rsync; GOPROXY=off proves nothing is fetched;
# - without a git tree the binaries would report v0.0.0, so the version is given in a version file.
set -euo pipefail

readonly K8S_VERSION=1.20.2
readonly K8S_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 # upstream tag v1.20.2
readonly SRC_PACKAGE=kubernetes
readonly ORIG_TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
readonly ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
readonly GO_PACKAGE=golang-1.19-go
readonly GOROOT_DIR=/usr/lib/go-1.19
# Bump when the build recipe changes in a way that must invalidate cached binaries.
# 2: also kubelet and kube-scheduler (the RealNode of the tests)
# 3: also kube-proxy (ClusterIP Services on the RealNode)
readonly RECIPE=3
readonly STAMP_KEY="kubernetes v$K8S_VERSION orig-sha256=$ORIG_SHA256 recipe=$RECIPE"

readonly cache=${PODMETER_K8S_CACHE:-/var/cache/podmeter/k8s-v$K8S_VERSION}
readonly work_parent=${PODMETER_K8S_WORK:-/var/tmp}
readonly jobs=${PODMETER_K8S_JOBS:-2}
readonly bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# Needed to run the control plane (checked on every run) and, in addition, to build it.
readonly run_packages=(etcd-server openssl)
readonly build_packages=("$GO_PACKAGE" golang-1.19-src rsync make
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
readonly deb_src_file=/etc/apt/sources.list.d/podmeter-k8s-deb-src

log() { printf 'k8s-control-plane: %s\n' "$*" >&2; }
die() {
  printf 'k8s-control-plane: error: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs Debian packages and writes $cache)"
command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian machine"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Installs the given Debian packages that are missing; refreshes the package lists first.
ensure_packages() {
  local missing=() p
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: is Debian's archive reachable?"
  local etcd_was_installed=0
  installed etcd-server && etcd_was_installed=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed: are they available from Debian's archive (bookworm)?"
  for p in "${missing[@]}"; do installed "$p" || die "package $p did not install"; done
  # The package may start a system-wide etcd on :2379; the tests run their own on free ports.
  if [ "$etcd_was_installed" -eq 0 ]; then stop_system_etcd; fi
}

stop_system_etcd() {
  if command -v systemctl >/dev/null && systemctl is-active -q etcd 2>/dev/null; then
    log "stopping and disabling the system etcd service the package started (tests run their own)"
    systemctl disable --now etcd >/dev/null 2>&1 || log "warning: could not stop the etcd service"
  elif [ -x /etc/init.d/etcd ] && /etc/init.d/etcd status >/dev/null 2>&1; then
    log "stopping the system etcd service the package started (tests run their own)"
    /etc/init.d/etcd stop >/dev/null 2>&1 || log "warning: could not stop the etcd service"
  fi
}

cache_complete() {
  [ -f "$cache/stamp" ] && [ "$(head -n1 "$cache/stamp")" = "$STAMP_KEY" ] || return 1
  local b
  for b in "${bins[@]}"; do [ -x "$cache/bin/$b" ] || return 1; done
}

finish() {
  ensure_packages "${run_packages[@]}"
  command -v etcd >/dev/null || die "etcd is not on PATH although etcd-server is installed"
  log "ready: $("$cache/bin/kube-apiserver" --version 2>&1), $(etcd --version 2>/dev/null | head -n1)"
  log "binaries: $(printf '%s ' "${bins[@]/#/$cache/bin/}")(PODMETER_K8S_BIN selects others for the tests)"
  printf '%s\n' "$cache/bin"
  exit 0
}

# Fast path: nothing to build.
if cache_complete; then finish; fi

# One build at a time (two test processes may call this concurrently).
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if cache_complete; then finish; fi

started=$(date +%s)
ensure_packages "${run_packages[@]}" "${build_packages[@]}"
[ -x "$GOROOT_DIR/bin/go" ] || die "$GOROOT_DIR/bin/go missing although $GO_PACKAGE is installed"

# A deb-src twin of the configured Debian sources, so the ordinary apt client can fetch the source.
if [ ! -e "$deb_src_file.sources" ] && [ ! -e "$deb_src_file.list" ]; then
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    log "adding $deb_src_file.sources (deb-src twin of debian.sources)"
    sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$deb_src_file.sources"
  elif [ -f /etc/apt/sources.list ] && grep -q '^deb ' /etc/apt/sources.list; then
    log "adding $deb_src_file.list (deb-src twin of sources.list)"
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >"$deb_src_file.list"
  else
    die "no Debian apt source found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)"
  fi
fi
if [ -z "$(apt-cache showsrc "$SRC_PACKAGE" 2>/dev/null)" ]; then
  log "refreshing apt lists for the deb-src entries"
  apt-get update -qq || die "apt-get update failed: is Debian's archive reachable?"
  [ -n "$(apt-cache showsrc "$SRC_PACKAGE" 2>/dev/null)" ] \
    || die "Debian's archive offers no source package '$SRC_PACKAGE' (bookworm has 1.20.5+really1.20.2)"
fi

# Leftovers of failed runs (kept for debugging) go now: we hold the lock, nobody else builds.
find "$work_parent" -maxdepth 1 -name 'podmeter-k8s-build.*' -type d -exec rm -rf {} + 2>/dev/null || true
avail_kb=$(df --output=avail -k "$work_parent" | tail -n1)
[ "$avail_kb" -gt $((5 * 1024 * 1024)) ] || die "need about 5 GB free in $work_parent (have $((avail_kb / 1024)) MB)"
work=$(mktemp -d "$work_parent/podmeter-k8s-build.XXXXXX")
chmod 755 "$work" # apt-get source downloads as user _apt
build_ok=0
cleanup() {
  if [ "$build_ok" -eq 1 ]; then
    rm -rf "$work"
  else
    log "build failed; work tree kept at $work for inspection (the next run removes it)"
  fi
}
trap cleanup EXIT

log "fetching the $SRC_PACKAGE source package with apt-get source"
mkdir "$work/dl"
# apt downloads as user _apt when it can write the directory (no "unsandboxed" warning).
if id _apt >/dev/null 2>&1; then chown _apt "$work/dl"; fi
(cd "$work/dl" && apt-get source -qq --download-only "$SRC_PACKAGE" >&2) \
  || die "apt-get source --download-only $SRC_PACKAGE failed"
[ -f "$work/dl/$ORIG_TARBALL" ] \
  || die "apt-get source did not fetch $ORIG_TARBALL (got: $(ls "$work/dl" | tr '\n' ' '))"
actual=$(sha256sum "$work/dl/$ORIG_TARBALL" | cut -d' ' -f1)
[ "$actual" = "$ORIG_SHA256" ] || die "$ORIG_TARBALL has sha256 $actual, expected $ORIG_SHA256"
log "verified $ORIG_TARBALL (sha256 $ORIG_SHA256)"

src=$work/src
mkdir "$src"
tar -xzf "$work/dl/$ORIG_TARBALL" -C "$src" --strip-components=1
rm -rf "$work/dl"
[ -f "$src/Makefile" ] && [ -d "$src/vendor" ] || die "unexpected layout of $ORIG_TARBALL (no Makefile or vendor/)"

# The vendor fix: Debian's reflect2 1.0.2 and json-iterator 1.1.12 (non-test .go/.s files only).
replace_vendor() {
  local from=$1 to=$src/vendor/$2
  [ -d "$from" ] || die "$from missing (Debian's Go source package not installed?)"
  [ -d "$to" ] || die "$to missing from the source tree"
  find "$to" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
  find "$from" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
    -exec cp -t "$to" {} +
  log "vendor/$2 replaced by $from ($(find "$to" -maxdepth 1 -name '*.go' | wc -l) files)"
}
replace_vendor /usr/share/gocode/src/github.com/modern-go/reflect2 github.com/modern-go/reflect2
replace_vendor /usr/share/gocode/src/github.com/json-iterator/go github.com/json-iterator/go

# Without a git tree the version would be v0.0.0-master; hack/lib/version.sh reads this file.
minor=${K8S_VERSION#*.}
minor=${minor%%.*}
cat >"$work/version.env" <<EOF
KUBE_GIT_COMMIT='$K8S_COMMIT'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v$K8S_VERSION'
KUBE_GIT_MAJOR='${K8S_VERSION%%.*}'
KUBE_GIT_MINOR='$minor'
EOF

mkdir -p "$cache"
build_log=$cache/build.log
log "building ${bins[*]} with $("$GOROOT_DIR/bin/go" version | cut -d' ' -f3) (5 to 10 minutes on 2 cores; log: $build_log)"
build_started=$(date +%s)
env GOROOT="$GOROOT_DIR" PATH="$GOROOT_DIR/bin:$PATH" GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
  GOPATH="$work/gopath" GOCACHE="$work/gocache" GOMAXPROCS="$jobs" \
  KUBE_GIT_VERSION_FILE="$work/version.env" \
  make -C "$src" WHAT="${bins[*]/#/cmd/}" >"$build_log" 2>&1 &
make_pid=$!
# A line a minute, so a first run is never silent for minutes.
while kill -0 "$make_pid" 2>/dev/null; do
  for _ in $(seq 60); do kill -0 "$make_pid" 2>/dev/null && sleep 1; done
  if kill -0 "$make_pid" 2>/dev/null; then
    last=$(grep -a '^+++' "$build_log" | tail -n1 | sed 's/^+++ \[[^]]*\] //')
    log "still building: $(($(date +%s) - build_started)) s${last:+, at: $last}"
  fi
done
if ! wait "$make_pid"; then
  tail -n 40 "$build_log" >&2
  die "the Kubernetes build failed (full log: $build_log)"
fi
log "built in $(($(date +%s) - build_started)) s"

rm -rf "$cache/bin.new" "$cache/stamp"
mkdir "$cache/bin.new"
for b in "${bins[@]}"; do
  built=$(find "$src/_output" -type f -name "$b" -perm -u+x | head -n1)
  [ -n "$built" ] || die "the build did not produce $b (log: $build_log)"
  install -m 0755 "$built" "$cache/bin.new/$b"
done
for b in "${bins[@]}"; do
  version=$("$cache/bin.new/$b" --version 2>&1)
  [ "$version" = "Kubernetes v$K8S_VERSION" ] || die "built $b reports '$version'"
done
rm -rf "$cache/bin"
mv "$cache/bin.new" "$cache/bin"
{
  echo "$STAMP_KEY"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - started)) s"
  echo "go: $(dpkg-query -W -f='${Package} ${Version}' "$GO_PACKAGE")"
  echo "reflect2: $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
  echo "json-iterator: $(dpkg-query -W -f='${Version}' golang-github-json-iterator-go-dev)"
} >"$cache/stamp"
build_ok=1
log "cached in $cache/bin (total $(($(date +%s) - started)) s); removing the work tree $work"
finish
