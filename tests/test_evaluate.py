"""`evaluate`: the sampling protocol and metrics on a model with known samples, and reliability pooled over seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supuq.config import ModelConfig
from supuq.data.prepare import load_dataset
from supuq.evaluate import evaluate
from supuq.evaluate import pool_reliability
from supuq.train import fit


class AnnotationEcho(torch.nn.Module):
    """A stand-in whose M*K samples cycle through each image's own annotations (equal counts of each), so its
    sample distribution equals the graders': GED must be 0 and the aleatoric map must equal the grader
    variance (NCC 1 where defined). It looks the annotations up by the image tensor's content. Its `model_cfg`
    is the supervised method's (weight noise on), so `evaluate` keeps the M x K grid it is given."""

    model_cfg = ModelConfig()

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.lookup = {np.asarray(img).tobytes(): m for img, m in zip(images, masks)}

    def sample(self, x, weight_samples, latent_samples):
        masks = torch.stack([torch.as_tensor(self.lookup[img.numpy().tobytes()]) for img in x.cpu()])
        d = masks.shape[1]
        order = torch.arange(weight_samples * latent_samples) % d
        logits = torch.where(masks[:, order].bool(), 10.0, -10.0).float()
        return logits.reshape(x.shape[0], weight_samples, latent_samples, *x.shape[2:])


def test_samples_equal_to_annotations_give_ged_0_and_ncc_1(tiny_cfg):
    data = load_dataset(tiny_cfg.data)
    model = AnnotationEcho(np.asarray(data.images), np.asarray(data.masks))
    # M=1 so the aleatoric map is the whole variance; K=8 = 2 copies of each of the 4 annotations
    result = evaluate(model, data, "test", weight_samples=1, latent_samples=8, batch_size=5, data_cfg=tiny_cfg.data)
    assert result.ged == pytest.approx(0.0, abs=1e-9)
    defined = np.isfinite(result.per_image["ncc"])
    assert defined.any()
    assert np.allclose(result.per_image["ncc"][defined], 1.0, atol=1e-6)
    assert result.ncc_excluded == int((~defined).sum())
    assert result.epistemic == 0.0
    assert result.brier == pytest.approx(0.0, abs=1e-6)


def test_evaluate_real_model_protocol_and_ranges(tiny_cfg, tmp_path):
    fitted = fit(tiny_cfg)
    result = evaluate(fitted.model, fitted.data, "test", 2, 3, data_cfg=tiny_cfg.data)
    assert (result.weight_samples, result.latent_samples) == (2, 3)
    assert result.n_images == len(fitted.split.test)
    assert 0 <= result.aleatoric <= 0.25 and 0 <= result.epistemic <= 0.25
    assert 0 <= result.ged <= 2 and 0 <= result.ece <= 1
    assert result.ncc_true is not None  # synthetic data know the true probabilities
    kohl = fit(tiny_cfg.with_method("kohl"))
    k = evaluate(kohl.model, kohl.data, "test", 2, 3, data_cfg=tiny_cfg.data)
    assert (k.weight_samples, k.latent_samples) == (1, 6)  # no weight noise: the same 6 samples, all latent
    assert k.epistemic == 0.0


def test_reliability_is_summed_over_seeds():
    a = {"mean_pred": [0.1, float("nan")], "mean_obs": [0.2, float("nan")], "count": [10, 0]}
    b = {"mean_pred": [0.05, 0.9], "mean_obs": [0.05, 0.6], "count": [30, 10]}
    agg = pool_reliability([a, b])
    table = agg.table()
    assert table["count"] == [40, 10]
    assert table["mean_pred"][0] == pytest.approx((0.1 * 10 + 0.05 * 30) / 40)
    assert table["mean_obs"][1] == pytest.approx(0.6)
    assert agg.ece() == pytest.approx((abs(1.0 + 1.5 - 2.0 - 1.5) + abs(9.0 - 6.0)) / 50)
