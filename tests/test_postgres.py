"""MLflow on a real PostgreSQL backend store (the store cluster/ recommends at scale): a PostgreSQL server on
127.0.0.1 started for this test, `mlflow server` on it, a 4-trial sweep whose trials all log at once, and no
metric point lost or duplicated. Skipped, with the reason, where PostgreSQL or psycopg2 is not installed
(.ci/run installs Debian's `postgresql` package and the dev extra installs psycopg2-binary)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from supuq import tracking
from supuq.sweep.driver import SweepOptions, run_sweep

from .conftest import ROOT, TINY_OVERRIDES
from .processes import free_port

EPOCHS = 3
TRIALS = 4


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which("initdb") else [])
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port; yields its SQLAlchemy URI, stops it afterwards."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary, in the dev extra)")
    # initdb and postgres refuse to run as root: run them as the package's `postgres` user when we are root.
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    work = Path(tempfile.mkdtemp(prefix="supuq-pg-"))
    data, sockets = work / "data", work / "sock"
    sockets.mkdir()
    if as_user:
        shutil.chown(work, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "supuq", "--no-sync")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(work / "server.log"), "-w", "-o",
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "supuq", "mlflow")
        yield f"postgresql+psycopg2://supuq@127.0.0.1:{port}/mlflow"  # SQLAlchemy 2.1 would pick psycopg 3
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres, tmp_path_factory):
    """`mlflow server` with the PostgreSQL backend store; yields its http URI."""
    port = free_port()
    artifacts = tmp_path_factory.mktemp("artifacts")
    log = open(tmp_path_factory.mktemp("log") / "mlflow.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres, "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    try:
        tracking.wait_for_health(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        tracking.stop_server(proc)
        log.close()


def test_concurrent_sweep_on_postgres_loses_and_duplicates_no_metric_point(mlflow_on_postgres, postgres, tmp_path,
                                                                           monkeypatch, ray_session):
    import psycopg2
    import yaml

    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "metric": "val/ged", "mode": "min", "num_samples": TRIALS, "max_concurrent": TRIALS,
        "scheduler": {"type": "none"}, "resources": {"cpu": 0.5, "gpu": 0},
        "space": {"loss.beta": {"loguniform": [0.1, 10.0]}, "optim.lr": {"loguniform": [1e-4, 3e-3]}},
    }))
    opts = SweepOptions(dataset="synthetic", config=ROOT / "configs/synthetic.yaml", space=space,
                        overrides=[*TINY_OVERRIDES, f"train.epochs={EPOCHS}"], storage=str(tmp_path / "ray_results"),
                        tracking_uri=mlflow_on_postgres, name="pg")
    out = run_sweep(opts)
    assert out.complete and len(out.trials) == TRIALS
    runs = tracking.child_runs(mlflow_on_postgres, out.parent_run_id)
    assert len(runs) == TRIALS and all(r.info.status == "FINISHED" for r in runs)
    client = tracking.client_for(mlflow_on_postgres)
    expected_points = 0
    for run in runs:
        keys = [k for k in run.data.metrics if k.startswith(("train/", "val/"))]
        assert "val/ged" in keys and "train/total" in keys
        for key in keys:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, key, steps)
        expected_points += len(keys) * EPOCHS
    # the same count straight from PostgreSQL's metrics table (every point of these runs' train/ and val/ keys)
    ids = tuple(r.info.run_id for r in runs)
    with psycopg2.connect(postgres.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM metrics WHERE run_uuid IN %s AND (key LIKE 'train/%%' OR key LIKE 'val/%%')",
                    (ids,))
        assert cur.fetchone()[0] == expected_points
