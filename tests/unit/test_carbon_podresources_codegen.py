"""The checked-in pod-resources code is what `hack/gen_podresources.sh` makes from `api.proto`, and `api.proto` keeps
the kubelet's wire contract (package, service, method, message and field names, numbers and types)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from missing import missing
from moeops.carbon.podresources import api_pb2
from moeops.carbon.podresources.client import LIST_METHOD

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path("moeops/carbon/podresources")
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")

# From kubernetes staging/src/k8s.io/kubelet/pkg/apis/podresources/v1/api.proto (the version with List,
# GetAllocatableResources and Get): (message, field) -> (number, label, type) for the fields moeops reads.
KUBELET_FIELDS = {
    ("ListPodResourcesResponse", "pod_resources"): (1, "repeated", "v1.PodResources"),
    ("PodResources", "name"): (1, "optional", "string"),
    ("PodResources", "namespace"): (2, "optional", "string"),
    ("PodResources", "containers"): (3, "repeated", "v1.ContainerResources"),
    ("ContainerResources", "name"): (1, "optional", "string"),
    ("ContainerResources", "devices"): (2, "repeated", "v1.ContainerDevices"),
    ("ContainerDevices", "resource_name"): (1, "optional", "string"),
    ("ContainerDevices", "device_ids"): (2, "repeated", "string"),
}


def test_checked_in_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        missing("grpcio-tools not installed: pip install -e '.[dev]'")
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "hack/gen_podresources.sh"), str(tmp_path)], check=True, env=env)
    for name in GENERATED:
        fresh = (tmp_path / PACKAGE / name).read_text()
        checked_in = (ROOT / "services" / PACKAGE / name).read_text()
        assert fresh == checked_in, f"{name} is stale: run hack/gen_podresources.sh and commit the result"


def _type_name(field: object) -> str:
    message_type = getattr(field, "message_type", None)
    if message_type is not None:
        return str(message_type.full_name)
    return "string" if getattr(field, "type", None) == 9 else f"type {getattr(field, 'type', None)}"


def test_proto_keeps_the_kubelet_wire_contract() -> None:
    file = api_pb2.DESCRIPTOR
    assert file.package == "v1"
    method = file.services_by_name["PodResourcesLister"].methods_by_name["List"]
    assert f"/{method.containing_service.full_name}/{method.name}" == LIST_METHOD == "/v1.PodResourcesLister/List"
    assert method.input_type.full_name == "v1.ListPodResourcesRequest"
    assert method.output_type.full_name == "v1.ListPodResourcesResponse"
    ours = {
        (message.name, field.name): (field.number, "repeated" if field.is_repeated else "optional", _type_name(field))
        for message in file.message_types_by_name.values()
        for field in message.fields
    }
    assert ours == KUBELET_FIELDS


def test_fields_we_left_out_are_skipped_not_fatal() -> None:
    # A kubelet answer carries ContainerDevices.topology (3) and ContainerResources.cpu_ids (3): unknown to us.
    devices = api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=["GPU-1"])
    topology = b"\x1a\x04\x0a\x02\x08\x01"  # field 3, length 4: TopologyInfo{nodes: [NUMANode{ID: 1}]}
    container = api_pb2.ContainerResources(name="c")
    cpu_ids = b"\x1a\x02\x04\x05"  # field 3, packed int64 [4, 5]
    devices_bytes = devices.SerializeToString() + topology
    container_bytes = container.SerializeToString() + b"\x12" + bytes([len(devices_bytes)]) + devices_bytes + cpu_ids
    parsed = api_pb2.ContainerResources.FromString(container_bytes)
    assert parsed.name == "c"
    assert [(d.resource_name, list(d.device_ids)) for d in parsed.devices] == [("nvidia.com/gpu", ["GPU-1"])]
