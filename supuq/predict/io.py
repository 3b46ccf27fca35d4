"""Files in and out of `supuq predict`: reading a 2-D image, a 3-D volume or a DICOM series folder with
SimpleITK, annotation masks beside it, and writing the maps in the input's geometry (origin, spacing and
direction copied), in ``nifti`` or the input's own format, plus the ``overview.png`` of the slices of highest
total uncertainty. The model, the preprocessing checks and the prediction itself are `supuq.predict`.

SimpleITK and matplotlib are imported inside the functions that use them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SupuqError

_SAME_FORMATS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".tiff", ".tif")
_NO_FLOAT_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_DICOM_FILE = (".dcm", ".dicom", ".ima")
_ANNOTATION = re.compile(r"^(annotation_\d+|task\d+_seg\d+)(\.nii\.gz|\.mhd|\.mha|\.nii|\.nrrd)$", re.IGNORECASE)


# --- reading ----------------------------------------------------------------------------------------------


def read_input(path: str | Path):
    """(SimpleITK image, info) from a 2-D/3-D image file or a DICOM series folder; SupuqError if unreadable.

    A folder with several DICOM series uses the one with the most files (the others are listed in info).
    """
    import SimpleITK as sitk

    from ..data.prostate import _check_nifti_complete, _itk_reason

    path = Path(path)
    if not path.exists():
        raise SupuqError(f"{path}: no such file or folder")
    info: dict[str, Any] = {"path": str(path.resolve())}
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = list(reader.GetGDCMSeriesIDs(str(path)) or ())
            if not series:
                raise SupuqError(f"{path}: a folder, but it holds no DICOM series")
            files = {uid: reader.GetGDCMSeriesFileNames(str(path), uid) for uid in series}
            chosen = max(series, key=lambda uid: len(files[uid]))
            reader.SetFileNames(files[chosen])
            image = reader.Execute()
            info.update(kind="dicom-series", series_uid=chosen, files=len(files[chosen]),
                        other_series=[uid for uid in series if uid != chosen])
        else:
            image = sitk.ReadImage(str(path))
            info.update(kind="file")
    except RuntimeError as err:
        raise SupuqError(f"{path}: unreadable or truncated image ({_itk_reason(err)})") from None
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path)  # ITK zero-fills a truncated NIfTI silently
    return image, info


def scalar_image(image):
    """A single-component version of `image`: identical components (grey saved as RGB) collapse to one."""
    import SimpleITK as sitk

    if image.GetDimension() not in (2, 3):
        raise SupuqError(f"expected a 2-D image or a 3-D volume, got a {image.GetDimension()}-D image")
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return image
    # Copies, not views: a view of the temporary each cast returns points at memory freed with it, and two such
    # views could compare equal whatever the channels held.
    parts = [sitk.GetArrayFromImage(sitk.VectorIndexSelectionCast(image, i)) for i in range(n)]
    colour = parts[:3] if n == 4 else parts  # RGBA: alpha may differ from the grey channels
    if any(not np.array_equal(colour[0], p) for p in colour[1:]):
        raise SupuqError(f"a {n}-channel colour image; the model takes one grey channel (convert it to grey first)")
    return sitk.VectorIndexSelectionCast(image, 0)


def output_extension(input_path: Path, fmt: str, is_dicom: bool) -> str:
    """.nii.gz for ``nifti`` and DICOM inputs; the input's extension for ``same`` (refused for 8-bit formats)."""
    if fmt not in ("nifti", "same"):
        raise SupuqError(f"--format must be nifti or same, got {fmt!r}")
    name = input_path.name.lower()
    if fmt == "nifti" or is_dicom or name.endswith(_DICOM_FILE):
        return ".nii.gz"
    for ext in _SAME_FORMATS:
        if name.endswith(ext):
            return ext
    if name.endswith(_NO_FLOAT_FORMATS):
        raise SupuqError(f"--format same: {input_path.suffix} cannot hold floating-point maps; use --format nifti")
    raise SupuqError(f"--format same: unsupported output extension for {input_path.name}; use --format nifti")


def annotated_slices(image, input_path: Path, annotations: list[Path] | tuple[Path, ...] = ()) -> tuple[np.ndarray, list[str]]:
    """Indices of the axial slices where any annotation is non-zero, and the annotation files used.

    annotations: mask files in the input's geometry; when none are given, the input's siblings in the
    MICCAI2012 (``annotation_<k>.<ext>``) or QUBIQ (``task0T_seg0R.<ext>``) layouts are used.
    """
    import SimpleITK as sitk

    from ..data.prostate import _read

    files = [Path(p) for p in annotations]
    if not files and input_path.is_file():
        files = sorted(p for p in input_path.parent.iterdir() if _ANNOTATION.match(p.name))
    if not files:
        raise SupuqError(f"--slices annotated: no annotation files given (--annotation) or found beside {input_path}")
    shape = sitk.GetArrayViewFromImage(image).shape
    z = shape[0] if len(shape) == 3 else 1
    marked = np.zeros(z, bool)
    for path in files:
        mask_image, array = _read(path)  # [Z, Y, X]
        if mask_image.GetSize() != image.GetSize():
            raise SupuqError(f"{path}: size {mask_image.GetSize()} differs from the input's {image.GetSize()}")
        marked |= array.reshape(array.shape[0], -1).any(axis=1)
    if not marked.any():
        raise SupuqError(f"--slices annotated: every annotation is empty ({', '.join(p.name for p in files)})")
    return np.flatnonzero(marked), [str(p) for p in files]


# --- writing ----------------------------------------------------------------------------------------------


def image_like(array: np.ndarray, reference):
    """A SimpleITK image of `array` with `reference`'s origin, spacing and direction."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(array, isVector=False)  # the default guesses a vector image from the shape
    out.CopyInformation(reference)
    return out


def stacked_like(array: np.ndarray, reference):
    """[S, *reference array shape] as an image one dimension up: the new last axis has spacing 1, origin 0."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(array, isVector=False)  # the default guesses a vector image from the shape
    d = reference.GetDimension()
    out.SetOrigin((*reference.GetOrigin(), 0.0))
    out.SetSpacing((*reference.GetSpacing(), 1.0))
    direction = np.eye(d + 1)
    direction[:d, :d] = np.asarray(reference.GetDirection()).reshape(d, d)
    out.SetDirection(tuple(direction.ravel()))
    return out


def write_maps(maps: dict[str, Any], out_dir: Path, ext: str) -> dict[str, Path]:
    """Write each image of `maps` as ``<out_dir>/<name><ext>`` (compressed); returns {name: path}."""
    import SimpleITK as sitk

    files: dict[str, Path] = {}
    for name, out_image in maps.items():
        path = out_dir / f"{name}{ext}"
        try:
            sitk.WriteImage(out_image, str(path), useCompression=True)
        except RuntimeError as err:
            from ..data.prostate import _itk_reason

            raise SupuqError(f"{path}: cannot write ({_itk_reason(err)})") from None
        files[name] = path
    return files


def overview_figure(image_x: np.ndarray, maps: dict[str, Any], info: dict[str, Any], out: Path, count: int = 4) -> Path:
    """PNG: the `count` predicted slices of highest summed total uncertainty, one row each: the preprocessed
    image with the consensus (pm > 0.5) outlined, pm, aleatoric, epistemic and total (aleatoric and total on the
    fixed 0..0.25 scale of a Bernoulli variance; epistemic on its own, usually far smaller, scale). The
    centre-crop mode shows the crop region; full mode the whole slice. Records the slices in info."""
    import SimpleITK as sitk
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = ("pm", "aleatoric", "epistemic", "total", "consensus")
    arrays = {name: sitk.GetArrayFromImage(maps[name]) for name in names}
    if arrays["pm"].ndim == 2:
        arrays = {name: a[None] for name, a in arrays.items()}
    predicted = np.asarray(info["slices_predicted"], dtype=np.int64)
    totals = np.asarray(info["slice_total"])[predicted] if predicted.size else np.zeros(0)
    order = predicted[np.argsort(-totals, kind="stable")][:count] if predicted.size else np.zeros(0, np.int64)
    shown = sorted(int(z) for z in order)
    info["overview_slices"] = shown
    crop = info["crop"]
    rows_, cols_ = (slice(*crop["rows"]), slice(*crop["cols"])) if crop["mode"] == "centre" else (slice(None), slice(None))
    panels = (("image + consensus", None, "gray", 0, 1), ("pm", "pm", "viridis", 0, 1),
              ("aleatoric", "aleatoric", "magma", 0, 0.25), ("epistemic", "epistemic", "magma", 0,
                                                             max(float(arrays["epistemic"].max()), 1e-6)),
              ("total", "total", "magma", 0, 0.25))
    fig = Figure(figsize=(2.6 * len(panels), 2.6 * max(len(shown), 1) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    for r, z in enumerate(shown or [0]):
        for c, (title, key, cmap, vmin, vmax) in enumerate(panels):
            ax = fig.add_subplot(max(len(shown), 1), len(panels), r * len(panels) + c + 1)
            data = image_x[z] if key is None else arrays[key][z]
            handle = ax.imshow(data[rows_, cols_], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            if key is None and arrays["consensus"][z][rows_, cols_].any():
                ax.contour(arrays["consensus"][z][rows_, cols_], levels=[0.5], colors="#00e5ff", linewidths=0.9)
            ax.set_title(f"{title}, slice {z}" if c == 0 else title, fontsize=8)
            ax.set_axis_off()
            if key is not None:
                bar = fig.colorbar(handle, ax=ax, fraction=0.046, pad=0.02)
                bar.ax.tick_params(labelsize=6)
                bar.formatter.set_powerlimits((-2, 3))  # 1e-6-scale epistemic: the exponent sits on top, small
                bar.ax.yaxis.get_offset_text().set_fontsize(6)
    fig.suptitle("highest-uncertainty slices" + ("" if shown else " (no slice predicted)"), fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out
