"""Pure child builders: a spec in, the desired objects out, checked without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moeops.api.v1alpha1 import InferenceServiceSpec, MoETrainingJobSpec
from moeops.api.v1alpha1.common import VolumeLocation
from moeops.operator.children.serving import desired_replicas, resolve_model, serving_children
from moeops.operator.children.training import desired_suspend, training_children
from moeops.operator.config import OperatorConfig
from moeops.operator.errors import InvalidSpec, ModelNotReady
from moeops.operator.naming import Owner
from moeops.operator.planning import plan_training_job

OWNER = Owner("moeops.dev/v1alpha1", "MoETrainingJob", "demo", "ml", "uid-1", 1)
CFG = OperatorConfig()


def job_spec(**overrides: dict[str, Any]) -> MoETrainingJobSpec:
    spec = {
        "model": {"preset": "moe-debug"},
        "data": {"source": "synthetic://x"},
        "training": {"steps": 10, "globalBatchSize": 64},
        "workers": {"replicas": 4, "gpusPerWorker": 8},
    }
    spec.update(overrides)
    return MoETrainingJobSpec.model_validate(spec)


def build(spec: MoETrainingJobSpec) -> dict[str, dict[str, Any]]:
    arch, plan = plan_training_job(spec)
    return {c.kind: c.body for c in training_children(OWNER, spec, arch, plan, CFG)}


def test_training_children_are_configmap_service_job_owned_by_the_cr() -> None:
    children = build(job_spec())
    assert list(children) == ["ConfigMap", "Service", "Job"]
    for body in children.values():
        assert body["metadata"]["ownerReferences"] == [OWNER.reference()]
        assert body["metadata"]["labels"]["moeops.dev/training-job"] == "demo"


def test_job_is_indexed_with_one_pod_per_worker_and_gpus_per_pod() -> None:
    job = build(job_spec())["Job"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 4
    container = job["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e for e in container["env"]}
    assert env["MOEOPS_NPROC_PER_NODE"]["value"] == "8"
    assert "job-completion-index" in env["MOEOPS_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    pod = build(job_spec())["Job"]["spec"]["template"]["spec"]
    assert (
        pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    allowed = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected", "downwardAPI"}
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= allowed


def test_config_map_holds_the_resolved_config_and_plan() -> None:
    config = json.loads(build(job_spec())["ConfigMap"]["data"]["config.json"])
    assert config["architecture"]["experts"] == 4 and config["plan"]["data"] == 32
    assert config["world"] == {"nnodes": 4, "nprocPerNode": 8, "rendezvousPort": 29500}


def test_run_policy_and_scheduling_pass_through() -> None:
    spec = job_spec(
        runPolicy={"backoffLimit": 7, "activeDeadlineSeconds": 3600, "suspend": True},
        scheduling={"priorityClassName": "high", "gang": True, "schedulerName": "volcano"},
    )
    job = build(spec)["Job"]
    # runPolicy.backoffLimit counts the operator's group restarts: the Job itself fails at the first pod failure.
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["suspend"] is True
    pod = job["spec"]["template"]
    assert pod["spec"]["priorityClassName"] == "high" and pod["spec"]["schedulerName"] == "volcano"
    assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "demo"


def test_suspend_is_left_to_kueue_for_queued_jobs() -> None:
    assert desired_suspend(job_spec()) is False
    assert desired_suspend(job_spec(runPolicy={"suspend": True})) is True
    queued = job_spec(scheduling={"queueName": "team-a"})
    assert desired_suspend(queued) is None
    job = next(c for c in training_children(OWNER, queued, *plan_training_job(queued), CFG) if c.kind == "Job")
    assert job.body["spec"]["suspend"] is True  # created suspended for Kueue to admit
    assert "suspend" not in job.managed["spec"]  # and never forced afterwards
    assert job.body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_children_are_a_pure_function_of_the_spec() -> None:
    assert build(job_spec()) == build(job_spec())


ISVC_OWNER = Owner("moeops.dev/v1alpha1", "InferenceService", "chat", "ml", "uid-2", 1)


def isvc_spec(**overrides: dict[str, Any]) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": {"checkpoint": {"claimName": "m", "path": "/x"}}, **overrides})


def test_serving_children_and_stop() -> None:
    spec = isvc_spec(replicas={"min": 0, "max": 3})
    location = resolve_model(spec, None)
    service, deployment = serving_children(ISVC_OWNER, spec, location, False, CFG)
    assert deployment.body["spec"]["replicas"] == 1  # min 0 serves until the autoscaler has decided
    assert desired_replicas(spec, stopped=True) == 0
    container = deployment.body["spec"]["template"]["spec"]["containers"][0]
    config = json.loads(next(e["value"] for e in container["env"] if e["name"] == "MOEOPS_SERVING_CONFIG"))
    assert config["modelDir"] == "/models" and config["earlyExit"]["threshold"] == 0.9
    assert service.body["spec"]["selector"] == {"moeops.dev/inference-service": "chat"}


def test_model_resolution_from_a_training_job() -> None:
    spec = isvc_spec(model={"trainingJobRef": {"name": "t"}})
    with pytest.raises(ModelNotReady, match="not found"):
        resolve_model(spec, None)
    job: dict[str, Any] = {"spec": {"checkpoint": {"storage": {"claimName": "ckpt", "path": "/t"}}}, "status": {}}
    with pytest.raises(ModelNotReady, match="no checkpoint yet"):
        resolve_model(spec, job)
    job["status"] = {"checkpoint": {"lastStep": 100, "location": "pvc://ckpt/t/step-100"}}
    assert resolve_model(spec, job) == VolumeLocation(claim_name="ckpt", path="/t")
    with pytest.raises(InvalidSpec, match="ephemeral"):
        resolve_model(spec, {"spec": {"checkpoint": {"storage": {"path": "/"}}}, "status": job["status"]})


def test_workers_get_the_bus_whenever_the_operator_has_one() -> None:
    """Rank 0 reports the job's progress over it; whether the ranks rebalance is the config's `rebalance`."""

    def worker_env(spec: MoETrainingJobSpec, cfg: OperatorConfig) -> dict[str, dict[str, Any]]:
        arch, plan = plan_training_job(spec)
        job = next(c.body for c in training_children(OWNER, spec, arch, plan, cfg) if c.kind == "Job")
        return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}

    bus = OperatorConfig(nats_url="nats://nats.moeops:4222", nats_token_secret="moeops-nats")
    env = worker_env(job_spec(), bus)
    assert env["MOEOPS_NATS_URL"]["value"] == "nats://nats.moeops:4222"
    assert env["MOEOPS_NATS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "moeops-nats", "key": "token"}
    no_rebalancing = job_spec(rebalance={"enabled": False})
    assert worker_env(no_rebalancing, bus)["MOEOPS_NATS_URL"]["value"] == "nats://nats.moeops:4222"
    config = json.loads(build(no_rebalancing)["ConfigMap"]["data"]["config.json"])
    assert config["rebalance"]["enabled"] is False  # the trainer publishes no metrics and follows no plans
    assert "MOEOPS_NATS_URL" not in worker_env(job_spec(), CFG)
    assert OperatorConfig.from_env({"MOEOPS_NATS_URL": "nats://a:4222"}).nats_url == "nats://a:4222"
    assert OperatorConfig.from_env({"MOEOPS_PROGRESS_INTERVAL_S": "1.5"}).progress_interval_s == 1.5


def test_carbon_reaches_the_workers_config_without_a_pue() -> None:
    config = json.loads(build(job_spec(carbon={"enabled": False, "region": "DE"}))["ConfigMap"]["data"]["config.json"])
    gate_defaults = {"hysteresis": 20.0, "minDwellSeconds": 1800, "onFeedLoss": "run"}
    assert config["carbon"] == {
        "enabled": False,
        "region": "DE",
        **gate_defaults,
    }  # the launcher's meter reads `enabled`
    with pytest.raises(ValueError, match="pue"):  # the data centre's, set on the aggregator: not a job field
        job_spec(carbon={"pue": 1.2})


def test_the_jobs_own_env_reaches_the_workers_after_the_operators() -> None:
    fault = {"name": "MOEOPS_FAULT_SEQUENCE_DELAY", "value": "1:0.05"}
    spec = job_spec(workers={"replicas": 2, "gpusPerWorker": 0, "env": [fault, {"name": "OMP_NUM_THREADS"}]})
    env = build(spec)["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[-2:] == [fault, {"name": "OMP_NUM_THREADS", "value": ""}]
    names = [e["name"] for e in env]
    assert names.index("MOEOPS_NODE_RANK") < names.index("MOEOPS_FAULT_SEQUENCE_DELAY")
    assert len(names) == len(set(names))
    without = build(job_spec())["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in without] == names[:-2]


def test_the_rendezvous_port_comes_from_the_operators_environment() -> None:
    cfg = OperatorConfig.from_env({"MOEOPS_RENDEZVOUS_PORT": "41234"})
    arch, plan = plan_training_job(job_spec())
    children = {c.kind: c.body for c in training_children(OWNER, job_spec(), arch, plan, cfg)}
    container = children["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in container["env"]}["MASTER_PORT"] == "41234"
    assert container["ports"] == [{"name": "rendezvous", "containerPort": 41234}]
    assert children["Service"]["spec"]["ports"][0]["port"] == 41234
    assert OperatorConfig.from_env({}).rendezvous_port == 29500


def test_workers_and_servers_use_the_cpus_they_asked_for() -> None:
    """OMP_NUM_THREADS follows the container's CPU limit, else its request (Downward API), else is not set."""
    from moeops.api.v1alpha1.common import ResourceRequirements
    from moeops.operator.children.pods import cpu_threads_env

    asked = ResourceRequirements(requests={"cpu": "1"}, limits={"cpu": "2500m", "memory": "4Gi"})
    (threads,) = cpu_threads_env("trainer", asked)
    assert threads["valueFrom"]["resourceFieldRef"] == {"containerName": "trainer", "resource": "limits.cpu",
                                                        "divisor": "1"}  # fmt: skip
    only_request = cpu_threads_env("server", ResourceRequirements(requests={"cpu": "1"}))
    assert only_request[0]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert cpu_threads_env("server", ResourceRequirements(limits={"memory": "1Gi"})) == []
    assert cpu_threads_env("server", None) == []


def test_an_edit_of_the_deadline_reaches_the_running_job() -> None:
    """runPolicy.activeDeadlineSeconds is a managed field of the Job: set, changed and removed by drift patches."""
    from moeops.operator.drift import drift_patch

    def managed(run_policy: dict[str, Any]) -> dict[str, Any]:
        spec = job_spec(runPolicy=run_policy)
        job = next(c for c in training_children(OWNER, spec, *plan_training_job(spec), CFG) if c.kind == "Job")
        return job.managed

    live = {"metadata": {"labels": {}}, "spec": {"suspend": False, "activeDeadlineSeconds": 3600}}
    assert drift_patch(managed({"activeDeadlineSeconds": 7200}), live)["spec"] == {"activeDeadlineSeconds": 7200}
    assert drift_patch(managed({"activeDeadlineSeconds": 3600}), live).get("spec") is None
    assert drift_patch(managed({}), live)["spec"] == {"activeDeadlineSeconds": None}  # merge-patch null: removed
