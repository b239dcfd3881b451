#!/usr/bin/env bash
# Build the control-plane binaries for gpufleet's real-apiserver test tier and
# `gpufleet dev-cluster` (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok, and kubectl to talk to them) from Go modules, and cache
# them outside the checkout.
#
# Why a wrapper module instead of `go install …@version`:
#   `go install k8s.io/kubernetes/cmd/kube-apiserver@v1.37.2` fails. The
#   k8s.io/kubernetes go.mod requires its ~30 staging modules (k8s.io/api,
#   k8s.io/apiserver, k8s.io/client-go, …) at the placeholder version v0.0.0
#   and resolves them with `replace k8s.io/x => ./staging/src/k8s.io/x`.
#   `go install pkg@version` refuses modules with replace directives ("The
#   go.mod file for the module providing named packages contains one or more
#   replace directives"), and a consumer ignores a dependency's replaces, so
#   v0.0.0 cannot be resolved either way (kubernetes/kubernetes#79384). The staging modules are published as
#   v0.<minor>.<patch> for v1.<minor>.<patch>, so the wrapper module in
#   ./kubernetes requires k8s.io/kubernetes and replaces every staging module
#   with its v0.37.2 release. etcd's server module has the same problem
#   (`replace … => ../api`), hence ./etcd. kwok has no replaces, but gets a
#   wrapper too so that every binary is pinned by a committed go.sum.
#
# Each binary keeps the dependency versions its own project tested: the three
# wrappers are separate modules, so MVS never mixes kubernetes', etcd's and
# kwok's dependency graphs.
#
# Usage:
#   tools/controlplane/build.sh            build what is not cached; last stdout line = bin dir
#   tools/controlplane/build.sh --check    exit 0 and print the bin dir if cached, else exit 1
#   tools/controlplane/build.sh --update   regenerate the wrapper go.mod/go.sum files from the
#                                          upstream releases (needs the module proxy); no build
#
# Environment:
#   GPUFLEET_CACHE   cache root (default ~/.cache/gpufleet). Binaries go to
#                    $GPUFLEET_CACHE/controlplane/<key>/bin, Go's module and build
#                    caches to $GPUFLEET_CACHE/go/{mod,build}. A cache filled before
#                    kube-scheduler and kubectl were added gets just those two built
#                    into its bin dir (the key names versions, not the binary list).
#
# Progress goes to stderr; stdout carries only the bin dir, so
#   BIN=$(tools/controlplane/build.sh | tail -1)
# works.
set -euo pipefail

# Bump these together with `build.sh --update`, then commit the regenerated go.mod/go.sum.
K8S_VERSION=1.37.2
ETCD_VERSION=3.7.3
KWOK_VERSION=0.8.0
MIN_GO_MINOR=26 # k8s.io/kubernetes v1.37, etcd v3.7 and kwok v0.8 all say `go 1.26.0`

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
CP_ROOT="$CACHE_ROOT/controlplane"
DEST="$CP_ROOT/$KEY"
BIN="$DEST/bin"
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
BINARIES=(etcd kwok "${K8S_BINARIES[@]}")
# kwok v0.8 refuses to start without Stage objects (`--config`). Its stock stage
# files ship in the kwok module, not in the binary, so they are copied next to
# bin/ as $DEST/kwok-stages/{node,pod}/<set>/<stage>.yaml.
KWOK_STAGE_PROBE=kwok-stages/node/fast/node-initialize.yaml

log() { printf '[controlplane] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_complete() { # bin dir
  local dir=$1 b
  for b in "${BINARIES[@]}"; do
    [[ -x "$dir/$b" ]] || return 1
  done
  [[ -f "$dir/../$KWOK_STAGE_PROBE" ]]
}

mode=build
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --update) mode=update ;;
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

# Fast path: nothing to do, no Go needed.
if [[ $mode != update ]] && is_complete "$BIN"; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi
if [[ $mode == check ]]; then
  log "not built: $BIN (run tools/controlplane/build.sh)"
  exit 1
fi

command -v go >/dev/null || die "go not found on PATH (need Go >= 1.$MIN_GO_MINOR)"
go_version=$(go env GOVERSION)
go_minor=$(sed -nE 's/^go1\.([0-9]+).*/\1/p' <<<"$go_version")
[[ -n $go_minor && $go_minor -ge $MIN_GO_MINOR ]] || die "need Go >= 1.$MIN_GO_MINOR, found $go_version"

export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
export CGO_ENABLED=0 # static binaries, as upstream releases build them; no C toolchain needed
export GOFLAGS="-mod=readonly -buildvcs=false"
mkdir -p "$GOMODCACHE" "$GOCACHE" "$CP_ROOT"

# ---------------------------------------------------------------------------
# --update: (re)write the wrapper modules from the upstream releases.
# ---------------------------------------------------------------------------
gomod_of() { # module@version -> path of its go.mod in the module cache
  (cd / && GOFLAGS=-buildvcs=false go mod download -json "$1") | sed -nE 's/^[[:space:]]*"GoMod": "(.*)",?$/\1/p'
}

# The `go` and `godebug` lines of an upstream go.mod, so the wrapper builds
# with the same language version and GODEBUG defaults as upstream's own build.
go_lines_of() { grep -E '^(go|godebug)[[:space:]]' "$1"; }

write_wrapper() { # dir, module body (after the header)
  local dir=$1 body=$2
  mkdir -p "$dir"
  rm -f "$dir/go.sum"
  {
    echo "// Generated by tools/controlplane/build.sh --update; edit the versions there, not here."
    echo "module gpufleet/tools/controlplane/$(basename "$dir")"
    echo
    printf '%s\n' "$body"
  } >"$dir/go.mod"
  (cd "$dir" && GOFLAGS=-buildvcs=false go mod tidy)
  log "wrote $dir/go.mod and go.sum"
}

update_modules() {
  local up staging body name
  # kubernetes: every `k8s.io/<name> v0.0.0` requirement is a staging module.
  up=$(gomod_of "k8s.io/kubernetes@v$K8S_VERSION")
  [[ -f $up ]] || die "could not download k8s.io/kubernetes@v$K8S_VERSION"
  mapfile -t staging < <(grep -E '^(require)?[[:space:]]*k8s\.io/[^[:space:]]+ v0\.0\.0([[:space:]]|$)' "$up" |
    sed -E 's/^(require)?[[:space:]]*//' | awk '{print $1}' | sort -u)
  ((${#staging[@]} > 10)) || die "found only ${#staging[@]} staging modules in $up"
  log "k8s.io/kubernetes v$K8S_VERSION: ${#staging[@]} staging modules -> v0.${K8S_VERSION#*.}"
  body="$(go_lines_of "$up")"$'\n\n'"require k8s.io/kubernetes v$K8S_VERSION"$'\n\n'"replace ("
  for name in "${staging[@]}"; do
    body+=$'\n\t'"$name => $name v0.${K8S_VERSION#*.}"
  done
  body+=$'\n)\n\ntool ('
  for name in "${K8S_BINARIES[@]}"; do
    body+=$'\n\t'"k8s.io/kubernetes/cmd/$name"
  done
  body+=$'\n)'
  write_wrapper "$HERE/kubernetes" "$body"

  # etcd: server/v3 is `package main` at its module root.
  up=$(gomod_of "go.etcd.io/etcd/server/v3@v$ETCD_VERSION")
  body="$(go_lines_of "$up")"$'\n\n'"require go.etcd.io/etcd/server/v3 v$ETCD_VERSION"$'\n\n'"tool go.etcd.io/etcd/server/v3"
  write_wrapper "$HERE/etcd" "$body"

  up=$(gomod_of "sigs.k8s.io/kwok@v$KWOK_VERSION")
  body="$(go_lines_of "$up")"$'\n\n'"require sigs.k8s.io/kwok v$KWOK_VERSION"$'\n\n'"tool sigs.k8s.io/kwok/cmd/kwok"
  write_wrapper "$HERE/kwok" "$body"
}

if [[ $mode == update ]]; then
  update_modules
  log "done; review and commit tools/controlplane/*/go.{mod,sum}"
  exit 0
fi

# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------
# The committed wrappers must match the versions above.
requires() { # go.mod, module, version
  grep -qE "^(require)?[[:space:]]*${2//./\\.} v${3//./\\.}([[:space:]]|\$)" "$1"
}
requires "$HERE/kubernetes/go.mod" k8s.io/kubernetes "$K8S_VERSION" &&
  requires "$HERE/etcd/go.mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" &&
  requires "$HERE/kwok/go.mod" sigs.k8s.io/kwok "$KWOK_VERSION" ||
  die "wrapper go.mod files do not match K8S/ETCD/KWOK_VERSION; run $0 --update"

# One build at a time per cache; whoever waits re-checks the cache afterwards.
if command -v flock >/dev/null; then
  exec 9>"$CP_ROOT/.lock"
  flock 9
  if is_complete "$BIN"; then
    log "built by a concurrent run: $BIN"
    echo "$BIN"
    exit 0
  fi
fi

# Build next to the destination (same filesystem) and rename at the end, so an
# interrupted build never leaves a half-filled cache directory behind.
rm -rf "$CP_ROOT/.build-$KEY".* # left by a killed run (we hold the lock)
tmp=$(mktemp -d "$CP_ROOT/.build-$KEY.XXXXXX")
child=
trap 'rm -rf "$tmp"' EXIT
# On a signal, stop the running `go build` too and let the EXIT trap clean up.
trap '[[ -n $child ]] && kill "$child" 2>/dev/null; exit 130' INT TERM HUP
# Run a command in the background and wait, so that the traps above fire at once.
run() {
  "$@" &
  child=$!
  wait "$child"
  child=
}
chmod 755 "$tmp"
mkdir -p "$tmp/bin"

# Only what the cache lacks is built: a cache from before kube-scheduler and kubectl
# were added keeps its binaries (and stays valid for anyone using them meanwhile).
missing() { [[ ! -x "$BIN/$1" ]]; }
k8s_missing=()
for b in "${K8S_BINARIES[@]}"; do
  missing "$b" && k8s_missing+=("$b")
done

k8s_minor=${K8S_VERSION#*.}
k8s_minor=${k8s_minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
  k8s_ldflags+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
done

start=$SECONDS
log "building into $tmp with $go_version (GOMODCACHE=$GOMODCACHE GOCACHE=$GOCACHE)"

if missing etcd; then
  log "etcd v$ETCD_VERSION"
  run go -C "$HERE/etcd" build -trimpath -ldflags="-s -w" -o "$tmp/bin/etcd" go.etcd.io/etcd/server/v3
fi

if missing kwok || [[ ! -f "$DEST/$KWOK_STAGE_PROBE" ]]; then
  log "kwok v$KWOK_VERSION"
  run go -C "$HERE/kwok" build -trimpath -ldflags="-s -w" -o "$tmp/bin/kwok" sigs.k8s.io/kwok/cmd/kwok
  kwok_src=$(go -C "$HERE/kwok" list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  (cd "$kwok_src/kustomize/stage" &&
    find node pod -name '*.yaml' ! -name kustomization.yaml ! -path '*/testdata/*' -print0 |
    while IFS= read -r -d '' f; do install -D -m 644 "$f" "$tmp/kwok-stages/$f"; done)
fi

if ((${#k8s_missing[@]})); then
  log "${k8s_missing[*]} v$K8S_VERSION (the slow part)"
  run go -C "$HERE/kubernetes" build -trimpath -ldflags="$k8s_ldflags" -o "$tmp/bin/" \
    "${k8s_missing[@]/#/k8s.io/kubernetes/cmd/}"
fi

manifest() { # dir holding bin/
  echo "key=$KEY"
  echo "kubernetes=v$K8S_VERSION"
  echo "etcd=v$ETCD_VERSION"
  echo "kwok=v$KWOK_VERSION"
  echo "go=$go_version $(go env GOOS)/$(go env GOARCH)"
  echo "build_seconds=$((SECONDS - start))"
  echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  (cd "$1/bin" && sha256sum "${BINARIES[@]}")
}

if [[ -d $BIN ]]; then
  # Top up the existing cache: each new binary appears by one rename, complete.
  for f in "$tmp/bin"/*; do
    mv -f "$f" "$BIN/"
  done
  if [[ -d "$tmp/kwok-stages" ]]; then
    rm -rf "$DEST/kwok-stages"
    mv "$tmp/kwok-stages" "$DEST/kwok-stages"
  fi
  is_complete "$BIN" || die "build finished but binaries are missing in $BIN"
  manifest "$DEST" >"$tmp/MANIFEST"
  mv -f "$tmp/MANIFEST" "$DEST/MANIFEST"
  rm -rf "$tmp"
else
  is_complete "$tmp/bin" || die "build finished but binaries are missing in $tmp/bin"
  manifest "$tmp" >"$tmp/MANIFEST"
  # A directory at $DEST without bin/ is debris from something else; set it aside.
  if [[ -e $DEST ]]; then
    mv "$DEST" "$tmp.stale"
    rm -rf "$tmp.stale"
  fi
  mv -T "$tmp" "$DEST"
fi
trap - EXIT
log "built in $((SECONDS - start))s: $BIN"
echo "$BIN"
