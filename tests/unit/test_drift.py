"""Create-or-patch, the pure half."""

from __future__ import annotations

from moeops.operator.drift import controlled_by, drift_patch, is_subset


def test_server_defaults_are_not_drift() -> None:
    live = {"spec": {"suspend": False, "completions": 2, "template": {"spec": {"dnsPolicy": "ClusterFirst"}}}}
    assert drift_patch({"spec": {"suspend": False}}, live) == {}


def test_changed_scalars_and_lists_are_patched_minimally() -> None:
    live = {
        "metadata": {"labels": {"a": "1", "b": "2"}},
        "spec": {"suspend": False, "ports": [{"port": 1, "protocol": "TCP"}]},
    }
    desired = {"metadata": {"labels": {"a": "1"}}, "spec": {"suspend": True, "ports": [{"port": 2}]}}
    assert drift_patch(desired, live) == {"spec": {"suspend": True, "ports": [{"port": 2}]}}


def test_list_elements_may_carry_defaults() -> None:
    assert is_subset([{"port": 1}], [{"port": 1, "protocol": "TCP"}])
    assert not is_subset([{"port": 1}], [{"port": 1}, {"port": 2}])


def test_only_our_own_objects_are_patched() -> None:
    ours = {"metadata": {"ownerReferences": [{"uid": "u1", "controller": True}]}}
    assert controlled_by(ours, "u1") and not controlled_by(ours, "u2")
    assert not controlled_by({"metadata": {"ownerReferences": [{"uid": "u1"}]}}, "u1")
    assert not controlled_by({"metadata": {}}, "u1")
