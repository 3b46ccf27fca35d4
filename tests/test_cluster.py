"""The multi-node proof, on one host: a real two-node Ray cluster with token authentication, a real MLflow
tracking server and an S3-compatible object store (moto), all on loopback; `supuq sweep --address` joins the
cluster from a separate driver process, exactly as on a real cluster.

- Both nodes run a trial, every trial is a child run on the server (tagged with the Ray node id that ran
  it: both nodes share one IP here, so only the node id tells them apart), the best config is written, and
  Ray's experiment state and trial checkpoints land in the bucket.
- Killing the worker node's raylet during a trial: the trial is retried on the head node (max_failures 2)
  and the sweep completes with every trial FINISHED in MLflow.
- A driver with a wrong token is refused with a one-line token error.
- The shipped recipes under cluster/ pass Ray's own launcher validation, carry the fields KubeRay needs,
  and the MLflow server manifests carry a PostgreSQL backend and `--allowed-hosts` with the service names.

Isolation: the cluster has its own --temp-dir and its own ports (so it never touches the test session's
local Ray or anyone else's Ray on the machine), and the sweep driver is a subprocess (so it cannot collide
with this pytest process's own Ray session). Cleanup stops only what this module started: the process groups
of `ray start`, the MLflow server and moto, and every process whose environment carries this module's
random Ray token (Ray workers put themselves in their own process groups). `ray stop` is never used: it
kills every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from supuq import tracking
from supuq.config import validate_config

from .conftest import ROOT, TINY_OVERRIDES
from .processes import free_port, kill_processes_with_env
from .sweep.test_driver import full_length_best, trial_config

CLUSTER = ROOT / "cluster"
BUCKET = "supuq-test"
PREFIX = "sweeps"
GIB = 1024**3


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # the server answers (moto gives 4xx/5xx on bare GETs of some paths)
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {log.read_text()[-2000:]}")


def stop_group(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM then SIGKILL to the process group of `proc` (started with start_new_session)."""
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue


def raylet_of(pgid: int) -> tuple[int, str] | None:
    """(pid, node id) of the raylet in process group `pgid`, from its command line."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().decode(errors="replace").split("\0")
        except (OSError, ProcessLookupError):
            continue
        if args and args[0].endswith("/raylet"):
            node = next((a.split("=", 1)[1] for a in args if a.startswith("--node_id=")), "")
            return int(entry), node
    return None


@dataclass
class Stack:
    """What the module fixture started: servers, the two Ray nodes, and the environment every process of this
    cluster (nodes, drivers) shares."""

    work: Path
    env: dict[str, str]
    token: str
    address: str
    tracking_uri: str
    s3_endpoint: str
    head: dict = field(default_factory=dict)    # pgid, raylet pid, node id
    worker: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def ray_start(args: list[str], env: dict, log: Path, timeout: float = 120) -> subprocess.Popen:
    """Run `ray start ...` in its own session (its daemons inherit the process group) and wait for it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=timeout)  # a joining node whose head is unreachable retries forever
    except subprocess.TimeoutExpired:
        stop_group(proc)
        raise RuntimeError(f"ray start timed out: {log.read_text()[-3000:]}")
    if proc.returncode != 0:
        raise RuntimeError(f"ray start failed ({proc.returncode}): {log.read_text()[-3000:]}")
    return proc


def node_ports() -> list[str]:
    """Ports a second node on the same host would otherwise take from the first (or from other Rays)."""
    ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
    # Worker ports 0: random, as a local ray.init() does (the default 10002-19999 pool is per raylet, so two
    # raylets on one host could hand out the same port).
    return [x for flag in ports for x in (flag, str(free_port()))] + [
        "--metrics-export-port", "0", "--min-worker-port", "0", "--max-worker-port", "0"]


@pytest.fixture(scope="module")
def stack():
    """MLflow server (sqlite + local artifacts), moto S3 with a bucket, and a two-node Ray cluster with token auth
    (1 CPU each), all on 127.0.0.1. Everything is stopped at the end, also when a test fails."""
    work = Path(tempfile.mkdtemp(prefix="supuq-cluster-"))  # short: Ray's socket paths live under it
    token = secrets.token_hex(32)
    s3_port, mlflow_port, gcs_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}", AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
        # Tell node death within ~3 s instead of ~15 s (GCS health checks of the raylets).
        RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
    )
    started = time.monotonic()
    procs: dict[str, subprocess.Popen] = {}
    stack = Stack(work, env, token, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{mlflow_port}",
                  f"http://127.0.0.1:{s3_port}")
    try:
        # Servers first, without waiting: they boot while the Ray nodes start.
        server_env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        with open(work / "moto.log", "wb") as log:
            procs["moto"] = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                                             env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        # With cluster/mlflow/k8s.yaml's --allowed-hosts: the sweeps below reach it as 127.0.0.1:PORT, and
        # test_k8s_allowed_hosts_... checks the in-cluster names against it.
        procs["mlflow"] = tracking.serve_ui(f"sqlite:///{work}/mlflow/mlflow.db", port=mlflow_port, wait=False,
                                            log_path=work / "mlflow.log", allowed_hosts=k8s_allowed_hosts())
        common = ["--num-cpus", "1", "--num-gpus", "0", "--memory", str(3 * GIB), "--object-store-memory",
                  str(200 * 1024**2), "--temp-dir", str(work / "ray"), "--disable-usage-stats"]
        t0 = time.monotonic()
        procs["head"] = ray_start(["--head", "--port", str(gcs_port), "--include-dashboard=false", *common,
                                   *node_ports()], env, work / "ray-head.log")
        stack.timings["head_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        procs["worker"] = ray_start(["--address", stack.address, *common, *node_ports()], env, work / "ray-worker.log")
        stack.timings["worker_s"] = time.monotonic() - t0
        for role in ("head", "worker"):
            raylet = raylet_of(procs[role].pid)
            assert raylet is not None, f"no raylet in the {role}'s process group"
            getattr(stack, role).update(pgid=procs[role].pid, raylet=raylet[0], node_id=raylet[1])
        wait_http(f"http://127.0.0.1:{s3_port}/", procs["moto"], 60, work / "moto.log")
        stack.s3().create_bucket(Bucket=BUCKET)
        tracking.wait_for_health(f"{stack.tracking_uri}/health", timeout=90, proc=procs["mlflow"])
        stack.timings["stack_s"] = time.monotonic() - started
        yield stack
    finally:
        for role in ("worker", "head"):
            stop_group(procs.get(role), timeout=5)
        # Ray workers (trial actors) run in process groups of their own; they carry this module's token.
        kill_processes_with_env(f"RAY_AUTH_TOKEN={token}".encode(), timeout=3)
        if procs.get("mlflow"):
            tracking.stop_server(procs["mlflow"])
        stop_group(procs.get("moto"), timeout=5)
        shutil.rmtree(work, ignore_errors=True)


def write_space(folder: Path, scheduler: dict) -> Path:
    space = {
        "metric": "val/ged", "mode": "min", "num_samples": 2, "max_concurrent": 2, "max_failures": 2, "seed": 0,
        "scheduler": scheduler, "resources": {"cpu": 1, "gpu": 0},
        "space": {"loss.beta": {"loguniform": [0.1, 10.0]}, "loss.gamma": {"loguniform": [1.0, 100.0]},
                  "optim.lr": {"loguniform": [1e-4, 3e-3]}},
    }
    path = folder / f"space-{scheduler['type']}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def sweep_command(stack: Stack, name: str, space: Path, overrides: list[str]) -> list[str]:
    sets = [x for o in [*TINY_OVERRIDES, *overrides] for x in ("--set", o)]
    return [sys.executable, "-m", "supuq.cli", "sweep", "--dataset", "synthetic",
            "--config", str(ROOT / "configs/synthetic.yaml"), "--space", str(space),
            "--address", stack.address, "--storage", f"s3://{BUCKET}/{PREFIX}",
            "--tracking-uri", stack.tracking_uri, "--name", name, "--cpus-per-trial", "1", *sets]


def start_driver(stack: Stack, command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=stack.work, env=env or stack.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        pytest.fail(f"sweep driver timed out after {timeout:.0f} s: {log.read_text()[-4000:]}")
    finally:
        stop_group(proc, timeout=5)  # anything the driver left in its group
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def sweep_runs(stack: Stack, name: str):
    parents = tracking.search_runs(stack.tracking_uri, None, f"attributes.run_name = '{name}'")
    assert len(parents) == 1, [p.info.run_name for p in parents]
    return parents[0], tracking.child_runs(stack.tracking_uri, parents[0].info.run_id)


def test_sweep_spans_both_nodes_with_s3_storage_and_mlflow_server(stack):
    space = write_space(stack.work, {"type": "asha", "grace_period": 1, "reduction_factor": 2})
    log = stack.work / "sweep-two-nodes.log"
    started = time.monotonic()
    proc = start_driver(stack, sweep_command(stack, "two-nodes", space, []), log)
    output = finish(proc, log, timeout=240)
    stack.timings["sweep_s"] = time.monotonic() - started

    parent, runs = sweep_runs(stack, "two-nodes")
    assert parent.info.status == "FINISHED" and parent.data.tags["supuq.complete"] == "true"
    assert len(runs) == 2, output[-3000:]
    for run in runs:
        assert run.info.status in ("FINISHED", "KILLED"), (run.info.status, run.data.tags.get("supuq.stop_reason"))
        assert "val/ged" in run.data.metrics and "train/total" in run.data.metrics
    nodes = {run.data.tags["supuq.node_id"] for run in runs}
    assert nodes == {stack.head["node_id"], stack.worker["node_id"]}, (nodes, stack.head, stack.worker)

    # The best config: a tag on the parent run, an artifact, and best.yaml beside Ray's state in the bucket, all
    # of the one trial that ran every epoch with the lowest final val/ged (computed here from the server's runs).
    best_run = full_length_best(stack.tracking_uri, parent.info.run_id, epochs=2)
    assert parent.data.tags["supuq.best_trial"] == best_run.data.tags["supuq.trial_id"]
    assert parent.data.tags["supuq.best_run"] == best_run.info.run_id
    assert parent.data.tags["supuq.sweep_path"] == f"s3://{BUCKET}/{PREFIX}/two-nodes"
    keys = stack.keys(f"{PREFIX}/two-nodes/")
    assert f"{PREFIX}/two-nodes/best.yaml" in keys and f"{PREFIX}/two-nodes/supuq_sweep.json" in keys
    best = yaml.safe_load(stack.s3().get_object(Bucket=BUCKET, Key=f"{PREFIX}/two-nodes/best.yaml")["Body"].read())
    assert best["data"]["dataset"] == "synthetic"
    assert validate_config(best) == trial_config(best_run)
    assert any(k.endswith("tuner.pkl") or "experiment_state" in k for k in keys), keys
    checkpoints = [k for k in keys if re.search(r"/checkpoint_\d+/", k)]
    trial_dirs = {k.split("/")[2] for k in checkpoints}
    assert len(trial_dirs) == 2, keys  # both trials (one per node) uploaded checkpoints to S3
    assert any(k.endswith(".pt") for k in checkpoints), checkpoints

    # Resuming a finished sweep from S3 (Tuner.restore through the custom S3 filesystem) runs nothing again.
    resumed = subprocess.run(
        [sys.executable, "-m", "supuq.cli", "sweep", "--resume", "two-nodes", "--address", stack.address,
         "--storage", f"s3://{BUCKET}/{PREFIX}"], cwd=stack.work, env=stack.env, capture_output=True, text=True,
        timeout=180, start_new_session=True,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert len(sweep_runs(stack, "two-nodes")[1]) == 2


def test_trial_survives_the_loss_of_the_worker_node(stack):
    """SIGKILL of the worker raylet while a trial runs there: Tune sees the actor die, retries the trial
    (max_failures 2) from its last checkpoint in S3 on the only node left, and the sweep completes."""
    space = write_space(stack.work, {"type": "none"})
    # Long enough that the kill lands mid-trial (the tiny trials of the first test take ~1 s per epoch).
    overrides = ["train.epochs=12", "data.synthetic.n=96"]
    log = stack.work / "sweep-fault.log"
    started = time.monotonic()
    proc = start_driver(stack, sweep_command(stack, "fault", space, overrides), log)
    try:
        victim, deadline = None, time.monotonic() + 150
        client = tracking.client_for(stack.tracking_uri)
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            parents = tracking.search_runs(stack.tracking_uri, None, "attributes.run_name = 'fault'")
            if not parents:
                continue
            for run in tracking.child_runs(stack.tracking_uri, parents[0].info.run_id):
                # on the worker node, running, with a checkpoint in S3 (so the retry can resume from it)
                if run.data.tags.get("supuq.node_id") == stack.worker["node_id"] and run.info.status == "RUNNING":
                    trial_id = run.data.tags["supuq.trial_id"]
                    if any(trial_id in key.split("/")[2] and re.search(r"/checkpoint_\d+/", key)
                           for key in stack.keys(f"{PREFIX}/fault/")):
                        victim = run
        assert victim is not None, "no trial reached the worker node: " + log.read_text()[-3000:]
        killed_at = time.monotonic()
        os.kill(stack.worker["raylet"], signal.SIGKILL)
        stack.timings["val_steps_before_kill"] = len(client.get_metric_history(victim.info.run_id, "val/ged"))
    except BaseException:
        stop_group(proc)
        raise
    output = finish(proc, log, timeout=300)
    stack.timings["fault_sweep_s"] = time.monotonic() - started
    stack.timings["recovery_s"] = time.monotonic() - killed_at

    parent, runs = sweep_runs(stack, "fault")
    assert parent.data.tags["supuq.complete"] == "true", output[-3000:]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), \
        [(r.info.run_name, r.info.status, r.data.tags.get("supuq.stop_reason")) for r in runs]
    retried = next(r for r in runs if r.info.run_id == victim.info.run_id)
    steps = [m.step for m in tracking.client_for(stack.tracking_uri).get_metric_history(retried.info.run_id, "val/ged")]
    stack.timings["retried_val_steps"] = sorted(steps)
    # its last attempt ran on the head
    assert retried.data.tags["supuq.node_id"] == stack.head["node_id"], (steps, output[-5000:])
    assert set(steps) == set(range(1, 13)), steps
    # The retry resumed from the checkpoint in S3 rather than from scratch: epoch 1 was validated only once.
    assert steps.count(1) == 1, steps
    assert any(re.search(r"/checkpoint_\d+/", k) for k in stack.keys(f"{PREFIX}/fault/"))
    print("timings:", json.dumps(stack.timings))


def test_gpu_sweep_waits_for_a_gpu_node_to_join(stack):
    """An autoscaling cluster can start with no GPU node: with --wait-for-resources the driver asks the autoscaler
    (none here) and waits; a node with a GPU joins meanwhile and the trial runs there. (The node's GPU is a
    logical resource: torch sees no CUDA device and the trial trains on its CPU.)"""
    space = write_space(stack.work, {"type": "none"})
    log = stack.work / "sweep-wait-gpu.log"
    command = sweep_command(stack, "wait-gpu", space, []) + [
        "--samples", "1", "--concurrent", "1", "--gpus-per-trial", "1", "--wait-for-resources", "150"]
    proc = start_driver(stack, command, log)
    gpu_node = None
    try:
        deadline = time.monotonic() + 120
        while "waiting up to 150 s" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "asks for 1 GPU but the Ray cluster has 0" in log.read_text(), log.read_text()[-3000:]
        gpu_node = ray_start(["--address", stack.address, "--num-cpus", "1", "--num-gpus", "1", "--memory",
                              str(3 * GIB), "--object-store-memory", str(200 * 1024**2), "--temp-dir",
                              str(stack.work / "ray"), "--disable-usage-stats", *node_ports()], stack.env,
                             stack.work / "ray-gpu.log")
        raylet = raylet_of(gpu_node.pid)
        assert raylet is not None
        finish(proc, log, timeout=240)
    finally:
        stop_group(proc, timeout=5)
        stop_group(gpu_node, timeout=5)
    parent, runs = sweep_runs(stack, "wait-gpu")
    assert parent.data.tags["supuq.complete"] == "true"
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["supuq.node_id"] == raylet[1]


def test_driver_with_a_wrong_token_is_refused(stack):
    space = write_space(stack.work, {"type": "none"})
    # Ray retries the GCS connection 20 times, 1 s apart, even for a wrong token: 2 are enough here.
    env = {**stack.env, "RAY_AUTH_TOKEN": "0" * 64, "RAY_NUM_REDIS_GET_RETRIES": "2"}
    result = subprocess.run(sweep_command(stack, "wrong-token", space, []), cwd=stack.work, env=env,
                            capture_output=True, text=True, timeout=180, start_new_session=True)
    text = result.stdout + result.stderr
    assert result.returncode == 2, text[-3000:]
    assert "authentication token missing or wrong" in text and "RAY_AUTH_MODE=token" in text
    assert "Traceback" not in text


# ----------------------------------------------------------------------------------------------- recipes


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "onprem.yaml"])
def test_launcher_configs_pass_ray_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load_yaml(CLUSTER / "launcher" / name)
    validate_config(prepare_config(raw))
    commands = " ".join(raw.get("setup_commands", []) + raw.get("head_setup_commands", []))
    assert "supuq" in commands and "torch" in commands
    starts = " ".join(raw["head_start_ray_commands"] + raw["worker_start_ray_commands"])
    # Every node starts Ray with token auth (the variable set on the `ray start` command itself), with the token
    # file every node gets from file_mounts.
    ray_starts = [c for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"] if "ray start" in c]
    assert len(ray_starts) == 2, ray_starts  # one for the head, one for the workers
    for command in ray_starts:
        assert re.search(r"RAY_AUTH_MODE=token\s+\S*ray start", command), command
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "--dashboard-host=0.0.0.0" not in starts  # the dashboard is never exposed
    assert "--dashboard-host=127.0.0.1" in " ".join(raw["head_start_ray_commands"])


def test_aws_launcher_has_an_autoscaling_gpu_worker_and_s3():
    raw = load_yaml(CLUSTER / "launcher" / "aws-gpu.yaml")
    assert raw["provider"]["type"] == "aws"
    workers = [t for n, t in raw["available_node_types"].items() if n != raw["head_node_type"]]
    gpu = [t for t in workers if str(t["node_config"]["InstanceType"]).startswith(("g5", "g6", "p4", "p5"))]
    assert gpu and gpu[0]["max_workers"] > gpu[0]["min_workers"]
    assert "s3://" in json.dumps(raw)
    # torch from PyTorch's CUDA 12 wheel index (the g5/g6 drivers), not the CPU wheel of the package index
    (torch_install,) = [c for c in raw["setup_commands"] if re.search(r"pip install .*\btorch\b", c)]
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cu12\d+\b", torch_install), torch_install


def test_onprem_launcher_lists_its_hosts():
    raw = load_yaml(CLUSTER / "launcher" / "onprem.yaml")
    assert raw["provider"]["type"] == "local" and raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]


def _containers(pod_template: dict) -> list[dict]:
    containers = pod_template["spec"]["containers"]
    assert containers and all(c.get("image") for c in containers)
    return containers


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_kuberay_raycluster_has_required_fields_gpu_limits_and_token_auth():
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "raycluster.yaml").read_text()) if d]
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    spec = cluster["spec"]
    check_ray_cluster_spec(spec)
    # token auth from a Secret on every Ray container; the dashboard stays on the pod's loopback
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
        for container in _containers(template):
            env = _env(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"


def check_ray_cluster_spec(spec: dict) -> None:
    """The fields KubeRay requires of a RayCluster spec, plus GPU limits on every worker group."""
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    _containers(head["template"])
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = _containers(group["template"])[0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_kuberay_rayjob_runs_the_sweep():
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "rayjob-sweep.yaml").read_text()) if d]
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    entry = job["spec"]["entrypoint"]
    assert "supuq sweep" in entry and "--address auto" in entry and "--storage s3://" in entry
    assert "--tracking-uri http://mlflow.mlflow.svc.cluster.local:5000" in entry
    # The job brings its own cluster and deletes it at the end (not a clusterSelector of a standing cluster)
    assert "clusterSelector" not in job["spec"] and job["spec"]["shutdownAfterJobFinishes"] is True
    spec = job["spec"]["rayClusterSpec"]
    check_ray_cluster_spec(spec)
    # The operator manages the token (it must call the dashboard itself); the dashboard listens on the pod
    # network only behind a NetworkPolicy and a ClusterIP Service.
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["metadata"]["namespace"] == job["metadata"]["namespace"] and policy["spec"]["ingress"]


def test_slurm_script_is_valid_bash():
    script = CLUSTER / "slurm" / "sweep.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH" in text and "srun" in text and "supuq sweep" in text


# Stand-ins for what the Slurm script calls, so that it runs here as on an allocation: srun runs its step on
# this host; `ray start --block` is a node that records its start and the TERM that stops it; `ray stop` does
# what the real one does (stops every Ray node on the machine, other jobs' too); the venv's python counts the
# live nodes for the script's wait loop; supuq records how it was called and then succeeds, fails or hangs.
_SLURM_SHIMS = {
    "bin/srun": """#!/bin/bash
while [ $# -gt 0 ]; do
    case "$1" in -w|--nodelist) shift 2 ;; -*) shift ;; *) break ;; esac
done
exec "$@"
""",
    "bin/scontrol": """#!/bin/bash
[ "$1 $2" = "show hostnames" ] && printf '%s\\n' $FAKE_NODES
""",
    "bin/hostname": """#!/bin/bash
echo 127.0.0.1
""",
    "venv/bin/ray": """#!/bin/bash
echo "$$ $*" >> "$FAKE_LOG/ray.calls"
case "$1" in
    start)
        trap 'echo $$ >> "$FAKE_LOG/ray.stopped"; exit 0' TERM
        echo $$ >> "$FAKE_LOG/ray.nodes"; echo $$ >> "$FAKE_MACHINE/ray.nodes"
        while true; do sleep 0.05; done ;;
    stop)
        for pid in $(cat "$FAKE_MACHINE/ray.nodes"); do kill -TERM "$pid" 2>/dev/null; done ;;
esac
""",
    "venv/bin/python": """#!/bin/bash
if [ "$1" = "-c" ]; then exec "$REAL_PYTHON" "$@"; fi
cat > /dev/null
sleep 0.3
alive=0
for pid in $(cat "$FAKE_LOG/ray.nodes" 2>/dev/null); do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
echo $alive
""",
    "venv/bin/supuq": """#!/bin/bash
printf '%s\\n' "$$" "$RAY_AUTH_MODE" "$RAY_AUTH_TOKEN" "$@" > "$FAKE_LOG/supuq.call"
case "$FAKE_SUPUQ" in fail) exit 3 ;; hang) exec sleep 120 ;; esac
""",
}


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("outcome, exit_code", [("ok", 0), ("fail", 3), ("scancel", 143)])
def test_slurm_script_stops_its_own_ray_nodes_and_never_other_rays(tmp_path, outcome, exit_code):
    """Run cluster/slurm/sweep.sbatch on a 3-node "allocation" next to another job's Ray node: it starts a head
    and two workers with one token, runs `supuq sweep --address HEAD:PORT`, and whether the sweep succeeds, fails
    or the job is cancelled (SIGTERM), stops exactly its own three nodes and removes its temp dir; the other
    job's node keeps running (the script never calls `ray stop`)."""
    for name, text in _SLURM_SHIMS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    job_log, machine, other_log = tmp_path / "job", tmp_path / "machine", tmp_path / "other-job"
    for folder in (job_log, machine, other_log):
        folder.mkdir()
    job_id = 900_000_000 + secrets.randbelow(99_999_999)
    ray_tmp = Path(f"/tmp/ray-{job_id}")
    ray_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_", "SUPUQ_"))}
    env.update(PATH=f"{tmp_path / 'bin'}:{env['PATH']}", REAL_PYTHON=sys.executable, FAKE_MACHINE=str(machine),
               FAKE_NODES="node1 node2 node3", FAKE_SUPUQ="hang" if outcome == "scancel" else outcome,
               SLURM_JOB_ID=str(job_id), SLURM_JOB_NODELIST="node[1-3]", SLURM_CPUS_PER_TASK="4",
               SUPUQ_VENV=str(tmp_path / "venv"), SUPUQ_STORAGE="/shared/supuq/ray_results",
               MLFLOW_TRACKING_URI="http://mlflow.test:5000")
    other = subprocess.Popen([str(tmp_path / "venv/bin/ray"), "start", "--block"], env={**env, "FAKE_LOG": str(other_log)},
                             start_new_session=True)
    job = None
    try:
        deadline = time.monotonic() + 10
        while not _lines(other_log / "ray.nodes") and time.monotonic() < deadline:
            time.sleep(0.05)
        job = subprocess.Popen(["bash", str(CLUSTER / "slurm" / "sweep.sbatch"), "--dataset", "lidc", "--samples", "4"],
                               env={**env, "FAKE_LOG": str(job_log)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
        if outcome == "scancel":  # Slurm signals the batch step: the script and the driver it runs
            deadline = time.monotonic() + 60
            while not (job_log / "supuq.call").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            driver = int(_lines(job_log / "supuq.call")[0])
            job.send_signal(signal.SIGTERM)
            os.kill(driver, signal.SIGTERM)
        output, _ = job.communicate(timeout=120)
        assert job.returncode == exit_code, output

        call = (job_log / "supuq.call").read_text().splitlines()
        port = 20000 + job_id % 20000
        assert call[1] == "token" and re.fullmatch(r"[0-9a-f]{64}", call[2]), call[:3]
        assert call[3:] == ["sweep", "--address", f"127.0.0.1:{port}", "--storage", "/shared/supuq/ray_results",
                            "--tracking-uri", "http://mlflow.test:5000", "--dataset", "lidc", "--samples", "4"]
        calls = (job_log / "ray.calls").read_text().splitlines()
        starts = [line.split()[2:] for line in calls if line.split()[1] == "start"]
        assert len(calls) == len(starts) == 3, calls  # a head and two workers, nothing else: no `ray stop`
        assert f"--port={port}" in starts[0] and "--head" in starts[0]
        assert all(f"--address=127.0.0.1:{port}" in args for args in starts[1:])
        assert all(f"--temp-dir={ray_tmp}" in args and "--block" in args for args in starts)
        nodes = _lines(job_log / "ray.nodes")
        assert len(nodes) == 3 and sorted(_lines(job_log / "ray.stopped")) == sorted(nodes)  # each stopped by TERM
        assert not any(_alive(int(pid)) for pid in nodes)
        assert not ray_tmp.exists()
        assert _alive(other.pid) and not _lines(other_log / "ray.stopped"), "the other job's Ray node was stopped"
    finally:  # whatever is left of either session (a node the script failed to stop outlives the script)
        for proc in (job, other):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


SERVICE_NAMES = ("mlflow", "mlflow.mlflow", "mlflow.mlflow.svc", "mlflow.mlflow.svc.cluster.local")


def _server_args(container: dict) -> list[str]:
    """A container's command + args as one argument list, `--flag=value` split into two."""
    out = []
    for arg in list(container.get("command") or []) + list(container.get("args") or []):
        out += arg.split("=", 1) if arg.startswith("--") and "=" in arg else [arg]
    return out


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, (flag, args)
    return args[args.index(flag) + 1]


def k8s_allowed_hosts() -> str:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "mlflow" / "k8s.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    return _flag(_server_args(deployment["spec"]["template"]["spec"]["containers"][0]), "--allowed-hosts")


def test_mlflow_compose_has_postgres_s3_and_allowed_hosts():
    compose = load_yaml(CLUSTER / "mlflow" / "docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "proxy"} <= set(services)
    args = _server_args(services["mlflow"])
    assert args[:2] == ["mlflow", "server"]
    assert _flag(args, "--backend-store-uri").startswith("postgresql://mlflow:")
    assert "@postgres:5432/" in _flag(args, "--backend-store-uri")
    assert _flag(args, "--artifacts-destination").startswith("s3://")
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    hosts = _flag(args, "--allowed-hosts").split(",")
    assert {"mlflow", "mlflow:5000", "127.0.0.1:*"} <= set(hosts)  # the service name, as containers send it
    # nothing published on all interfaces by default; the database and MinIO not at all
    assert services["mlflow"]["ports"] == ["${MLFLOW_BIND:-127.0.0.1}:5000:5000"]
    assert "ports" not in services["postgres"] and "ports" not in services["minio"]


def test_mlflow_k8s_has_deployment_service_postgres_and_allowed_hosts():
    docs = [d for d in yaml.safe_load_all((CLUSTER / "mlflow" / "k8s.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow")
    assert deployment["metadata"]["namespace"] == service["metadata"]["namespace"] == "mlflow"
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["port"] == 5000
    container = _containers(deployment["spec"]["template"])[0]
    args = _server_args(container)
    assert args[:2] == ["mlflow", "server"]
    assert _flag(args, "--backend-store-uri").startswith("postgresql://")
    assert _flag(args, "--artifacts-destination").startswith("s3://")
    hosts = k8s_allowed_hosts().split(",")
    assert set(SERVICE_NAMES) <= set(hosts) and {f"{n}:5000" for n in SERVICE_NAMES} <= set(hosts)
    env = {e["name"] for e in container["env"]}
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD"} <= env  # $(VAR)s of the backend URI come from a Secret


def test_k8s_allowed_hosts_admit_the_service_names_and_refuse_others(stack):
    """The module's server runs with k8s.yaml's --allowed-hosts: in-cluster names pass, others get 403."""
    def status(host: str) -> int:
        request = urllib.request.Request(f"{stack.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                         headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    for host in ("mlflow.mlflow.svc.cluster.local:5000", "mlflow:5000", "mlflow.mlflow", "localhost:15000"):
        assert status(host) == 200, host
    assert status("evil.example.com") == 403 and status("mlflow.default.svc.cluster.local:5000") == 403
