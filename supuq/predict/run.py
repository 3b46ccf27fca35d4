"""A trained model on new images and volumes: SimpleITK in, SimpleITK out, the input's geometry kept.

Pipeline (`predict`, the CLI's `supuq predict`):

1. MODEL: a local checkpoint file (or a folder holding ``checkpoint.pt``), loaded with
   `supuq.checkpoint.load_checkpoint` (weights only, never code). The CLI turns an MLflow run id or a
   ``runs:/<id>/<artifact path>`` URI into such a file first (`supuq.tracking.checkpoints`).
2. INPUT: a 2-D image (PNG/TIFF/...), a 3-D volume (.nii/.nii.gz/.mha/.mhd/.nrrd) or a DICOM series folder
   (SimpleITK's ImageSeriesReader; SimpleITK applies each file's RescaleSlope/Intercept, so CT comes out in HU).
3. Intensities: exactly the training data's preprocessing, recorded by the loader in the cache meta under
   ``"preprocessing"`` and copied into the checkpoint's ``data_meta``, applied by `supuq.data.preprocessing`
   (the same module the readers record it with): ``unit`` (used as is,
   must lie in [0, 1]; an 8-bit input is divided by 255), ``scale`` (divided by ``max``, must lie in
   [0, max]), ``hu_window`` (clip HU to [lo, hi], scale to [0, 1]; the input must look like HU, see
   `check_hu`), ``percentile`` (per-volume lo/hi percentiles to 0/1, clipped). A checkpoint without the record
   is refused rather than guessed.
4. Axial slices (SimpleITK arrays are [z, y, x]), each either centre-cropped to N x N (default N = the
   training crop, ``preprocessing["size"]``; zero-padded when the slice is smaller) or, with ``crop="full"``,
   cut into tiles of the training size that overlap by half a tile (``overlap``) and are predicted
   independently; each pixel's maps are the Gaussian-weighted mean over the tiles that cover it, and its binary
   samples come from the tile most centred on it (`supuq.predict.tiles`). Outside the predicted region every
   map is 0. Tiles are batched on the device.
5. Per pixel, from the M x K samples' probabilities (docs/architecture.md, Sampling and the uncertainty
   decomposition; on the method's grid, `supuq.models.registry.sampling_grid`: a method that samples no weights
   draws 1 x samples): ``pm`` mean sigmoid probability, ``aleatoric``, ``epistemic``, ``total`` (= aleatoric +
   epistemic, `decompose_probabilities`), ``consensus`` = pm > 0.5, optionally the S binary samples (the
   method's binary rule) as one (N+1)-D image.
6. Outputs in the input's geometry (origin, spacing, direction copied) in ``--format nifti`` (.nii.gz) or
   ``same`` (the input's extension; a DICOM input is written as .nii.gz, and PNG/JPEG/BMP inputs are refused
   because those formats cannot hold floating-point maps), ``prediction.json`` with every setting and the
   crop region, and ``overview.png`` (the slices of highest total uncertainty: image, pm, aleatoric,
   epistemic).

Steps 2 and 6 (reading and writing files, the overview figure) are `supuq.predict.io`; this module holds the
model and the prediction.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..checkpoint import checkpoint_config, load_checkpoint, load_weights
from ..config import Config
from ..data.preprocessing import apply as preprocess
from ..errors import SupuqError
from ..evaluate import predict_samples
from ..models import registry
from ..outputs import check_output_folder
from ..sampling import decompose_probabilities
from .io import (annotated_slices, image_like, output_extension, overview_figure, read_input, scalar_image,
                 stacked_like, write_maps)
from .tiles import BLEND_SIGMA, MapBlender, blend_weights, centre_window, tile_windows


# --- the model --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A trained model (eval mode), its config, the training data's meta and where it came from."""

    model: torch.nn.Module
    cfg: Config
    data_meta: dict[str, Any]
    source: dict[str, Any]
    epoch: int | None = None

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        value = self.data_meta.get("preprocessing")
        return value if isinstance(value, dict) else None


def load_model(path: str | Path, device: str | torch.device = "cpu", source: dict[str, Any] | None = None) -> LoadedModel:
    """The model in the local checkpoint `path` (a file or a folder holding ``checkpoint.pt``). `source` says
    where it came from (an MLflow run: the CLI fetched it through `supuq.tracking.checkpoints` first)."""
    path = Path(path)
    return _loaded(load_checkpoint(path), source or {"kind": "checkpoint", "path": str(path.resolve())}, device)


def _loaded(state: dict[str, Any], source: dict[str, Any], device) -> LoadedModel:
    from ..models import build_model

    cfg = checkpoint_config(state)
    model = load_weights(build_model(cfg.model, cfg.loss), state, str(source.get("path", source.get("ref"))))
    try:
        meta = json.loads(state.get("data_meta") or "{}")
    except (TypeError, json.JSONDecodeError):
        meta = {}
    epoch = state.get("epoch")
    return LoadedModel(model.to(device).eval(), cfg, meta if isinstance(meta, dict) else {}, source,
                       int(epoch) if epoch is not None else None)


# --- geometry of the predicted region ---------------------------------------------------------------------


def training_size(cfg: Config, preprocessing: dict[str, Any] | None, data_meta: dict[str, Any] | None = None) -> int:
    """The side of the square images the model was trained on: the recorded preprocessing ``size``, else the
    cache's ``size``, else the synthetic size or ``data.crop`` of the config."""
    for source in (preprocessing or {}, data_meta or {}):
        size = source.get("size")
        if isinstance(size, (list, tuple)) and len(size) == 2:
            return int(size[0])
    return cfg.data.synthetic.size if cfg.data.dataset == "synthetic" else cfg.data.crop


def _parse_crop(crop: str | int | None, trained: int) -> tuple[str, int]:
    """("centre", N) or ("full", training size) from None (the training size), an integer, or "full"."""
    if crop is None or str(crop).lower() in ("", "train", "training"):
        return "centre", trained
    if str(crop).lower() == "full":
        return "full", trained
    text = str(crop)
    if not text.isdigit() or int(text) < 1:
        raise SupuqError(f"--crop must be a positive number of pixels or 'full', got {crop!r}")
    return "centre", int(text)


# --- prediction -------------------------------------------------------------------------------------------


def predict_volume(
    model: torch.nn.Module,
    cfg: Config,
    image,
    samples: int = 50,
    weight_samples: int = 5,
    crop: str | int | None = None,
    preprocessing: dict[str, Any] | None = None,
    slices: np.ndarray | list[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    keep_samples: bool = False,
    progress: bool = False,
    info: dict[str, Any] | None = None,
    data_meta: dict[str, Any] | None = None,
    overlap: float = 0.5,
) -> dict[str, Any]:
    """Uncertainty maps of a 2-D image or 3-D volume, as SimpleITK images in its geometry.

    image: SimpleITK image, 2-D [X,Y] or 3-D [X,Y,Z] (arrays [Y,X] / [Z,Y,X]); grey or identical-channel colour.
    samples: S binary samples per pixel, drawn as M = weight_samples weight samples x K = S / M latent samples
    (1 x S for a method that samples no weights, `sampling_grid`). crop: None (centre crop of the training
    size), an integer N (centre crop N x N) or "full" (tiles of the training size overlapping by `overlap` of a tile, blended with
    Gaussian weights: `supuq.predict.tiles`). preprocessing: the checkpoint's record (see
    `preprocess`). slices: indices of the axial slices to predict (default all; others stay 0). seed: the
    sampling seed (the caller's torch RNG state is restored afterwards). info: filled with the details
    (crop region, grid, applied preprocessing, per-slice total, the preprocessed image [Z,Y,X] as "_image").

    Returns {"pm", "aleatoric", "epistemic", "total": float32 images, "consensus": uint8 image (pm > 0.5),
    and with `keep_samples` "samples": uint8 image one dimension up ([X,Y,Z,S] or [X,Y,S])}, each with the
    input's origin, spacing and direction.
    """
    import SimpleITK as sitk

    info = info if info is not None else {}
    image = scalar_image(image)
    if cfg.model.in_channels != 1:
        raise SupuqError(f"the model takes {cfg.model.in_channels} input channels; predict handles 1")
    if samples < 1 or weight_samples < 1:
        raise SupuqError(f"samples ({samples}) and weight samples ({weight_samples}) must be positive")
    samples_weights = registry.method(cfg.model.method).samples_weights(cfg.model)
    if samples_weights and samples % weight_samples:  # the user's M is kept or refused, never silently lowered
        raise SupuqError(f"samples ({samples}) must be a multiple of weight samples ({weight_samples})")
    m, k = registry.sampling_grid(cfg.model, samples, weight_samples)

    array = sitk.GetArrayFromImage(image)
    volume = array[None] if array.ndim == 2 else array  # [Z, Y, X]
    x, applied = preprocess(volume, preprocessing, uint8_input=image.GetPixelID() == sitk.sitkUInt8)
    trained = training_size(cfg, preprocessing, data_meta)
    mode, size = _parse_crop(crop, trained)
    factor = 2 ** (len(cfg.model.num_filters) - 1)  # the U-Net halves the resolution this many times
    if size % factor:
        raise SupuqError(f"crop {size} is not a multiple of {factor} (the U-Net's downsampling); choose another")
    z_total, h, w = x.shape
    chosen = np.arange(z_total) if slices is None else np.unique(np.asarray(slices, dtype=np.int64))
    if chosen.size and (chosen.min() < 0 or chosen.max() >= z_total):
        raise SupuqError(f"slice indices must lie in 0..{z_total - 1}")
    windows = [centre_window(h, w, size)] if mode == "centre" else tile_windows(h, w, size, overlap)
    warnings = info.setdefault("warnings", [])
    if mode == "centre" and (size < h or size < w):
        covered = min(size, h) * min(size, w) / (h * w)
        warnings.append(f"the centre crop ({size} px, the training size) covers {covered:.0%} of the {h}x{w} slice "
                        "and the maps are 0 outside it: use --crop full to predict the whole slice")
    blended = mode == "full" and overlap > 0
    jobs = [(int(z), win) for z in chosen for win in windows]

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    batch = batch_size or cfg.eval.batch_size
    weights = blend_weights(size) if blended else np.ones((size, size), np.float32)
    blender = MapBlender(("pm", "aleatoric", "epistemic", "total"), (z_total, h, w), weights,
                         m * k if keep_samples else 0)
    started = time.perf_counter()
    with _progress_bar(progress, len(jobs)) as advance, _seeded(seed, device):
        for start in range(0, len(jobs), batch):
            part = jobs[start : start + batch]
            tiles = np.zeros((len(part), 1, size, size), np.float32)  # zero padding = training padding
            for i, (z, win) in enumerate(part):
                tiles[i, 0, win.dst_y, win.dst_x] = x[z, win.src_y, win.src_x]
            logits = predict_samples(model, torch.from_numpy(tiles).to(device), m, k).float()  # [B,M,K,s,s]
            binary = registry.binary_samples(model.model_cfg, logits)
            parts = decompose_probabilities(torch.sigmoid(logits))  # the maps of the samples' probabilities
            out = {"pm": torch.sigmoid(logits).mean(dim=(1, 2)), "aleatoric": parts.aleatoric,
                   "epistemic": parts.epistemic, "total": parts.total}
            out = {name: value.cpu().numpy() for name, value in out.items()}
            flat = binary.flatten(1, 2).cpu().numpy() if keep_samples else None  # [B, S, s, s]
            for i, (z, win) in enumerate(part):
                blender.add(z, win, {name: value[i] for name, value in out.items()},
                            flat[i] if flat is not None else None)
            advance(len(part))
    maps = blender.maps()
    kept = blender.kept
    consensus = (maps["pm"] > 0.5).astype(np.uint8)

    region = ({"mode": "centre", "size": size, "rows": [windows[0].src_y.start, windows[0].src_y.stop],
               "cols": [windows[0].src_x.start, windows[0].src_x.stop]} if mode == "centre"
              else {"mode": "full", "tile": size, "overlap": overlap, "tiles_per_slice": len(windows),
                    "blend": f"gaussian, sigma = {BLEND_SIGMA:g} tile" if blended
                    else "none (equal weights where the edge tiles overlap)"})
    info.update(
        preprocessing={**(preprocessing or {}), "applied": applied},
        crop={**region, "training_size": trained, "outside": "maps are 0 outside the predicted region"},
        grid={"samples": m * k, "weight_samples": m, "latent_samples": k, "weight_noise": samples_weights,
              "seed": seed},
        slices_predicted=[int(z) for z in chosen],
        device=str(device),
        model_seconds=round(time.perf_counter() - started, 3),
        slice_total=maps["total"].sum(axis=(1, 2)).tolist(),
        _image=x,
    )
    squeeze = array.ndim == 2
    result = {name: image_like(value[0] if squeeze else value, image) for name, value in maps.items()}
    result["consensus"] = image_like(consensus[0] if squeeze else consensus, image)
    if kept is not None:
        result["samples"] = stacked_like(kept[:, 0] if squeeze else kept, image)
    return result


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch for the sampling and restore the caller's RNG state afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int):
    """Yields advance(n); a rich progress bar over the model inputs when enabled."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("crops/tiles")) as bar:
        task = bar.add_task("predict", total=total)
        yield lambda n: bar.advance(task, n)


# --- files in, files out (the readers and writers are `supuq.predict.io`) ---------------------------------


@dataclass
class PredictOutcome:
    """Where the outputs went: the folder, each output's file, and the prediction.json content."""

    out_dir: Path
    files: dict[str, Path]
    details: dict[str, Any] = field(default_factory=dict)


def predict(
    checkpoint: str | Path,
    input_path: str | Path,
    out_dir: str | Path,
    samples: int = 50,
    weight_samples: int = 5,
    slices: str = "all",
    crop: str | int | None = None,
    fmt: str = "nifti",
    save_samples: bool = False,
    annotations: list[Path] | tuple[Path, ...] = (),
    device: str = "auto",
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
    preprocessing: dict[str, Any] | None = None,
    on_model: Callable[[LoadedModel], None] | None = None,
    overlap: float = 0.5,
    source: dict[str, Any] | None = None,
) -> PredictOutcome:
    """Run a trained model (a local checkpoint, see `load_model`) on an image file or DICOM series folder; write
    maps, prediction.json and overview.png.

    Checks the cheap things (input readable, output format possible, options) before loading the model.
    `preprocessing` overrides the checkpoint's record (API only). Returns a `PredictOutcome`.
    """
    import SimpleITK as sitk

    from ..train import resolve_device

    started = time.perf_counter()
    if slices not in ("all", "annotated"):
        raise SupuqError(f"--slices must be all or annotated, got {slices!r}")
    if not 0 <= overlap < 1:
        raise SupuqError(f"--overlap must be in [0, 1), got {overlap:g}")
    input_path = Path(input_path)
    image, input_info = read_input(input_path)
    ext = output_extension(input_path, fmt, input_info["kind"] == "dicom-series")
    image = scalar_image(image)
    chosen, used = (annotated_slices(image, input_path, annotations) if slices == "annotated" else (None, []))
    torch_device = resolve_device(device)
    out_dir = check_output_folder(out_dir)  # before the model runs: a bad --out is one line, not lost work
    loaded = load_model(checkpoint, torch_device, source)
    if on_model is not None:
        on_model(loaded)
    record = preprocessing if preprocessing is not None else loaded.preprocessing
    info: dict[str, Any] = {}
    maps = predict_volume(loaded.model, loaded.cfg, image, samples, weight_samples, crop, record, chosen,
                          batch_size, torch_device, seed, save_samples, progress, info, loaded.data_meta, overlap)

    files = write_maps(maps, out_dir, ext)
    image_x = info.pop("_image")
    overview = overview_figure(image_x, maps, info, out_dir / "overview.png")
    files["overview"] = overview

    pm = sitk.GetArrayViewFromImage(maps["pm"])
    total = sitk.GetArrayFromImage(maps["total"])
    total = total[None] if total.ndim == 2 else total  # [Z, Y, X]
    predicted = info["slices_predicted"]
    details = {
        "input": {**input_info, "dimension": image.GetDimension(), "size": list(image.GetSize()),
                  "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()),
                  "direction": list(image.GetDirection()), "pixel_type": image.GetPixelIDTypeAsString()},
        "model": {**loaded.source, "method": loaded.cfg.model.method, "dataset": loaded.cfg.data.dataset,
                  "epoch": loaded.epoch, "weight_noise": loaded.cfg.model.weight_noise.enabled},
        "preprocessing": info["preprocessing"],
        "crop": info["crop"],
        "sampling": {**info["grid"], "binary_sample": registry.BINARY_RULES[registry.method(loaded.cfg.model.method).binary],
                     "pm": "mean sigmoid probability over all samples", "consensus": "pm > 0.5",
                     "decomposition": "p_m = mean_k sigmoid(logit_mk); aleatoric = mean_m p_m(1-p_m); epistemic = "
                     "var_m p_m; total = pbar(1-pbar) = aleatoric + epistemic"},
        "slices": {"mode": slices, "predicted": info["slices_predicted"], "count": len(info["slices_predicted"]),
                   "annotations": used, "axis": "axial (array axis 0, image index z)"},
        "format": {"requested": fmt, "extension": ext},
        "outputs": {name: path.name for name, path in files.items()},
        "summary": {"consensus_pixels": int((pm > 0.5).sum()), "max_total": float(total.max()),
                    "mean_total_predicted_slices": float(total[predicted].mean()) if predicted else 0.0},
        "overview_slices": info.get("overview_slices", []),
        "warnings": info.get("warnings", []),
        "device": info["device"],
        "seconds": {"model": info["model_seconds"], "total": round(time.perf_counter() - started, 3)},
    }
    json_path = out_dir / "prediction.json"
    json_path.write_text(json.dumps(details, indent=2, default=str))
    files["prediction"] = json_path
    return PredictOutcome(out_dir, files, details)
