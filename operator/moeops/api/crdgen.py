"""Generate the CustomResourceDefinitions from the pydantic models (the models are the source of truth).

Pydantic emits JSON Schema (draft 2020-12) with `$ref`s, `anyOf [X, null]` for optional fields and titles;
Kubernetes wants a *structural* OpenAPI v3 schema: everything inlined, no nulls, no titles, and numeric
exclusive bounds in the draft-4 form. This module performs that translation and adds what JSON Schema can't
say: object defaults (so the API server fills nested defaults), CEL rules, printer columns, subresources.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .v1alpha1 import inferenceservice, trainingjob
from .v1alpha1.common import ResourceInfo

RESOURCES: tuple[ResourceInfo, ...] = (trainingjob.RESOURCE, inferenceservice.RESOURCE)
HEADER = "# Generated from the moeops.api models by `moeops crds`. Do not edit: change the models instead.\n"
_DROPPED_KEYS = frozenset({"title", "additionalProperties_false", "$defs"})
_VALIDATIONS = "x-kubernetes-validations"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay `extra` on `base`; CEL rule lists are concatenated, not replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if key == _VALIDATIONS and key in merged:
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged


def _strip_null(node: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Turn `anyOf: [X, {type: null}]` into X. Returns the node and whether it was nullable."""
    variants = node.get("anyOf")
    if not variants:
        return node, False
    non_null = [v for v in variants if v.get("type") != "null"]
    if len(non_null) != 1:
        raise ValueError(f"unions other than Optional[X] are not structural: {node}")
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    return _merge(non_null[0], rest), len(non_null) != len(variants)


def _to_structural(node: dict[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    node, nullable = _strip_null(node)
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = _merge(target, siblings)
        node, _ = _strip_null(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (key == "additionalProperties" and value is False):
            continue
        if key == "default" and (value is None or nullable):
            continue  # None means "unset"; the API server must not store a null.
        if key == "properties":
            out[key] = {name: _to_structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _to_structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound], out[key] = value, True
        else:
            out[key] = value
    return out


def _implied_default(schema: dict[str, Any]) -> dict[str, Any]:
    """The object that defaulting `{}` produces: every property that has a default, recursively."""
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
    return out


def _default_nested_objects(schema: dict[str, Any]) -> None:
    """Give optional, non-nullable sub-objects a default, so that their own field defaults apply.

    The default is spelled out in full (not `{}`): the API server checks a default against the schema,
    CEL rules included, without applying the nested defaults first.
    """
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if prop.get("type") == "object" and "properties" in prop:
            _default_nested_objects(prop)  # children first: their defaults make up this one's.
            if name not in required and "default" not in prop and not prop.get("x-moeops-nullable"):
                prop["default"] = _implied_default(prop)
        elif prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            _default_nested_objects(prop["items"])


def _mark_nullable(node: dict[str, Any]) -> None:
    """Tag Optional[...] properties before structural conversion erases the difference."""
    for prop in node.get("properties", {}).values():
        if any(v.get("type") == "null" for v in prop.get("anyOf", ())):
            prop["x-moeops-nullable"] = True
    for sub in node.get("$defs", {}).values():
        _mark_nullable(sub)


def _drop_marks(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("x-moeops-nullable", None)
        for value in node.values():
            _drop_marks(value)
    elif isinstance(node, list):
        for value in node:
            _drop_marks(value)


def model_schema(model: type[Any]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="serialization")
    _mark_nullable(raw)
    schema = _to_structural(raw, raw.get("$defs", {}))
    _default_nested_objects(schema)
    _drop_marks(schema)
    return schema


def crd(resource: ResourceInfo) -> dict[str, Any]:
    """The CustomResourceDefinition object of one resource."""
    root: dict[str, Any] = {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": model_schema(resource.spec_model),
            "status": model_schema(resource.status_model),
        },
    }
    if resource.root_validations:
        root[_VALIDATIONS] = list(resource.root_validations)
    columns = []
    for column in resource.printer_columns:
        entry: dict[str, Any] = {"name": column.name, "type": column.type, "jsonPath": column.json_path}
        if column.description:
            entry["description"] = column.description
        if column.priority:
            entry["priority"] = column.priority
        columns.append(entry)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name,
            "labels": {"app.kubernetes.io/name": "moeops", "app.kubernetes.io/part-of": "moeops"},
        },
        "spec": {
            "group": resource.group,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": list(resource.categories),
            },
            "versions": [
                {
                    "name": resource.version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def _peering_crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    """kopf's peering resources: how several operator replicas agree which one is active."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev", "labels": {"app.kubernetes.io/part-of": "moeops"}},
        "spec": {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Liveness records of kopf operator replicas (peering).",
                            "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }


def render(objects: Iterable[dict[str, Any]]) -> str:
    docs = [yaml.safe_dump(obj, sort_keys=False, width=120, allow_unicode=True) for obj in objects]
    return HEADER + "---\n".join(docs)


def manifests() -> dict[str, str]:
    """File name → YAML text of every CRD moeops installs."""
    files = {f"{r.group}_{r.plural}.yaml": render([crd(r)]) for r in RESOURCES}
    files["kopf.dev_peerings.yaml"] = render(
        [
            _peering_crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
            _peering_crd("KopfPeering", "kopfpeerings", "Namespaced"),
        ]
    )
    return files


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in manifests().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Names of generated files that are missing or differ from what the models generate."""
    return [
        name
        for name, text in manifests().items()
        if not (directory / name).exists() or (directory / name).read_text(encoding="utf-8") != text
    ]
