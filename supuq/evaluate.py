"""Evaluation with the paper's protocol: M weight samples x K latent samples per image, then GED, NCC and
calibration metrics (docs/architecture.md, Sampling and Metrics).

Test evaluation always draws 50 samples (M=5 x K=10; a method that samples no weights draws 1 x 50: the grid
rule is `supuq.models.registry.sampling_grid`); validation during training uses fewer (`eval.val_samples`,
default 16). Work is batched over images and only per-image summaries are kept, so memory stays bounded on a
128x128 test set of thousands of images.

Which samples each number uses:
- `ged`, `diversity`, `dist_sy`: binary samples of the main draw (the paper's and the literature's convention).
- `ncc`, `ncc_true`, `aleatoric`, `epistemic`: the maps of `decompose_probabilities` of the main draw's
  per-sample probabilities sigmoid(logit) (the variance p (1 - p) the supervised term calibrates);
  `ncc_binary`, `ncc_true_binary`: the same NCCs from the maps of the binary samples (`decompose`).
- `brier`, `ece`: p_m, the mean probability over the main draw, against p_g.
- test evaluation only (`LITERATURE_COUNTS`): `ged_16`, `ged_100` and `hm_iou_16` on draws of their own of 16
  and 100 samples (HM-IoU needs a multiple of the D graders: 16, or the next multiple of D above it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .config import DataConfig
from .data.splits import dataset_split
from .data.types import MultiGraderSet
from .metrics import brier, ece_from_bins, ged, ged_terms, hm_iou, ncc, reliability, summarize_ncc
from .models.registry import binary_samples, sampling_grid
from .sampling import decompose, decompose_probabilities, grader_mean, grader_variance

SPLITS = ("train", "val", "test", "all")
SETUP_KEYS = ("n_images", "weight_samples", "latent_samples")
"""What an evaluation ran on rather than what it measured: params or tags in MLflow, not metric charts."""
EVAL_SEED = 0
"""The sampling seed of a test evaluation unless one is given, so that evaluating a model twice (`supuq train`'s
test numbers, then `supuq evaluate` on its checkpoint) gives the same numbers."""
LITERATURE_COUNTS = (16, 100)
"""Sample counts of the literature's GED (GED_16, GED_100) and HM-IoU (16), drawn on top of the main 50 at test."""
Progress = Callable[[int, int], None]
"""progress(images evaluated, images in all), called after each batch."""


@dataclass
class EvalResult:
    """Dataset-level metrics plus per-image arrays (float64 [N]) for later aggregation and figures; `index` [N]
    is the dataset index of each evaluated image (ascending), the order of every `per_image` array."""

    ged: float
    ncc: float
    ncc_defined: int
    ncc_excluded: int
    ncc_binary: float
    ncc_binary_excluded: int
    diversity: float
    dist_sy: float
    brier: float
    ece: float
    aleatoric: float
    epistemic: float
    n_images: int
    weight_samples: int
    latent_samples: int
    ncc_true: float | None = None
    ncc_true_excluded: int | None = None
    ncc_true_binary: float | None = None
    ged_16: float | None = None
    ged_100: float | None = None
    hm_iou_16: float | None = None
    per_image: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    reliability: dict[str, list[float]] = field(default_factory=dict, repr=False)
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    def as_dict(self, prefix: str = "test/") -> dict[str, float]:
        """Scalar metrics keyed e.g. `test/ged`; None values (no true probabilities) are left out."""
        skip = ("per_image", "reliability", "index")
        scalars = {k: v for k, v in asdict(self).items() if k not in skip and v is not None}
        return {f"{prefix}{k}": float(v) for k, v in scalars.items()}

    def measured(self, prefix: str = "test/") -> dict[str, float]:
        """`as_dict` less `SETUP_KEYS`: the values worth a metric chart."""
        return {k: v for k, v in self.as_dict(prefix).items() if k[len(prefix):] not in SETUP_KEYS}

    def setup(self) -> dict[str, int]:
        """`SETUP_KEYS`: the images evaluated and the M x K sample grid."""
        return {key: int(getattr(self, key)) for key in SETUP_KEYS}


def evaluate(
    model: torch.nn.Module,
    data: MultiGraderSet,
    split: str = "test",
    weight_samples: int = 5,
    latent_samples: int = 10,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    data_cfg: DataConfig | None = None,
    seed: int | None = EVAL_SEED,
    progress: Progress | None = None,
    literature: bool = True,
) -> EvalResult:
    """Evaluate on a named split of `data` (split rebuilt by `splits.dataset_split` from `data_cfg`'s seed,
    fractions and mode and the cache's split rule).

    `model` is a supuq network (its `model_cfg` names the method). It draws weight_samples * latent_samples
    samples per image on its method's grid (`sampling_grid`: Kohl draws 1 x all of them), so every method is
    scored on the same number of samples. The samples are drawn from torch's generator seeded with `seed`
    (None: its current state), forked so that the caller's random state is left as it was. `literature`: also
    draw the 16 and 100 samples of `ged_16`, `ged_100`, `hm_iou_16`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        index = np.arange(len(data))
    else:
        data_cfg = data_cfg or DataConfig()
        parts = dataset_split(data, data_cfg)
        index = getattr(parts, split)
    requested = weight_samples  # the extra draws take their grids from the same requested M
    weight_samples, latent_samples = sampling_grid(model.model_cfg, weight_samples * latent_samples, weight_samples)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    extra = LITERATURE_COUNTS if literature else ()
    args = (model, data, index, weight_samples, latent_samples, batch_size, device, progress, extra, requested)
    if seed is None:
        return evaluate_indices(*args)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return evaluate_indices(*args)


@torch.no_grad()
def predict_samples(model: torch.nn.Module, x: torch.Tensor, weight_samples: int, latent_samples: int):
    """Logits [B,M,K,H,W] for images x [B,1,H,W]; the model is put in eval mode (Kendall-Gal keeps its MC
    dropout on inside `sample`)."""
    model.eval()
    return model.sample(x, weight_samples=weight_samples, latent_samples=latent_samples)


@torch.no_grad()
def evaluate_indices(
    model: torch.nn.Module,
    data: MultiGraderSet,
    index: np.ndarray,
    weight_samples: int,
    latent_samples: int,
    batch_size: int,
    device: torch.device,
    progress: Progress | None = None,
    extra_counts: tuple[int, ...] = (),
    requested_weights: int | None = None,
) -> EvalResult:
    """Metrics over the images `index` of `data` with an M x K sample grid; `progress(done, total)` after each
    batch of images. `extra_counts` (e.g. `LITERATURE_COUNTS`): sample counts of the literature's GED_n and
    HM-IoU, each drawn apart on the grid `sampling_grid` gives for `requested_weights` (default M)."""
    was_training = model.training
    index = np.sort(np.asarray(index))
    rows: dict[str, list[np.ndarray]] = {}
    calibration = ReliabilityAccumulator()
    for start in range(0, len(index), batch_size):
        batch = index[start : start + batch_size]
        x = torch.as_tensor(np.asarray(data.images[batch]), dtype=torch.float32, device=device)
        y = torch.as_tensor(np.asarray(data.masks[batch]), device=device).bool()
        logits = predict_samples(model, x, weight_samples, latent_samples).float()
        per, maps, p_m = _batch_metrics(model, logits, y)
        if data.prob is not None:
            p_true = torch.as_tensor(np.asarray(data.prob[batch]), dtype=torch.float32, device=device)
            v_true = p_true * (1 - p_true)
            per["ncc_true"], per["ncc_true_binary"] = ncc(maps[0], v_true), ncc(maps[1], v_true)
        per.update(_literature_metrics(model, x, y, extra_counts, requested_weights or weight_samples))
        _append(rows, per)
        calibration.add(p_m, grader_mean(y.float()))
        if progress is not None:
            progress(start + len(batch), len(index))
    model.train(was_training)
    per_image = {k: np.concatenate(v) for k, v in rows.items()}
    summary = summarize_ncc(torch.from_numpy(per_image["ncc"]))
    binary = summarize_ncc(torch.from_numpy(per_image["ncc_binary"]))
    result = EvalResult(
        ged=float(np.mean(per_image["ged"])),
        ncc=float(summary.mean),
        ncc_defined=int(summary.defined),
        ncc_excluded=int(summary.excluded),
        ncc_binary=float(binary.mean),
        ncc_binary_excluded=int(binary.excluded),
        diversity=float(np.mean(per_image["diversity"])),
        dist_sy=float(np.mean(per_image["dist_sy"])),
        brier=float(np.mean(per_image["brier"])),
        ece=calibration.ece(),
        aleatoric=float(np.mean(per_image["aleatoric"])),
        epistemic=float(np.mean(per_image["epistemic"])),
        n_images=len(index),
        weight_samples=weight_samples,
        latent_samples=latent_samples,
        per_image=per_image,
        reliability=calibration.table(),
        index=index.astype(np.int64),
    )
    if "ncc_true" in per_image:
        true = summarize_ncc(torch.from_numpy(per_image["ncc_true"]))
        result.ncc_true, result.ncc_true_excluded = float(true.mean), int(true.excluded)
        result.ncc_true_binary = float(summarize_ncc(torch.from_numpy(per_image["ncc_true_binary"])).mean)
    for key in ("ged_16", "ged_100", "hm_iou_16"):
        if key in per_image:
            setattr(result, key, float(np.mean(per_image[key])))
    return result


class ReliabilityAccumulator:
    """Reliability of p_m against p_g over all pixels, accumulated in fixed bins (per-bin sums of p_m and p_g and
    pixel counts, float64 [bins]) so that the pixels of a large test set are never held at once. The same sums
    pool several runs' tables (`pool_reliability`): pooling bins is pooling pixels."""

    def __init__(self, bins: int = 10):
        self.bins = bins
        self.count = np.zeros(bins)
        self.sum_pred = np.zeros(bins)
        self.sum_obs = np.zeros(bins)

    def add(self, p_m: torch.Tensor, p_g: torch.Tensor) -> None:
        """p_m, p_g [B,H,W] in [0,1]."""
        part = reliability(p_m, p_g, bins=self.bins)
        sum_pred, sum_obs = part.sums()
        self.count += part.counts.numpy()
        self.sum_pred += sum_pred.numpy()
        self.sum_obs += sum_obs.numpy()

    def add_table(self, table: dict[str, list[float]]) -> None:
        """Add another accumulator's `table()` (e.g. one seed's eval.json "reliability"); same bins."""
        count = np.asarray(table["count"], dtype=np.float64)
        if len(count) != self.bins:
            raise ValueError(f"reliability table has {len(count)} bins, expected {self.bins}")
        self.count += count
        self.sum_pred += np.nan_to_num(np.asarray(table["mean_pred"], dtype=np.float64)) * count
        self.sum_obs += np.nan_to_num(np.asarray(table["mean_obs"], dtype=np.float64)) * count

    def ece(self) -> float:
        """`metrics.ece_from_bins` of the accumulated bins (supuq's one ECE definition)."""
        return ece_from_bins(self.sum_pred, self.sum_obs, self.count)

    def table(self) -> dict[str, list[float]]:
        """Per-bin mean prediction, mean observation (NaN for empty bins) and counts, for plots."""
        with np.errstate(invalid="ignore", divide="ignore"):
            pred = self.sum_pred / self.count
            obs = self.sum_obs / self.count
        return {"mean_pred": pred.tolist(), "mean_obs": obs.tolist(), "count": self.count.tolist()}


def pool_reliability(tables: list[dict[str, list[float]]]) -> ReliabilityAccumulator:
    """Several runs' reliability tables (e.g. one per seed) summed bin by bin: counts add, means are
    count-weighted. Its `ece()` is the ECE of all their pixels together."""
    if not tables:
        raise ValueError("pool_reliability needs at least one table")
    pooled = ReliabilityAccumulator(bins=len(tables[0]["count"]))
    for table in tables:
        pooled.add_table(table)
    return pooled


def _batch_metrics(model: torch.nn.Module, logits: torch.Tensor, masks: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-image metrics [B] of one batch (logits [B,M,K,H,W], masks bool [B,D,H,W]), the aleatoric maps
    [B,H,W] from probabilities and from binary samples (for the NCC against a true variance) and p_m [B,H,W]
    (for the reliability bins). The sigmoid of the whole grid is taken once, for the maps and p_m alike."""
    b, m, k, h, w = logits.shape
    samples = binary_samples(model.model_cfg, logits)
    probs = torch.sigmoid(logits)
    p_m = probs.mean(dim=(1, 2))  # mean foreground probability over all M*K samples
    parts = decompose_probabilities(probs)
    binary = decompose(samples)
    terms = ged_terms(samples.reshape(b, m * k, h, w), masks)  # one Gram matrix: GED, E d(S,Y), E d(S,S')
    v_g = grader_variance(masks.float())
    per = {
        "ged": terms.ged,
        "diversity": terms.sample_diversity,
        "dist_sy": terms.cross,
        "ncc": ncc(parts.aleatoric, v_g),
        "ncc_binary": ncc(binary.aleatoric, v_g),
        "brier": brier(p_m, grader_mean(masks.float())),
        "aleatoric": parts.aleatoric.mean(dim=(1, 2)),
        "epistemic": parts.epistemic.mean(dim=(1, 2)),
    }
    return per, (parts.aleatoric, binary.aleatoric), p_m


def hm_iou_count(graders: int, at_least: int = 16) -> int:
    """Samples for HM-IoU with `graders` annotations: `at_least`, or the next multiple of `graders` above it."""
    return graders * math.ceil(at_least / graders)


def _literature_metrics(model: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor, counts: tuple[int, ...],
                        weight_samples: int) -> dict[str, torch.Tensor]:
    """`ged_<n>` for each n in `counts` and `hm_iou_16` (if 16 is among them), each from its own draw of binary
    samples on the method's grid for n samples; per image [B]."""
    out: dict[str, torch.Tensor] = {}
    draws: dict[int, torch.Tensor] = {}

    def draw(n: int) -> torch.Tensor:
        if n not in draws:
            m, k = sampling_grid(model.model_cfg, n, weight_samples)
            logits = predict_samples(model, x, m, k).float()
            draws[n] = binary_samples(model.model_cfg, logits).flatten(1, 2)  # [B, n, H, W]
        return draws[n]

    for n in counts:
        out[f"ged_{n}"] = ged(draw(n), masks)
    if 16 in counts:
        out["hm_iou_16"] = hm_iou(draw(hm_iou_count(masks.shape[1])), masks)
    return out


def _append(rows: dict[str, list[np.ndarray]], values: dict[str, torch.Tensor]) -> None:
    for key, value in values.items():
        rows.setdefault(key, []).append(value.detach().double().cpu().numpy())


def fixed_figure_indices(data: MultiGraderSet, index: np.ndarray, count: int) -> np.ndarray:
    """A fixed, reproducible choice of `count` images from `index` for figures, preferring images where the
    graders disagree (those are the interesting ones), then any others."""
    index = np.sort(np.asarray(index))
    masks = np.asarray(data.masks[index]).astype(np.float32)
    disagreement = (masks.mean(axis=1) * (1 - masks.mean(axis=1))).sum(axis=(1, 2))
    order = np.argsort(-disagreement, kind="stable")
    step = max(1, math.floor(len(order) / max(count, 1) / 2))
    chosen = order[::step][:count]
    return index[np.sort(chosen)]
