"""`fit` on tiny synthetic data: every method, reporter keys, exact resume, divergence, the splits it trains on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supuq.checkpoint import load_checkpoint
from supuq.data.prepare import load_dataset
from supuq.data.splits import split_indices
from supuq.data.types import MultiGraderSet
from supuq.errors import SupuqError, TrainingDiverged
from supuq.train import LOSS_KEYS, fit, training_indices

VAL_KEYS = {"val/ged", "val/ncc", "val/ncc_excluded", "val/diversity", "val/ncc_true"}


@pytest.mark.parametrize("method", ["supervised", "kohl", "kendall_gal"])
def test_fit_each_method_reports_documented_keys(tiny_cfg, method):
    cfg = tiny_cfg.with_method(method)
    calls = []
    result = fit(cfg, reporter=lambda metrics, epoch, ckpt: calls.append((epoch, metrics, ckpt)))
    assert [c[0] for c in calls] == [1, 2]
    for _, metrics, _ in calls:
        assert {f"train/{k}" for k in LOSS_KEYS} <= set(metrics)
        assert VAL_KEYS <= set(metrics)
        assert all(isinstance(v, float) for v in metrics.values())
    assert result.epochs_run == 2 and len(result.history) == 2
    if method == "kohl":
        assert all(c[1]["train/supervised"] == 0 and c[1]["train/kl_w"] == 0 for c in calls)
    if method == "supervised":
        assert calls[-1][1]["train/supervised"] > 0 and calls[-1][1]["train/kl_w"] > 0


def test_validation_only_every_val_every_epochs(tiny_cfg):
    cfg = tiny_cfg.updated({"train.epochs": 3, "train.val_every": 2})
    seen = []
    fit(cfg, reporter=lambda m, e, c: seen.append(("val/ged" in m, c)))
    # epochs 1, 2, 3: validation at 2 and at the last epoch; no checkpoint without a checkpoint_dir
    assert [s[0] for s in seen] == [False, True, True] and all(s[1] is None for s in seen)


def test_resume_of_a_finished_run_trains_nothing(tiny_cfg, tmp_path):
    data = load_dataset(tiny_cfg.data)
    first = fit(tiny_cfg, data, checkpoint_dir=tmp_path)
    assert load_checkpoint(first.checkpoint_path)["epoch"] == tiny_cfg.train.epochs
    again = fit(tiny_cfg, data, resume_from=tmp_path)
    assert again.epochs_run == 0 and len(again.history) == tiny_cfg.train.epochs


def test_two_plus_two_epochs_equal_four(tiny_cfg, tmp_path):
    """Stop after 2 epochs (by raising in the reporter, like a killed trial), resume, compare weights."""
    cfg = tiny_cfg.updated({"train.epochs": 4, "train.val_every": 1})
    data = load_dataset(cfg.data)
    straight = fit(cfg, data)

    class Stop(Exception):
        pass

    def stop_after_two(metrics, epoch, ckpt):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(cfg, data, reporter=stop_after_two, checkpoint_dir=tmp_path)
    resumed = fit(cfg, data, resume_from=tmp_path)
    assert resumed.epochs_run == 2
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [round(h["train/total"], 6) for h in straight.history] == [round(h["train/total"], 6) for h in resumed.history]


def test_resume_with_other_config_is_refused(tiny_cfg, tmp_path):
    data = load_dataset(tiny_cfg.data)
    fit(tiny_cfg, data, checkpoint_dir=tmp_path)
    with pytest.raises(SupuqError, match="different config"):
        fit(tiny_cfg.updated({"loss.gamma": 1.0}), data, resume_from=tmp_path)


def test_nan_loss_raises_training_diverged(tiny_cfg):
    with pytest.raises(TrainingDiverged) as err:
        fit(tiny_cfg.updated({"train.inject_nan_at_epoch": 2}))
    assert err.value.epoch == 2 and "epoch 2" in str(err.value)
    assert err.value.reason == "training diverged at epoch 2: loss is NaN"  # what a sweep tags the trial with


def test_seeds_vary_the_model_not_the_split(tiny_cfg):
    a = fit(tiny_cfg.updated({"train.seed": 1, "train.epochs": 1}))
    b = fit(tiny_cfg.updated({"train.seed": 2, "train.epochs": 1}))
    assert (a.split.test == b.split.test).all()
    assert a.history[0]["train/total"] != b.history[0]["train/total"]


@pytest.mark.parametrize("setting, expect_nhwc", [("auto", True), (False, False), (True, True)])
def test_channels_last_auto_is_on_for_the_cpu(tiny_cfg, setting, expect_nhwc):
    """train.channels_last: auto trains in NHWC on the CPU (faster oneDNN convolutions); false keeps NCHW."""
    cfg = tiny_cfg.updated({"train.channels_last": setting, "train.epochs": 1})
    weight = fit(cfg).model.unet.encoder.blocks[1][0].weight  # [f1, f0, 3, 3]: the two layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last) is expect_nhwc
    assert weight.is_contiguous() is not expect_nhwc


def test_retrain_on_train_and_val_never_touches_the_test_split(tiny_cfg):
    """train.train_on_val (the final retrain) trains on the train and validation images only: by index, by
    patient, and in what fit really reads (NaN test images leave it finite; NaN validation images diverge it)."""
    data = load_dataset(tiny_cfg.data)
    retrain = tiny_cfg.updated({"train.train_on_val": True, "train.epochs": 1})
    split = split_indices(data.groups, retrain.data.fractions, retrain.data.split_seed, retrain.data.split_by)
    assert len(split.train) and len(split.val) and len(split.test)
    used = training_indices(split, retrain)
    assert len(used) == len(set(used.tolist())) == len(split.train) + len(split.val)
    assert set(used.tolist()) == set(split.train.tolist()) | set(split.val.tolist())
    assert not set(used.tolist()) & set(split.test.tolist())
    assert not set(data.groups[used]) & set(data.groups[split.test])  # no test patient's image either
    assert set(training_indices(split, tiny_cfg).tolist()) == set(split.train.tolist())  # a sweep trial: train only

    def poisoned(rows: np.ndarray) -> MultiGraderSet:
        images = np.array(data.images)
        images[rows] = np.nan
        return MultiGraderSet(images, np.asarray(data.masks), np.asarray(data.groups), np.asarray(data.prob), data.meta)

    fitted = fit(retrain, poisoned(split.test))
    assert np.array_equal(fitted.split.test, split.test)
    assert all(np.isfinite(row[f"train/{key}"]) for row in fitted.history for key in LOSS_KEYS)
    with pytest.raises(TrainingDiverged):  # the poison is seen where the retrain does read
        fit(retrain, poisoned(split.val))
