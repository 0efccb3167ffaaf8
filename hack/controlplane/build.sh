#!/usr/bin/env bash
# Builds the real control plane the e2e tests run against: etcd, kube-apiserver and kube-controller-manager,
# compiled from the module versions pinned in this folder's go.mod/go.sum (test infrastructure only).
# Binaries are cached in $MOEOPS_BIN_DIR (default .cache/bin, git-ignored); a build is skipped when the
# binaries already match the pins (a stamp records the go.sum hash they were built from).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin_dir=${MOEOPS_BIN_DIR:-$root/.cache/bin}
mkdir -p "$bin_dir"

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: Go is not installed; cannot build the e2e control plane" >&2
  exit 3
fi

stamp="$bin_dir/.controlplane.stamp"
want=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && [[ -x "$bin_dir/etcd" && -x "$bin_dir/kube-apiserver" && -x "$bin_dir/kube-controller-manager" ]]; then
  echo "build.sh: control plane binaries are up to date in $bin_dir"
  exit 0
fi

cd "$here"
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod"
# -trimpath + stripped symbols: smaller binaries, and identical across machines for the same pins.
flags=(-trimpath -ldflags "-s -w")
echo "build.sh: building etcd (go.etcd.io/etcd/server/v3) ..."
go build "${flags[@]}" -o "$bin_dir/etcd" go.etcd.io/etcd/server/v3
for cmd in kube-apiserver kube-controller-manager; do
  echo "build.sh: building $cmd (k8s.io/kubernetes/cmd/$cmd) ..."
  go build "${flags[@]}" -o "$bin_dir/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
echo "$want" >"$stamp"
echo "build.sh: done: $(ls "$bin_dir")"
