"""supuq.figures: what the uncertainty, learning-curve and reliability figures draw (checked on the drawn arrays, not
pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from supuq.data.prepare import load_dataset
from supuq.figures import curves_figure, reliability_figure, uncertainty_figure
from supuq.train import fit

from .test_evaluate import AnnotationEcho


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every matplotlib figure saved during the test (its axes, images and lines stay inspectable after close)."""
    from matplotlib.figure import Figure

    figures, save = [], Figure.savefig

    def recording_save(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_save)
    return figures


def _png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # decodes the whole file: a truncated PNG fails here
        return image.size


def _panels(fig, blocks: int) -> np.ndarray:
    """The subplot grid [3 * blocks, cols] of an uncertainty figure (colour bars, added later, excluded)."""
    grid = [ax for ax in fig.axes if ax.get_subplotspec() is not None and ax.get_label() != "<colorbar>"]
    return np.array(grid, dtype=object).reshape(3 * blocks, -1)


def _shown(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array(), dtype=np.float64)


def test_uncertainty_figure_shows_the_image_graders_samples_and_maps(tiny_cfg, tmp_path, drawn):
    """Per image: the image, each grader's mask, binary samples, then p*(1-p*), aleatoric and epistemic.
    With samples that are the annotations (M=2 weight x K=2 latent: graders 1-2, then 3-4; logits +-10) the maps
    are known: p_m = mean of a pair's sigmoid(+-10), aleatoric = mean_m p_m (1 - p_m), epistemic = var_m p_m."""
    data = load_dataset(tiny_cfg.data)
    images, masks, prob = (np.asarray(a, dtype=np.float64) for a in (data.images, data.masks, data.prob))
    echo = AnnotationEcho(np.asarray(data.images), np.asarray(data.masks))
    idx = np.array([3, 10])
    png = uncertainty_figure(echo, data, idx, tmp_path / "u.png", weight_samples=2, latent_samples=2)
    (fig,) = drawn
    cols = max(data.graders + 1, 4, 3)
    assert _png_size(png) == (round(1.7 * cols * 110), round((1.6 * 3 * len(idx) + 0.3) * 110))
    grid = _panels(fig, len(idx))
    for block, i in enumerate(idx):
        top, mid, bot = grid[3 * block], grid[3 * block + 1], grid[3 * block + 2]
        assert top[0].get_title() == f"image {i}"
        np.testing.assert_allclose(_shown(top[0]), images[i, 0], atol=1e-6)
        for j in range(data.graders):
            assert top[j + 1].get_title() == f"grader {j + 1}"
            np.testing.assert_array_equal(_shown(top[j + 1]), masks[i, j])
            np.testing.assert_array_equal(_shown(mid[j]), masks[i, j])  # sample j+1 of 4 is grader j+1's mask
        p = np.where(masks[i] > 0, 1 / (1 + np.exp(-10.0)), 1 / (1 + np.exp(10.0)))  # the echo's probabilities
        q = np.stack([p[:2].mean(0), p[2:].mean(0)])
        aleatoric, epistemic = (q * (1 - q)).mean(0), q.var(0)
        assert [ax.get_title() for ax in bot[:3]] == ["true p*(1-p*)", "pred. aleatoric", "pred. epistemic"]
        np.testing.assert_allclose(_shown(bot[0]), prob[i] * (1 - prob[i]), atol=1e-6)
        np.testing.assert_allclose(_shown(bot[1]), aleatoric, atol=1e-6)
        np.testing.assert_allclose(_shown(bot[2]), epistemic, atol=1e-6)
        assert bot[0].images[0].get_clim() == bot[1].images[0].get_clim() == (0, 0.25)  # one data scale


def test_figures_of_a_trained_model(tiny_cfg, tmp_path, drawn):
    fitted = fit(tiny_cfg)
    idx = fitted.split.test[:2]
    data = fitted.data
    png = uncertainty_figure(fitted.model, data, idx, tmp_path / "u.png", 2, 2)
    grid = _panels(drawn[-1], len(idx))
    for block, i in enumerate(idx):
        np.testing.assert_allclose(_shown(grid[3 * block][0]), np.asarray(data.images[i, 0]), atol=1e-6)
        for j in range(4):
            assert set(np.unique(_shown(grid[3 * block + 1][j]))) <= {0.0, 1.0}  # samples are binary
        aleatoric, epistemic = _shown(grid[3 * block + 2][1]), _shown(grid[3 * block + 2][2])
        assert 0 <= aleatoric.min() and aleatoric.max() <= 0.25 and 0 <= epistemic.min() and epistemic.max() <= 0.25
    assert _png_size(png)[1] == round((1.6 * 3 * len(idx) + 0.3) * 110)

    curves = curves_figure(fitted.history, tmp_path / "c.png")
    left, right = drawn[-1].axes
    assert left.get_yscale() == "log" and _png_size(curves) == (1100, 396)
    lines = {line.get_label(): line for line in right.get_lines()}
    assert {"val/ged", "val/ncc", "val/diversity"} <= set(lines)
    for key, line in lines.items():  # every validation point, at its epoch
        points = [(row["epoch"], row[key]) for row in fitted.history if key in row]
        np.testing.assert_allclose(np.column_stack(line.get_data()), np.array(points, dtype=float))
    totals = {line.get_label(): line.get_ydata() for line in left.get_lines()}
    np.testing.assert_allclose(totals["total"], [row["train/total"] for row in fitted.history], rtol=1e-6)


def test_reliability_figure_plots_the_bins_it_is_given(tmp_path, drawn):
    table = {"mean_pred": [0.1, float("nan"), 0.5, 0.8], "mean_obs": [0.2, float("nan"), 0.4, 0.9], "ece": 0.1}
    rel = reliability_figure({"m": table}, tmp_path / "r.png")
    (ax,) = drawn[-1].axes
    diagonal, method = ax.get_lines()
    assert diagonal.get_label() == "perfect" and list(diagonal.get_xdata()) == [0, 1] == list(diagonal.get_ydata())
    assert method.get_label() == "m (ECE 0.100)"
    np.testing.assert_allclose(np.column_stack(method.get_data()), [[0.1, 0.2], [0.5, 0.4], [0.8, 0.9]])  # NaN bin gone
    assert _png_size(rel) == (440, 440)
