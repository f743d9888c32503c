#!/usr/bin/env bash
# Builds the local Kubernetes control plane used by the tests (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok) from the
# versions pinned in go.mod next to this script.
#
# Binaries go to a cache folder outside the repository, so a build is paid
# once per machine, not once per clone:
#   ${STORMGATE_CACHE:-$HOME/.cache/stormgate}/controlplane/bin
# A binary is rebuilt only when it is missing or its stamp (a hash of the
# module versions, go.sum, the Go version and the build flags) no longer matches. Running the
# script again with nothing changed builds nothing. The script also copies
# KWOK's Stage CRD (kwok-stages-crd.yaml) next to the binaries for the test helper.
#
# Environment:
#   STORMGATE_CACHE         cache root (default $HOME/.cache/stormgate)
#   STORMGATE_BUILD_JOBS    packages compiled in parallel, go build -p (default 2)
#   STORMGATE_BUILD_NICE    niceness of the compiler processes (default 10)
#   GO                      go command (default: go on PATH, else /usr/local/go/bin/go)
#
# The Go build cache stays in the default GOCACHE, so rebuilds after a version
# bump reuse every package that did not change.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${STORMGATE_CACHE:-$HOME/.cache/stormgate}"
bin_dir="${cache_root}/controlplane/bin"
stamp_dir="${cache_root}/controlplane/stamps"
log_file="${cache_root}/controlplane/build-times.log"
jobs="${STORMGATE_BUILD_JOBS:-2}"
niceness="${STORMGATE_BUILD_NICE:-10}"

# Part of every stamp: change it when the build flags below change, so that
# existing binaries are rebuilt.
build_recipe="recipe-1 CGO_ENABLED=0 -trimpath -ldflags=-s-w+versions"

log() { printf 'controlplane build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -n "${GO:-}" ]]; then
    go_cmd="$GO"
elif command -v go >/dev/null 2>&1; then
    go_cmd="$(command -v go)"
elif [[ -x /usr/local/go/bin/go ]]; then
    go_cmd=/usr/local/go/bin/go
else
    die "no Go toolchain found (install Go 1.26 or newer, or set GO=/path/to/go)"
fi

cd "$here"
[[ -f go.mod && -f go.sum ]] || die "go.mod or go.sum missing in $here"

# The module requires go 1.26. With GOTOOLCHAIN=local an older Go stops with
# a clear error instead of downloading a newer toolchain.
export GOTOOLCHAIN=local
# go.sum must already list every module; a build must never edit go.mod.
export GOFLAGS="-mod=readonly${GOFLAGS:+ $GOFLAGS}"
# Static binaries: no C toolchain needed, and they run on any Linux of the same architecture.
export CGO_ENABLED=0

go_version="$("$go_cmd" env GOVERSION)"
mod_version() { "$go_cmd" list -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' "$1"; }
kube_version="$(mod_version k8s.io/kubernetes)"
etcd_version="$(mod_version go.etcd.io/etcd/server/v3)"
kwok_version="$(mod_version sigs.k8s.io/kwok)"

# The stamp covers the resolved module versions rather than the text of
# go.mod, so editing a comment there does not rebuild anything.
stamp_key="$(
    {
        "$go_cmd" list -m -f '{{.Path}} {{.Version}}{{with .Replace}} => {{.Path}} {{.Version}}{{end}}' all
        sha256sum go.sum | awk '{print $1}'
        printf '%s\n%s\n' "$go_version" "$build_recipe"
    } | sha256sum | awk '{print $1}'
)"

mkdir -p "$bin_dir" "$stamp_dir"

# One build at a time per cache folder: parallel test runs that all call this
# script wait for the first one instead of compiling the same code twice.
if command -v flock >/dev/null 2>&1; then
    exec 9>"${cache_root}/controlplane/.build.lock"
    flock 9
fi

# Version information that release builds stamp into the Kubernetes binaries.
# Without it the servers report v0.0.0-master and clients cannot tell which
# release they talk to.
kube_minor="${kube_version#v*.}"
kube_minor="${kube_minor%%.*}"
kube_major="${kube_version#v}"
kube_major="${kube_major%%.*}"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X ${pkg}.gitVersion=${kube_version}"
    kube_ldflags+=" -X ${pkg}.gitMajor=${kube_major}"
    kube_ldflags+=" -X ${pkg}.gitMinor=${kube_minor}"
    kube_ldflags+=" -X ${pkg}.gitTreeState=clean"
done

# name|main package|linker flags
targets=(
    "etcd|go.etcd.io/etcd/server/v3|-s -w"
    "kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver|${kube_ldflags}"
    "kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager|${kube_ldflags}"
    "kube-scheduler|k8s.io/kubernetes/cmd/kube-scheduler|${kube_ldflags}"
    "kwok|sigs.k8s.io/kwok/cmd/kwok|-s -w"
)

log "versions: kubernetes ${kube_version}, etcd ${etcd_version}, kwok ${kwok_version}, ${go_version}"
log "output: ${bin_dir}"

built=0
for target in "${targets[@]}"; do
    IFS='|' read -r name pkg ldflags <<<"$target"
    out="${bin_dir}/${name}"
    stamp="${stamp_dir}/${name}"
    if [[ -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$stamp_key" ]]; then
        log "${name}: up to date"
        continue
    fi
    log "${name}: building ${pkg} (go build -p ${jobs}, nice ${niceness})"
    rm -f "$stamp"
    start=$(date +%s)
    # Build next to the final path and rename, so an interrupted build never
    # leaves a truncated binary that looks installed.
    nice -n "$niceness" "$go_cmd" build -p "$jobs" -trimpath \
        -ldflags "$ldflags" -o "${out}.partial" "$pkg"
    mv -f "${out}.partial" "$out"
    printf '%s\n' "$stamp_key" >"$stamp"
    seconds=$(($(date +%s) - start))
    built=$((built + 1))
    log "${name}: built in ${seconds}s"
    printf '%s %s %s %ss %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" "$pkg" "$seconds" "$go_version" >>"$log_file"
done

# KWOK reads its Stage objects from the API server; the test helper installs
# this CRD before it creates them. It ships in the pinned KWOK module.
kwok_dir="$("$go_cmd" list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
[[ -n "$kwok_dir" && -d "$kwok_dir" ]] || "$go_cmd" mod download sigs.k8s.io/kwok
kwok_dir="$("$go_cmd" list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
stage_crd="${kwok_dir}/kustomize/crd/bases/kwok.x-k8s.io_stages.yaml"
[[ -f "$stage_crd" ]] || die "Stage CRD not found at ${stage_crd}"
if ! cmp -s "$stage_crd" "${bin_dir}/kwok-stages-crd.yaml"; then
    install -m 0644 "$stage_crd" "${bin_dir}/kwok-stages-crd.yaml"
    log "kwok-stages-crd.yaml: copied from ${stage_crd}"
fi

log "done (${built} built); build times are appended to ${log_file}"
