"""The Table 2/3 model (supuq.workflows.tables): its three renderers show the numbers of the per-seed values they
summarise (mean and sample std computed here with numpy), the common-subset NCC, the verdict rule on hand-made
numbers and the smoke banner's thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rich.console import Console

from supuq.cli.tables import result_tables
from supuq.report.html import html_result_tables
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
from supuq.workflows.tables import aggregate, common_subset_ncc

METHODS = ("supervised", "kohl", "kendall_gal")
KEYS = ("ged", "dist_sy", "diversity", "ged_16", "ged_100", "hm_iou_16", "ncc", "ncc_excluded", "ncc_binary",
        "ncc_true", "ncc_true_binary", "brier", "ece", "aleatoric", "epistemic")


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
    assert checked == 3 * (len(TABLE2) + len(TABLE3) - 1 + len(CALIBRATION))  # every measured cell, less ncc_common


def test_common_subset_cell_keeps_its_numbers():
    per_seed = random_per_seed(seeds=2)
    common = {"supervised": {"mean": 0.4567, "std": 0.0123, "images": 151.0}}
    table3 = build_tables("synthetic", per_seed, 50, common).tables[1]
    cell = table3.rows[0][[c.name for c in table3.columns].index("NCC, common subset")]
    assert cell.text == "0.457 ± 0.012 (151 img)" and cell.mean == 0.4567
    assert table3.rows[1][[c.name for c in table3.columns].index("NCC, common subset")].text == "n/a"


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


def test_scale_and_samples_read_from_a_retrains_records():
    from types import SimpleNamespace

    from supuq.workflows.tables import recorded_scale, samples_of

    def run(**params):  # what the functions read of an MLflow Run: run.data.params (strings)
        return SimpleNamespace(data=SimpleNamespace(params={k.replace("_", ".", 1): str(v) for k, v in params.items()}))

    runs = [run(eval_weight_samples=1, eval_latent_samples=50, train_epochs=12, model_method="kohl"),
            run(eval_weight_samples=5, eval_latent_samples=10, train_epochs=40, model_method="supervised")]
    assert samples_of(runs) == "50 (Prob. U-Net 1 x 50; ours 5 x 10)" and samples_of([]) == "?"
    assert samples_of(runs[1:]) == "50 (5 x 10)"
    per_seed = {"supervised": [{}, {}, {}], "kohl": [{}, {}]}
    assert recorded_scale({"per_seed": per_seed, "scale": {"epochs": 30, "image_px": 128}}, runs) == Scale(2, 30, 128)
    assert recorded_scale({"per_seed": per_seed}, runs) == Scale(2, 12, None)  # older results.json: from the runs


def _sample_std(values: list[float]) -> float:
    """Sample standard deviation (n - 1), written out."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_table_mean_and_std_summarise_the_per_seed_values():
    """Table 2/3's mean ± std per method and metric are the per-seed values' mean and sample std (NaN seeds
    left out; one seed: std 0), computed here independently."""
    rng = np.random.default_rng(11)
    per_seed = {
        "supervised": [{"ged": float(g), "ncc": float(n), "ece": float(e)}
                       for g, n, e in zip(rng.uniform(0.2, 0.4, 5), rng.uniform(0.3, 0.7, 5), rng.uniform(0, 0.1, 5))],
        "kohl": [{"ged": 0.41, "ncc": float("nan")}, {"ged": 0.37, "ncc": 0.52}, {"ged": 0.45, "ncc": 0.48}],
        "kendall_gal": [{"ged": 0.55, "ncc": 0.3}],
    }
    summary = aggregate(per_seed)
    assert set(summary) == set(per_seed)
    for method, rows in per_seed.items():
        assert summary[method]["seeds"] == len(rows)
        for key in ("ged", "ncc", "ece"):
            values = [row[key] for row in rows if key in row and math.isfinite(row[key])]
            if not values:
                assert f"{key}_mean" not in summary[method]
                continue
            assert summary[method][f"{key}_mean"] == pytest.approx(sum(values) / len(values), rel=1e-12)
            expected_std = _sample_std(values) if len(values) > 1 else 0.0
            assert summary[method][f"{key}_std"] == pytest.approx(expected_std, rel=1e-12, abs=1e-15)
    assert summary["kohl"]["ncc_mean"] == pytest.approx(0.50) and summary["kohl"]["ncc_std"] == pytest.approx(
        math.sqrt(0.0008))  # the NaN seed is left out: (0.52, 0.48)


def test_common_subset_ncc_uses_the_images_every_method_defines():
    """Per seed: the images where every method's NCC is defined; per method the mean over those images, then
    mean ± sample std over seeds; `images` is the subset's size averaged over seeds."""
    nan = float("nan")
    results = [
        {"seed": 0, "method": "supervised", "ncc_per_image": [0.9, 0.5, nan, 0.7, 0.1]},
        {"seed": 0, "method": "kohl", "ncc_per_image": [0.2, nan, 0.4, 0.6, 0.3]},
        {"seed": 1, "method": "supervised", "ncc_per_image": [0.8, 0.6, 0.6, nan, 0.2]},
        {"seed": 1, "method": "kohl", "ncc_per_image": [0.1, 0.3, nan, 0.5, 0.4]},
    ]
    # seed 0 shares images 0, 3, 4; seed 1 shares images 0, 1, 4
    expected_means = {"supervised": [(0.9 + 0.7 + 0.1) / 3, (0.8 + 0.6 + 0.2) / 3],
                      "kohl": [(0.2 + 0.6 + 0.3) / 3, (0.1 + 0.3 + 0.4) / 3]}
    got = common_subset_ncc(results)
    assert set(got) == {"supervised", "kohl"}
    for method, means in expected_means.items():
        assert got[method]["mean"] == pytest.approx(sum(means) / 2, rel=1e-12)
        assert got[method]["std"] == pytest.approx(_sample_std(means), rel=1e-12)
        assert got[method]["images"] == 3
    # a seed where no image is defined for every method counts as no value for it, not as 0
    lone = common_subset_ncc(results + [{"seed": 2, "method": "supervised", "ncc_per_image": [nan] * 5},
                                        {"seed": 2, "method": "kohl", "ncc_per_image": [0.5] * 5}])
    assert lone["supervised"]["mean"] == pytest.approx(got["supervised"]["mean"])
    assert lone["supervised"]["images"] == pytest.approx(2.0)


@pytest.mark.parametrize("a, b, lower_is_better, verdict", [
    ([0.30, 0.31, 0.29], [0.40, 0.41, 0.39], True, "reproduced"),  # GED: ours clearly lower
    ([0.40, 0.41, 0.39], [0.30, 0.31, 0.29], True, "not reproduced (reversed)"),
    ([0.61, 0.62, 0.60], [0.51, 0.52, 0.50], False, "reproduced"),  # NCC: ours clearly higher
    ([0.51, 0.52, 0.50], [0.61, 0.62, 0.60], False, "not reproduced (reversed)"),
    ([0.30, 0.35, 0.25], [0.31, 0.36, 0.27], True, "inconclusive"),  # spread swamps the difference
    # both sample stds sqrt(2) * 0.01: SE = sqrt(2e-4 / 2 + 2e-4 / 2) = 0.01414, so 2 SE = 0.02828
    ([0.29, 0.31], [0.32, 0.34], True, "reproduced"),  # difference 0.030 > 2 SE
    ([0.29, 0.31], [0.315, 0.335], True, "inconclusive"),  # difference 0.025 < 2 SE
    ([0.30, float("nan")], [0.40, 0.41], True, "inconclusive (fewer than 2 seeds)"),  # one finite seed
])
def test_study_verdict_rule_on_hand_made_numbers(a, b, lower_is_better, verdict):
    """`supuq results`' rule: a difference of seed means beyond 2 standard errors (Welch) in the claimed
    direction is reproduced, in the other reversed, else inconclusive."""
    got, diff, se = compare(a, b, lower_is_better)
    assert got == verdict
    finite_a, finite_b = [x for x in a if math.isfinite(x)], [x for x in b if math.isfinite(x)]
    if len(finite_a) < 2:
        assert math.isnan(diff) and math.isnan(se)
        return
    assert diff == pytest.approx(sum(finite_a) / len(finite_a) - sum(finite_b) / len(finite_b), rel=1e-12)
    expected_se = math.sqrt(_sample_std(finite_a) ** 2 / len(finite_a) + _sample_std(finite_b) ** 2 / len(finite_b))
    assert se == pytest.approx(expected_se, rel=1e-12)
