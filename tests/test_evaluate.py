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
    # the binary samples' map is the grader variance itself; the probabilities' map (p = sigmoid(+-10)) is an
    # affine image of it, so both NCCs are 1 where defined
    assert np.allclose(result.per_image["ncc_binary"][defined], 1.0, atol=1e-6)
    assert result.epistemic == 0.0
    assert result.brier == pytest.approx(0.0, abs=1e-6)
    # the literature's metrics on draws of their own: 16 and 100 samples are 4 and 25 copies of each annotation
    assert result.ged_16 == pytest.approx(0.0, abs=1e-9) and result.ged_100 == pytest.approx(0.0, abs=1e-9)
    assert result.hm_iou_16 == pytest.approx(1.0, abs=1e-12)
    quick = evaluate(model, data, "test", 1, 8, batch_size=5, data_cfg=tiny_cfg.data, literature=False)
    assert quick.ged_16 is quick.ged_100 is quick.hm_iou_16 is None
    assert "test/hm_iou_16" in result.as_dict() and "test/hm_iou_16" not in quick.as_dict()


def test_maps_come_from_probabilities_and_binary_maps_from_thresholds():
    """Logits whose samples all agree after thresholding but not in probability: 0.8 in every sample gives
    aleatoric 0.16 from probabilities and 0 from binary samples (`_batch_metrics`, the maps behind the NCCs)."""
    from supuq.evaluate import _batch_metrics

    class Fixed(torch.nn.Module):
        model_cfg = ModelConfig(method="kohl", weight_noise={"enabled": False})

    logit = float(np.log(0.8 / 0.2))
    logits = torch.full((1, 1, 4, 4, 4), logit)
    logits[0, 0, :, 0, 0] = -5.0  # one pixel off in every sample
    masks = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    per, (from_probs, from_binary), _ = _batch_metrics(Fixed(), logits, masks)
    assert from_probs[0, 1, 1] == pytest.approx(0.16, abs=1e-6)
    assert from_binary[0, 1, 1] == 0.0
    assert per["aleatoric"][0] == pytest.approx(float(from_probs.mean()), abs=1e-7)


def test_evaluate_real_model_protocol_and_ranges(tiny_cfg, tmp_path):
    fitted = fit(tiny_cfg)
    result = evaluate(fitted.model, fitted.data, "test", 2, 3, data_cfg=tiny_cfg.data)
    assert (result.weight_samples, result.latent_samples) == (2, 3)
    assert result.n_images == len(fitted.split.test)
    assert 0 <= result.aleatoric <= 0.25 and 0 <= result.epistemic <= 0.25
    assert 0 <= result.ged <= 2 and 0 <= result.ece <= 1
    assert result.ncc_true is not None and result.ncc_true_binary is not None  # synthetic: the true p* is known
    assert 0 < result.hm_iou_16 <= 1 and 0 <= result.ged_100 <= 2 and 0 <= result.ged_16 <= 2
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
