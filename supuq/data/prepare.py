"""Dataset entry points for the CLI and training: prepare a cache, load it, describe it, draw it.

Caches live in `data/<name>/` under the working directory unless a path is given; each dataset's folder name,
reader and the settings its cache must match come from `data.registry` (synthetic:
`data/synthetic-n<N>-s<S>-g<D>-seed<K>/` so different sizes never collide; qubiq: `data/qubiq-<task>/`).
lidc-pickle's `root` is the pickle file (or its folder). Real-data loaders are imported lazily, so the
synthetic path needs neither pylidc nor SimpleITK. A prepare replaces only an earlier supuq cache (and says so);
any other folder or file at the output path is refused before any work starts (`types.check_cache_target`).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .registry import dataset as registry_entry
from .types import MultiGraderSet, check_cache_target

log = logging.getLogger(__name__)

_CHUNK = 256  # images per step in describe(): bounded memory on large memory-mapped caches


def default_cache_dir(dataset: str, cfg: DataConfig | None = None) -> Path:
    """`data/<cache name>/` under the working directory (the registry's cache-folder rule for `dataset`)."""
    entry = registry_entry(dataset)
    return Path.cwd() / "data" / entry.cache_name(cfg or DataConfig(dataset=dataset))


def build(dataset: str, root: str | Path | None = None, cfg: DataConfig | None = None,
          workers: int | None = None, work_dir: Path | None = None,
          scans: list[str] | None = None) -> MultiGraderSet:
    """The in-memory `MultiGraderSet` of `dataset` (no cache written); `scans`: lidc patient ids to restrict to."""
    entry = registry_entry(dataset)
    cfg = cfg or DataConfig(dataset=dataset)
    if entry.root in ("path", "folder"):
        if root is None:
            raise DataError(f"dataset {dataset} needs --root (the folder holding the raw data)")
        if entry.root == "folder" and not Path(root).is_dir():
            raise DataError(f"{root}: no such dataset folder")
    return entry.read(None if root is None else Path(root), cfg, workers, work_dir, scans)


def prepare(dataset: str, root: str | Path | None = None, out: str | Path | None = None,
            cfg: DataConfig | None = None, workers: int | None = None, scans: list[str] | None = None) -> Path:
    """Build `dataset` from `root` and write its cache (atomically) to `out` or the default folder; return it.

    lidc takes `root` from $SUPUQ_LIDC_ROOT when not given (pylidc's own configuration otherwise) and `scans`
    (patient ids) to prepare only those. `out` must be missing, empty or an earlier supuq cache, which is then
    replaced with a printed line; anything else is a DataError before any data is read.
    """
    entry = registry_entry(dataset)
    cfg = cfg or DataConfig(dataset=dataset)
    if scans is not None and dataset != "lidc":
        raise DataError(f"--scans selects LIDC patient ids of dataset lidc; dataset {dataset} has no scans to select")
    out = Path(out) if out is not None else default_cache_dir(dataset, cfg)
    previous = check_cache_target(out)
    if entry.generated and root is not None:
        log.info("synthetic data is generated; ignoring root %s", root)
        root = None
    # lidc only: resumable per-scan intermediates beside the cache (data/lidc_scans for the default cache)
    work_dir = out.parent / f"{out.name}_scans"
    ds = build(dataset, root, cfg, workers=workers, work_dir=work_dir, scans=scans)
    path = ds.save(out)
    if previous is not None:
        print(f"replaced the earlier supuq cache in {path} ({previous.get('dataset', 'unknown dataset')}, "
              f"{previous.get('count')} images) by this one", file=sys.stderr, flush=True)
    log.info("wrote %s: %d images, %d graders, %dx%d", path, len(ds), ds.graders, *ds.size)
    return path


def _stale(meta: dict[str, Any], cfg: DataConfig) -> str | None:
    """Why a default cache does not match the config's preprocessing (None when it matches)."""
    entry = registry_entry(cfg.dataset)
    if entry.generated:
        from .synthetic import SyntheticParams

        s, gen = cfg.synthetic, meta.get("generator", {})
        # Compare every generator parameter (JSON round trip: tuples are stored as lists), so a cache made by an
        # older generator version is regenerated rather than silently reused.
        want = json.loads(json.dumps({"n": s.n, "size": s.size, "graders": s.graders, "seed": s.seed,
                                      **asdict(SyntheticParams())}))
        if gen != want:
            return "other synthetic generator parameters"
        # Caches from before the preprocessing record: regenerate, so checkpoints can tell `supuq predict` how
        # their inputs were scaled.
        return None if "preprocessing" in meta else "no recorded preprocessing (an older cache)"
    checks = entry.cache_settings(cfg)
    diffs = [f"{k}={meta[k]!r} (config {v!r})" for k, v in checks.items() if k in meta and meta[k] != v]
    return ", ".join(diffs) or None


def load_dataset(cfg: DataConfig) -> MultiGraderSet:
    """The dataset `cfg` names: its explicit cache, else the default cache (synthetic: generated on first use)."""
    if cfg.cache is not None:
        return MultiGraderSet.load(cfg.cache)
    folder = default_cache_dir(cfg.dataset, cfg)
    if registry_entry(cfg.dataset).generated:
        return _load_or_generate(folder, cfg)
    if not (folder / "meta.json").is_file():
        raise DataError(
            f"{folder}: no prepared {cfg.dataset} cache; run `supuq data prepare {cfg.dataset} --root <raw data>` "
            "(or set data.cache)"
        )
    ds = MultiGraderSet.load(folder)
    reason = _stale(ds.meta, cfg)
    if reason:
        raise DataError(f"{folder}: cache was prepared with {reason}; run `supuq data prepare {cfg.dataset}` again")
    return ds


def _load_or_generate(folder: Path, cfg: DataConfig) -> MultiGraderSet:
    if (folder / "meta.json").is_file():
        try:
            ds = MultiGraderSet.load(folder)
            if _stale(ds.meta, cfg) is None:
                return ds
        except DataError as err:  # e.g. an older format version: synthetic data is cheap to regenerate
            log.info("regenerating %s (%s)", folder, err)
    ds = build(cfg.dataset, cfg=cfg)
    try:
        ds.save(folder)
    except OSError as err:
        # Parallel trials may race to write the same cache; the winner's copy is identical (same seed).
        log.info("could not write %s (%s); using the generated data in memory", folder, err)
    return ds


DESCRIBED = {
    "dataset": "the source the cache was prepared from",
    "count": "images (2-D slices or crops)",
    "size": "image height and width in pixels",
    "graders": "masks per image (an empty mask where a grader drew nothing)",
    "groups": "patients or cases; splits never put one in two splits",
    "empty_mask_fraction": "share of (image, grader) masks that are empty",
    "all_empty_fraction": "share of images on which every grader's mask is empty",
    "grader_variance_union": "mean grader disagreement p_g(1-p_g) over pixels any grader marked",
    "grader_variance": "mean grader disagreement p_g(1-p_g) over all pixels",
    "foreground_fraction": "share of mask pixels that are foreground",
    "prob_mean": "mean of the generator's true foreground probability p* (synthetic only)",
}
"""What each key of `describe` means, in words (`supuq data info` prints it beside the value)."""


def describe(ds: MultiGraderSet) -> dict[str, Any]:
    """Summary numbers of a dataset (JSON-friendly).

    empty_mask_fraction: share of (image, grader) masks that are empty; all_empty_fraction: share of images
    where every grader is empty; grader_variance_*: mean of p_g (1 - p_g), p_g = mean over graders, over the
    pixels of the union of the masks and over all pixels; foreground_fraction: mean of all mask pixels.
    """
    n, d = len(ds), ds.graders
    h, w = ds.size
    empty = all_empty = 0
    var_sum = var_union_sum = union_pixels = fg_sum = prob_sum = 0.0
    for start in range(0, n, _CHUNK):
        masks = np.asarray(ds.masks[start : start + _CHUNK], dtype=np.float32)  # [c,D,H,W]
        drawn = masks.reshape(len(masks), d, -1).any(axis=2)  # [c,D]
        empty += int((~drawn).sum())
        all_empty += int((~drawn.any(axis=1)).sum())
        p = masks.mean(axis=1)  # [c,H,W]
        v = p * (1 - p)
        union = p > 0
        var_sum += float(v.sum())
        var_union_sum += float(v[union].sum())
        union_pixels += int(union.sum())
        fg_sum += float(masks.sum())
        if ds.prob is not None:
            prob_sum += float(np.asarray(ds.prob[start : start + _CHUNK], dtype=np.float64).sum())
    pixels = n * h * w
    out: dict[str, Any] = {
        "dataset": ds.meta.get("dataset"),
        "count": n,
        "size": [h, w],
        "graders": d,
        "groups": int(len(np.unique(np.asarray(ds.groups)))),
        "empty_mask_fraction": empty / (n * d),
        "all_empty_fraction": all_empty / n,
        "grader_variance_union": var_union_sum / union_pixels if union_pixels else 0.0,
        "grader_variance": var_sum / pixels,
        "foreground_fraction": fg_sum / (pixels * d),
    }
    if ds.prob is not None:
        out["prob_mean"] = prob_sum / pixels
    return out


def show(ds: MultiGraderSet, out_png: str | Path, n: int = 8, seed: int = 0) -> Path:
    """PNG grid of `n` random images (seeded) with each grader's outline in its own colour; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    out_png = Path(out_png)
    count = min(n, len(ds))
    if count < 1:
        raise DataError("nothing to show: the dataset is empty")
    index = np.sort(np.random.default_rng(seed).choice(len(ds), size=count, replace=False))
    cols = min(count, 4)
    rows = -(-count // cols)
    fig = Figure(figsize=(3 * cols, 3.2 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)  # attach an Agg canvas without pyplot's global state
    colours = [f"C{j % 10}" for j in range(ds.graders)]
    for slot, i in enumerate(index):
        ax = fig.add_subplot(rows, cols, slot + 1)
        ax.imshow(np.asarray(ds.images[i, 0]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        masks = np.asarray(ds.masks[i])
        for j in range(ds.graders):
            if masks[j].any():  # contour() of an empty mask only warns
                ax.contour(masks[j], levels=[0.5], colors=[colours[j]], linewidths=1.2)
        ax.set_title(f"#{i} {ds.groups[i]}", fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color=c, label=f"grader {j + 1}") for j, c in enumerate(colours)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(ds.graders, 8), fontsize=8, frameon=False)
    fig.suptitle(f"{ds.meta.get('dataset', 'dataset')}: {count} of {len(ds)} images", fontsize=10)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png
