"""supuq.report.retrain: `supuq report` of a retrain on a tiny real sweep and retrain (Ray Tune + Optuna + ASHA,
MLflow sqlite), opened in headless Chromium."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from supuq import tracking
from supuq.cli import app
from supuq.models.registry import METHOD_LABELS, METHODS

from ..conftest import PNG

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def test_retrain_report_tables_images_artifact_and_cli(store):
    uri, run_id = store["uri"], store["retrain"].parent_run_id
    out = store["tmp"] / "out" / "retrain.html"
    result = runner.invoke(app, ["report", run_id, "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    page = out.read_text()
    assert "Table 2: GED" in page and "Table 3: NCC" in page
    for label in ("Ours", "Probabilistic U-Net", "Kendall"):
        assert label in page
    # 3 methods x (uncertainty panel + learning curves) + each of the 2 fixed test images (eval.figure_images)
    # across methods + the reliability diagram
    # every method x (panel + curves) + the reliability diagram + the 2 figure images across methods
    assert page.count(PNG) == 2 * len(METHODS) + 1 + 2 and page.count("<h2>Test images across methods") == 1
    assert "ECE" in page and "see the paper" not in page  # synthetic: no published column
    # the configurations table shows each method's own keys (registry): no weight-noise prior for Kendall & Gal
    configs = page.split("<h2>Configurations</h2>")[1].split("</table>")[0]
    rows = {label: re.search(rf"<tr><td>{re.escape(html.escape(label))}</td><td>([^<]*)</td>", configs).group(1)
            for label in METHOD_LABELS.values()}
    assert "dropout 0.5" in rows[METHOD_LABELS["kendall_gal"]] and "prior" not in rows[METHOD_LABELS["kendall_gal"]]
    assert "gamma" in rows[METHOD_LABELS["supervised"]]
    assert "weight_noise.prior gaussian" in rows[METHOD_LABELS["supervised"]]
    assert "beta" in rows[METHOD_LABELS["kohl"]] and "gamma" not in rows[METHOD_LABELS["kohl"]]
    assert "Prob. U-Net 1 x 4" in page and "ours 2 x 2" in page  # each method's own sample grid (4 samples)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//|file:)""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    client = tracking.client_for(uri)
    assert "report.html" in [a.path for a in client.list_artifacts(run_id)]
    assert tracking.get_run(uri, run_id).info.status == "FINISHED"  # logging the report left the status alone

    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian package `chromium`; .ci/run installs it): screenshot not checked")
    shot = store["tmp"] / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={store['tmp'] / 'chromium-profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
         out.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    assert shot.stat().st_size > 50_000, shot.stat().st_size  # a blank 1280x2000 page is a few KB
