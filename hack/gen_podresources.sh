#!/usr/bin/env bash
# Regenerate the kubelet pod-resources client code (moeops.carbon.podresources.api_pb2*) from api.proto with the
# pinned grpcio-tools. Usage: hack/gen_podresources.sh [OUT_ROOT]; OUT_ROOT defaults to services/ (in place);
# tests/unit/test_carbon_podresources_codegen.py passes a temporary folder and compares.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/services"}
python=${PYTHON:-"$root/.venv/bin/python"}
proto=moeops/carbon/podresources/api.proto
mkdir -p "$out/$(dirname "$proto")"
# -I services: the generated _pb2_grpc imports `from moeops.carbon.podresources import api_pb2`.
"$python" -m grpc_tools.protoc -I "$root/services" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "$root/services/$proto"
