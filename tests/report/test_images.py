"""The retrain report a researcher reads: per-image metrics and panel arrays logged by each seed run, the same
test image across methods, the table of test images sorted worst first (CSS only), click-to-enlarge figures
(checked in headless Chromium), and each method's own configuration keys.

One tiny real retrain (every method x 2 seeds, 2 epochs, synthetic 16 px, MLflow sqlite) without Ray."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from supuq import tracking
from supuq.config import load_config
from supuq.models.registry import METHOD_LABELS, METHODS, SHORT_LABELS
from supuq.report import write_report
from supuq.report.html import SORT_KEYS_MAX, html_sorted_table
from supuq.report.images import per_image_means, per_image_sections, worst_first_ranks
from supuq.workflows.retrain import retrain

from ..conftest import ROOT, TINY_OVERRIDES

PNG = "data:image/png;base64,"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pages")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        cfg = load_config(ROOT / "configs" / "synthetic.yaml", TINY_OVERRIDES)
        uri = f"sqlite:///{tmp}/mlflow.db"
        outcome = retrain(None, cfg, uri, seeds=2, baselines=True, samples=4, parallel=False, out_root=tmp / "retrain")
        written = write_report(uri, outcome.parent_run_id, tmp / "report.html", log_artifact=False)
    children = tracking.child_runs(uri, outcome.parent_run_id)
    evals, panels = {}, {}
    for child in children:
        run_id = child.info.run_id
        evals[run_id] = json.loads(tracking.download_artifact(uri, run_id, "eval.json", tmp / run_id).read_text())
        with np.load(tracking.download_artifact(uri, run_id, "panels.npz", tmp / run_id)) as npz:
            panels[run_id] = {k: npz[k] for k in npz.files}
    return {"tmp": tmp, "uri": uri, "cfg": cfg, "page": written.path.read_text(), "written": written,
            "children": children, "evals": evals, "panels": panels}


def _seed_runs(store, method: str) -> list:
    runs = [c for c in store["children"] if c.data.params["model.method"] == method]
    return sorted(runs, key=lambda r: int(r.data.params["train.seed"]))


def test_seed_runs_log_per_image_metrics_and_panel_maps(store):
    cfg = store["cfg"]
    for child in store["children"]:
        ev, maps = store["evals"][child.info.run_id], store["panels"][child.info.run_id]
        per = ev["per_image"]
        n = int(child.data.tags["test/n_images"])  # bookkeeping: a tag, not a metric chart
        assert len(per["index"]) == len(per["ged"]) == len(per["ncc"]) == n
        assert per["index"] == sorted(per["index"])
        # the per-image values are the ones the run's test metrics average
        assert np.mean(per["ged"]) == pytest.approx(child.data.metrics["test/ged"], rel=1e-9)
        ncc = np.asarray(per["ncc"], dtype=float)
        assert int(np.isnan(ncc).sum()) == int(child.data.metrics["test/ncc_excluded"])
        if np.isfinite(ncc).any():
            assert np.nanmean(ncc) == pytest.approx(child.data.metrics["test/ncc"], rel=1e-9)
        shown, size, graders = len(maps["sample_ids"]), cfg.data.synthetic.size, cfg.data.synthetic.graders
        k = cfg.eval.figure_images
        assert maps["image"].shape == (k, size, size) and maps["masks"].shape == (k, graders, size, size)
        assert maps["samples"].shape == (k, shown, size, size) and set(np.unique(maps["samples"])) <= {0, 1}
        for key in ("true", "aleatoric", "epistemic"):
            assert maps[key].shape == (k, size, size) and maps[key].min() >= 0 and maps[key].max() <= 0.25 + 1e-6
        assert str(maps["true_label"]) == "true p*(1-p*)"  # synthetic data knows its p*
        assert set(maps["index"].tolist()) <= set(per["index"])  # the figure images come from the test split
    # every method and seed drew the same fixed figure images
    assert len({tuple(m["index"].tolist()) for m in store["panels"].values()}) == 1


def test_report_shows_each_figure_image_across_methods(store):
    page = store["page"]
    images = next(iter(store["panels"].values()))["index"].tolist()
    section = page.split("<h2>Test images across methods (seed 0)</h2>")[1].split("<h2>")[0]
    for idx in images:
        assert section.count(f"<figure id='image-{idx}'>") == 1 and f"Test image {idx}. Mean over seeds: ours: GED" in section
    assert section.count(PNG) == len(images)
    # every method x (uncertainty panel + learning curves) + one figure per fixed image + the reliability diagram
    assert page.count(PNG) == store["written"].images == 2 * len(METHODS) + 1 + len(images)
    # every figure can be enlarged: each image sits in a zoom label with its own checkbox
    assert page.count("<img ") == page.count("<label class='zoom'") == page.count("<input type='checkbox'>")
    # still one self-contained page: no script, nothing fetched, only in-page links
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//|file:)""", page, re.I)
    assert set(re.findall(r"href='#([^']+)'", page)) == {f"image-{i}" for i in images}


def _table_rows(page: str) -> list[tuple[dict[str, int], list[str]]]:
    """(ranks by key, cell texts) per row of the page's sorted table."""
    rows = []
    for style, cells in re.findall(r"<div class='tr' style='([^']*)'>(.*?)</div>", page):
        ranks = {k: int(v) for k, v in (part.split(":") for part in style.split(";"))}
        rows.append((ranks, [html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall(r"<span[^>]*>(.*?)</span>", cells)]))
    return rows


def test_image_table_sorts_every_test_image_worst_first(store):
    page = store["page"]
    rows = _table_rows(page)
    methods = list(METHODS)
    means = {m: per_image_means([store["evals"][r.info.run_id] for r in _seed_runs(store, m)]) for m in methods}
    test_images = sorted(means["supervised"])
    assert [int(cells[0].split()[1]) for _, cells in rows] == test_images  # one row per test image
    labels = re.findall(r"<label for='images-sort-(\d+)'>([^<]*)</label>", page)
    assert [html.unescape(text) for _, text in labels] == [
        *(f"{SHORT_LABELS[m]} {metric}" for m in methods for metric in ("GED (highest first)", "NCC (lowest first)")),
        "image index"]
    assert "id='images-sort-0' class='sort-0' checked" in page  # first shown: our GED, worst first
    for j, method in enumerate(methods):
        ged_order = [cells for ranks, cells in sorted(rows, key=lambda r: r[0][f"--k{2 * j}"])]
        geds = [means[method][int(c[0].split()[1])][0] for c in ged_order]
        assert geds == sorted(geds, reverse=True)
        assert [c[1 + 2 * j] for c in ged_order] == [f"{g:.4f}" for g in geds]  # the column shows those values
        ncc_order = [cells for ranks, cells in sorted(rows, key=lambda r: r[0][f"--k{2 * j + 1}"])]
        nccs = [means[method][int(c[0].split()[1])][1] for c in ncc_order]
        defined = [v for v in nccs if math.isfinite(v)]
        assert nccs[: len(defined)] == sorted(defined)  # lowest (worst) NCC first, undefined ones last
        assert all(c[2 + 2 * j] == "n/a" for c in ncc_order[len(defined):])
    index_key = f"--k{2 * len(methods)}"
    assert [int(c[0].split()[1]) for _, c in sorted(rows, key=lambda r: r[0][index_key])] == test_images


def test_configurations_show_each_methods_own_keys(store):
    configs = store["page"].split("<h2>Configurations</h2>")[1].split("</table>")[0]
    for method, entry in METHODS.items():
        cell = re.search(rf"<tr><td>{re.escape(html.escape(METHOD_LABELS[method]))}</td><td>([^<]*)</td>",
                         configs).group(1)
        if not entry.keys:  # the soft-label U-Net reads only the shared keys
            assert cell == "none (no key of its own)"
            continue
        shown = [line.split(" ")[0] for line in cell.split("\n")]
        assert shown == [k.split(".", 1)[1] for k in entry.keys]  # its own keys, one per line, nothing else
    assert ".configs td:nth-child(2) { text-align: left; white-space: pre-line; }" in store["page"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`)")
def test_click_to_enlarge_covers_the_window_in_chromium(store):
    """A checked zoom box (what a click does) lays the figure over the whole window: the page's white corner
    turns into the overlay's dark grey."""
    from PIL import Image

    page = store["page"]
    first = page.index("<input type='checkbox'>")
    zoomed = page[:first] + "<input type='checkbox' checked>" + page[first + len("<input type='checkbox'>"):]
    shots = {}
    for name, text in (("plain", page), ("zoomed", zoomed)):
        path = store["tmp"] / f"{name}.html"
        path.write_text(text)
        shot = store["tmp"] / f"{name}.png"
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={store['tmp'] / 'chromium-profile'}", f"--screenshot={shot}", "--window-size=1280,900",
             path.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )
        assert shot.is_file(), proc.stderr[-2000:]
        shots[name] = np.asarray(Image.open(shot).convert("RGB"))
    assert shots["plain"][4, 4].min() > 240  # white page margin
    assert shots["zoomed"][4, 4].max() < 60  # the overlay's background
    assert (shots["zoomed"] > 240).all(axis=2).mean() > 0.2  # with the (mostly white) figure on it


def test_per_image_means_over_seeds_and_worst_first_ranks():
    seed0 = {"per_image": {"index": [3, 7, 9], "ged": [0.2, 0.6, 0.4], "ncc": [0.5, math.nan, 0.1]}}
    seed1 = {"per_image": {"index": [3, 7, 9], "ged": [0.4, 0.2, 0.4], "ncc": [0.3, math.nan, math.nan]}}
    means = per_image_means([seed0, seed1, {}])  # a run without per-image metrics adds nothing
    assert means[3] == pytest.approx((0.3, 0.4)) and means[9] == pytest.approx((0.4, 0.1))
    assert means[7][0] == pytest.approx(0.4) and math.isnan(means[7][1])  # undefined in every seed
    assert worst_first_ranks([0.3, 0.4, 0.4], higher_is_worse=True) == [2, 0, 1]  # ties keep their order
    assert worst_first_ranks([0.4, math.nan, 0.1], higher_is_worse=False) == [1, 2, 0]  # NaN last
    with pytest.raises(ValueError, match="1 to"):
        html_sorted_table("t", ["a"], [["x"]], [])
    with pytest.raises(ValueError, match="1 to"):
        html_sorted_table("t", ["a"], [["x"]], [("k", [0])] * (SORT_KEYS_MAX + 1))


def test_runs_without_per_image_artifacts_get_notes(tmp_path):
    """Seed runs made before eval.json held per-image metrics and panels.npz existed: the sections say so."""
    old = {"ged": 0.4, "reliability": {}}
    out = "".join(per_image_sections("sqlite:///unused.db", ["supervised"], {"supervised": "ours"}, {},
                                     {"run": old}, tmp_path))
    assert "no per-image view" in out and "hold no per-image metrics" in out and PNG not in out
