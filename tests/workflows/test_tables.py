"""The Table 2/3 model (supuq.workflows.tables): its three renderers show the numbers of the per-seed values they
summarise (mean and sample std computed here with numpy), the verdict rule on hand-made numbers, the smoke
banner's thresholds and the paper's published values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rich.console import Console

from supuq.cli.tables import result_tables
from supuq.report.html import html_result_tables
from supuq.workflows.published import PROTOCOL, PUBLISHED_LABEL
from supuq.workflows.tables import (
    CALIBRATION,
    SMOKE_MIN_EPOCHS,
    SMOKE_MIN_IMAGE_PX,
    SMOKE_MIN_SEEDS,
    TABLE2,
    TABLE3,
    Scale,
    build_tables,
    compare,
    smoke_reasons,
    to_markdown,
)

METHODS = ("supervised", "kohl", "kendall_gal")
KEYS = ("ged", "dist_sy", "diversity", "ncc", "ncc_excluded", "ncc_true", "brier", "ece", "aleatoric", "epistemic")


def random_per_seed(seeds: int = 4, seed: int = 0) -> dict[str, list[dict[str, float]]]:
    rng = np.random.default_rng(seed)
    return {m: [{k: float(rng.uniform(0.01, 0.9)) for k in KEYS} for _ in range(seeds)] for m in METHODS}


def rich_text(result, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(result_tables(result))
    return console.export_text()


def test_every_renderer_shows_numpy_mean_and_sample_std_of_the_seeds():
    per_seed = random_per_seed()
    result = build_tables("synthetic", per_seed, 50)
    markdown, html = to_markdown(result), "".join(html_result_tables(result))
    terminal = rich_text(result, width=400)  # wide enough that no cell wraps
    checked = 0
    for table, spec in zip(result.tables, (TABLE2, TABLE3, CALIBRATION)):
        names = [c.name for c in table.columns]
        for method, row in zip(METHODS, table.rows):
            for key, name, digits in spec:
                if key == "ncc_common":
                    continue  # not a per-seed metric; checked below
                values = np.array([r[key] for r in per_seed[method]])
                mean, std = values.mean(), values.std(ddof=1)
                cell = row[names.index(name)]
                assert cell.mean == pytest.approx(mean, rel=1e-12) and cell.std == pytest.approx(std, rel=1e-12)
                text = f"{mean:.{digits}f} ± {std:.{digits}f}"
                assert cell.text == text
                for rendered in (markdown, html, terminal):
                    assert text in rendered, (key, method)
                checked += 1
    assert checked == 3 * (3 + 3 + 4)


def test_common_subset_cell_keeps_its_numbers():
    per_seed = random_per_seed(seeds=2)
    common = {"supervised": {"mean": 0.4567, "std": 0.0123, "images": 151.0}}
    table3 = build_tables("synthetic", per_seed, 50, common).tables[1]
    cell = table3.rows[0][[c.name for c in table3.columns].index("NCC, common subset")]
    assert cell.text == "0.457 ± 0.012 (151 img)" and cell.mean == 0.4567
    assert table3.rows[1][[c.name for c in table3.columns].index("NCC, common subset")].text == "n/a"


def test_markdown_rows_are_whole_lines_and_rich_fits_a_narrow_terminal():
    result = build_tables("lidc", random_per_seed(), "50 (5 x 10)", scale=Scale(4, 8, 32))
    for table in to_markdown(result).split("\n## ")[1:]:
        rows = [line for line in table.splitlines() if line.startswith("|")]
        assert len(rows) == 2 + len(METHODS)
        assert len({row.count(" | ") for row in rows[:1] + rows[2:]}) == 1  # every row has every column
    for width in (80, 130):
        text = rich_text(result, width)
        assert max(len(line) for line in text.splitlines()) <= width
        assert "Table 2: GED on lidc" in text and "Smoke-scale run" in text


def test_compare_rule_on_hand_made_numbers():
    ours, base = [0.20, 0.21, 0.22], [0.30, 0.31, 0.32]
    verdict, diff, se = compare(ours, base, lower_is_better=True)
    expected_se = math.sqrt(np.var(ours, ddof=1) / 3 + np.var(base, ddof=1) / 3)
    assert verdict == "reproduced" and diff == pytest.approx(-0.10) and se == pytest.approx(expected_se)
    assert compare(ours, base, lower_is_better=False).verdict == "not reproduced (reversed)"
    # a difference of 0.01 with a standard error of about 0.058: within 2 SE
    assert compare([0.2, 0.3, 0.4], [0.21, 0.31, 0.41], lower_is_better=True).verdict == "inconclusive"
    # b = a + shift has a's variance, so the standard error is fixed: 1.9 SE is within the rule, 2.1 SE beyond
    a = np.array([0.0, 0.1])
    se_shift = math.sqrt(2 * a.var(ddof=1) / 2)
    assert compare(a, a + 1.9 * se_shift, lower_is_better=True).verdict == "inconclusive"
    assert compare(a, a + 2.1 * se_shift, lower_is_better=True).verdict == "reproduced"
    assert compare(a + 2.1 * se_shift, a, lower_is_better=True).verdict == "not reproduced (reversed)"
    one = compare([0.2], [0.3, 0.31], lower_is_better=True)
    assert one.verdict == "inconclusive (fewer than 2 seeds)" and math.isnan(one.diff) and math.isnan(one.se)
    assert compare([0.2, float("nan")], [0.3, 0.31], True).verdict == "inconclusive (fewer than 2 seeds)"


def test_tables_show_the_verdict_of_ours_against_each_baseline():
    per_seed = random_per_seed(seeds=3, seed=1)
    for m, shift in (("kohl", 0.3), ("kendall_gal", 0.0)):  # kohl clearly worse GED; kendall_gal the same draw
        for row, ours in zip(per_seed[m], per_seed["supervised"]):
            row["ged"] = ours["ged"] + shift + (0.001 if m == "kendall_gal" else 0.0)
    table2, table3, calibration = build_tables("synthetic", per_seed, 50).tables
    verdicts = [row[-1] for row in table2.rows]
    assert table2.columns[-1].kind == "verdict" and verdicts[0].text == "reference"
    for m, cell in zip(METHODS[1:], verdicts[1:]):
        expected = compare([r["ged"] for r in per_seed["supervised"]], [r["ged"] for r in per_seed[m]], True)
        assert cell.text.startswith(expected.verdict + " (") and cell.mean == pytest.approx(expected.diff)
    assert verdicts[1].text.startswith("reproduced")
    ncc = compare([r["ncc"] for r in per_seed["supervised"]], [r["ncc"] for r in per_seed["kohl"]], False)
    assert table3.rows[1][-1].text.startswith(ncc.verdict)
    assert all(c.kind != "verdict" for c in calibration.columns)
    # without our method there is nothing to judge
    alone = build_tables("synthetic", {"kohl": per_seed["kohl"]}, 50).tables[0]
    assert all(c.kind != "verdict" for c in alone.columns)


def test_smoke_banner_thresholds():
    full = Scale(SMOKE_MIN_SEEDS, SMOKE_MIN_EPOCHS, SMOKE_MIN_IMAGE_PX)
    assert smoke_reasons(full) == [] and smoke_reasons(Scale(5)) == []  # unknown epochs/size are not guessed
    assert len(smoke_reasons(Scale(SMOKE_MIN_SEEDS - 1, 100, 128))) == 1
    assert len(smoke_reasons(Scale(5, SMOKE_MIN_EPOCHS - 1, 128))) == 1
    assert len(smoke_reasons(Scale(5, 100, SMOKE_MIN_IMAGE_PX - 1))) == 1
    per_seed = random_per_seed(seeds=3)
    assert build_tables("synthetic", per_seed, 50, scale=Scale(3, 100, 128)).banner is None
    banner = build_tables("synthetic", per_seed, 50, scale=Scale(3, 8, 32)).banner
    assert "not results" in banner and "32 px" in banner and "8 epochs" in banner
    assert "not results" in build_tables("synthetic", random_per_seed(seeds=2), 50).banner  # 2 seeds
    html = "".join(html_result_tables(build_tables("synthetic", per_seed, 50, scale=Scale(3, 8, 32))))
    assert html.startswith("<p class='banner'>Smoke-scale run")


def test_published_values_of_hu_et_al():
    per_seed = random_per_seed(seeds=3)
    expected = {
        "lidc-png": {"ged": ["0.267 ± 0.012", "0.346 ± 0.038", "0.553 ± 0.010"],
                     "ncc": ["0.669 ± 0.011", "not reported", "0.597 ± 0.006"]},
        "miccai2012": {"ged": ["0.373 ± 0.021", "0.382 ± 0.017", "0.571 ± 0.028"],
                       "ncc": ["0.345 ± 0.005", "not reported", "0.299 ± 0.011"]},
    }
    for dataset, metrics in expected.items():
        result = build_tables(dataset, per_seed, 50)
        for table, metric, seeds in zip(result.tables[:2], ("ged", "ncc"), (5, 3)):
            column = table.columns[-1]
            assert column.kind == "published" and PUBLISHED_LABEL in column.name and PROTOCOL in column.name
            assert f"{seeds} seeds" in column.name
            assert [row[-1].text for row in table.rows] == metrics[metric]
        assert all(c.kind != "published" for c in result.tables[2].columns)
        assert any("slice-level" in note for note in result.notes)
    for dataset in ("synthetic", "qubiq"):
        result = build_tables(dataset, per_seed, 50)
        assert all(c.kind != "published" for t in result.tables for c in t.columns)
        assert any("No published values" in note for note in result.notes)


def test_scale_and_samples_read_from_a_retrains_records():
    from types import SimpleNamespace

    from supuq.workflows.tables import recorded_scale, samples_of

    def run(**params):  # what the functions read of an MLflow Run: run.data.params (strings)
        return SimpleNamespace(data=SimpleNamespace(params={k.replace("_", ".", 1): str(v) for k, v in params.items()}))

    runs = [run(eval_weight_samples=1, eval_latent_samples=50, train_epochs=12),
            run(eval_weight_samples=5, eval_latent_samples=10, train_epochs=40)]
    assert samples_of(runs) == "50 (5 x 10 or 1 x 50)" and samples_of([]) == "?"
    per_seed = {"supervised": [{}, {}, {}], "kohl": [{}, {}]}
    assert recorded_scale({"per_seed": per_seed, "scale": {"epochs": 30, "image_px": 128}}, runs) == Scale(2, 30, 128)
    assert recorded_scale({"per_seed": per_seed}, runs) == Scale(2, 12, None)  # older results.json: from the runs
