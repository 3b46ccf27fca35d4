"""IoU distances between sets of masks and the GED, batched and pure torch (docs/architecture.md, Metrics).

- GED: D^2_GED = 2 E d(S,Y) - E d(S,S') - E d(Y,Y') with d = 1 - IoU, d(empty, empty) = 0 and d = 1 when exactly
  one mask is empty. The self terms average over all ordered pairs including i == j (a V-statistic, as in the
  authors' and PHiSeg's code), so the GED of a set against itself is exactly 0.
- `pairwise_iou` / `pairwise_distance`: the IoU matrix of two sets of masks per image (IoU(empty, empty) = 1),
  also the cost matrix of the Hungarian-matched IoU (`matching.hm_iou`).

Pairwise IoUs come from one matrix product of the flattened masks per image (a Gram matrix), so there is no Python
loop over pairs. Intersections of {0,1} masks are integer counts: on the CPU they are an int8 x int8 -> int32 matrix
product (exact, and a quarter of float32's memory traffic: 0.34 vs 1.85 ms per image for dense 128x128 masks with
S=50, D=4 on 2 cores, bench/ged.py), elsewhere float32 (exact below 2^24 pixels per mask). The IoU division is done
in float64 so values agree with a double loop to ~1e-15.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# float32 holds every integer up to 2^24 exactly, so counts of up to this many pixels are exact in a float32 matmul.
_EXACT_FLOAT32_PIXELS = 2**24


def _as_bool(masks: Tensor) -> Tensor:
    """Masks as bool (nonzero is foreground); bool input is returned as is (`!= 0` on it costs a full pass)."""
    return masks if masks.dtype == torch.bool else masks != 0


def _count_dtype(pixels: int) -> torch.dtype:
    return torch.float32 if pixels <= _EXACT_FLOAT32_PIXELS else torch.float64


def _ious_from_gram(gram: Tensor, sizes_a: Tensor, sizes_b: Tensor) -> Tensor:
    """IoU from intersections [n,S,T] and mask sizes [n,S], [n,T]; float64 [n,S,T].

    union = |a| + |b| - |a & b|; union == 0 only when both masks are empty, where the IoU is defined as 1 (two
    empty masks agree). When exactly one mask is empty the intersection is 0 and the union positive, so IoU = 0
    falls out of the formula.
    """
    inter = gram.to(torch.float64)
    union = sizes_a.to(torch.float64).unsqueeze(-1) + sizes_b.to(torch.float64).unsqueeze(-2) - inter
    both_empty = union == 0
    iou = inter / torch.where(both_empty, torch.ones_like(union), union)
    return torch.where(both_empty, torch.ones_like(iou), iou)


def _distances_from_gram(gram: Tensor, sizes_a: Tensor, sizes_b: Tensor) -> Tensor:
    """d = 1 - IoU (`_ious_from_gram`: d(empty, empty) = 0, d = 1 when exactly one is empty); float64 [n,S,T]."""
    return 1.0 - _ious_from_gram(gram, sizes_a, sizes_b)


def _exact_matmul(a: Tensor, b: Tensor) -> Tensor:
    """Batched a @ b^T with autocast off: under bf16/fp16 autocast the counts would be rounded."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return torch.bmm(a, b.transpose(1, 2))


def _int8_gram_works() -> bool:
    """Whether torch._int_mm (a private op) exists on the CPU and gives exact counts on a small case."""
    try:
        x = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 1], [1, 1, 0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0]],
                         dtype=torch.int8)
        return torch.equal(torch._int_mm(x, x.T), x.int() @ x.int().T)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_INT8_GRAM_ON_CPU = _int8_gram_works()


def _gram_pair(a: Tensor, b: Tensor) -> Tensor:
    """Intersections a @ b^T of int8 {0,1} masks a [S,P], b [T,P] (P a multiple of 8); int32 [S,T]."""
    return torch._int_mm(a, b.T)


def _gram(x: Tensor) -> Tensor:
    """Intersections x @ x^T per image: x is [c,k,P] with {0,1} values, int8 (CPU) or float; returns [c,k,k]
    (int32 from int8, otherwise x's dtype). _int_mm has no batched form, so int8 goes image by image; P must be a
    multiple of 8 there (torch's CPU kernel gives wrong counts for P == 1, so callers pad)."""
    if x.dtype == torch.int8:
        return torch.stack([_gram_pair(xi, xi) for xi in x])
    return _exact_matmul(x, x)


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """All pairwise IoUs between two sets of flattened masks, IoU(empty, empty) = 1.

    a: [N,S,P], b: [N,T,P], {0,1} (bool or numeric; nonzero is foreground). Returns float64 [N,S,T].
    """
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(f"pairwise IoU expects [N,S,P] and [N,T,P], got {tuple(a.shape)} and {tuple(b.shape)}")
    dtype = _count_dtype(a.shape[2])
    a = _as_bool(a).to(dtype)
    b = _as_bool(b).to(dtype)
    return _ious_from_gram(_exact_matmul(a, b), a.sum(-1), b.sum(-1))


def pairwise_distance(a: Tensor, b: Tensor) -> Tensor:
    """All pairwise d = 1 - IoU between two sets of flattened masks (`pairwise_iou`): a [N,S,P], b [N,T,P] ->
    float64 [N,S,T]."""
    return 1.0 - pairwise_iou(a, b)


def _terms_from_grams(gss: Tensor, gsy: Tensor, gyy: Tensor) -> Tensor:
    """(cross, sample diversity, annotation diversity) per image, float64 [c,3], from the intersection counts
    samples x samples [c,S,S], samples x annotations [c,S,D] and annotations x annotations [c,D,D]."""
    size_s = torch.diagonal(gss, dim1=1, dim2=2)  # |x & x| = |x|
    size_y = torch.diagonal(gyy, dim1=1, dim2=2)
    return torch.stack(
        (
            _distances_from_gram(gsy, size_s, size_y).mean(dim=(1, 2)),
            _distances_from_gram(gss, size_s, size_s).mean(dim=(1, 2)),
            _distances_from_gram(gyy, size_y, size_y).mean(dim=(1, 2)),
        ),
        dim=1,
    )


@dataclass(frozen=True)
class GedTerms:
    """The three expectations of the GED and the GED itself, each float64 [N].

    cross = E d(S,Y); sample_diversity = E d(S,S'); annotation_diversity = E d(Y,Y');
    ged = 2 cross - sample_diversity - annotation_diversity.
    """

    ged: Tensor
    cross: Tensor
    sample_diversity: Tensor
    annotation_diversity: Tensor


def _check_sets(samples: Tensor, annotations: Tensor) -> None:
    if samples.ndim != 4 or annotations.ndim != 4:
        raise ValueError(
            f"expected samples [N,S,H,W] and annotations [N,D,H,W], got {tuple(samples.shape)} and "
            f"{tuple(annotations.shape)}"
        )
    if samples.shape[0] != annotations.shape[0] or samples.shape[2:] != annotations.shape[2:]:
        raise ValueError(
            f"samples {tuple(samples.shape)} and annotations {tuple(annotations.shape)} differ in N, H or W"
        )


def _as_units(masks: Tensor) -> Tensor:
    """{0,1} masks [n,k,P] as a contiguous tensor of 8-pixel units (int64 words, a free view of bool memory), or of
    single pixels (uint8) when P or the memory offset does not allow words. Reductions and gathers then move 8
    pixels per element."""
    masks = _as_bool(masks).contiguous()
    if masks.shape[-1] % 8 == 0 and masks.storage_offset() % 8 == 0:
        try:
            return masks.view(torch.int64)
        except RuntimeError:
            pass
    return masks.view(torch.uint8)


def _similar_runs(widths: list[int], chunk: int, slack: int = 64) -> list[tuple[int, int]]:
    """Split ascending `widths` into runs of at most `chunk` whose widest is at most 1.25 x its narrowest + `slack`,
    so that padding every image of a run to its widest wastes little (a few outliers get small runs of their own)."""
    runs, start = [], 0
    for i in range(1, len(widths) + 1):
        if i == len(widths) or i - start == chunk or widths[i] > 1.25 * widths[start] + slack:
            runs.append((start, i))
            start = i
    return runs


def ged_terms(samples: Tensor, annotations: Tensor, chunk: int = 32) -> GedTerms:
    """GED and its terms per image, computed from one Gram matrix per chunk of images.

    samples: bool [N,S,H,W]; annotations: bool [N,D,H,W] (numeric {0,1} accepted, converted to bool once; nonzero
    is foreground). chunk: images per batched matmul. Extra memory: at most about chunk * (S+D) * H*W * 2 bytes
    (gathered pixels and their int8 copy; 5 bytes with the float32 copy used off the CPU) plus N * H*W / 8 bytes for
    the images' unions, whatever N is.
    Returns a `GedTerms` of float64 [N] tensors on the inputs' device.

    A pixel outside all S+D masks of an image adds nothing to any of that image's intersections or mask sizes, so
    each image's masks are compacted to the pixels of their union before the matmul (exact for any input; on
    lesion data the union is a few percent of the image). The compaction works on 8-pixel words (a word is kept
    when any of its pixels is in the union), so gathers move 8 pixels at a time. Images are taken in order of
    union size so that the images of a chunk pad little; the results are put back in input order. Images whose
    union covers more than half the image gain little from compaction: on the CPU their int8 views are multiplied
    as they are (dense masks: no gather, no copy).
    """
    _check_sets(samples, annotations)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n, s = samples.shape[:2]
    d = annotations.shape[1]
    pixels = samples.shape[2] * samples.shape[3]
    device = samples.device
    # int8 counts on the CPU (exact in int32); float32/float64 elsewhere, where batched float matmuls are fast.
    dtype = torch.int8 if device.type == "cpu" and _INT8_GRAM_ON_CPU else _count_dtype(pixels)
    s_units = _as_units(samples.flatten(2))  # [N,S,U]
    y_units = _as_units(annotations.flatten(2))  # [N,D,U]
    if s_units.dtype != y_units.dtype:  # one of them could not be viewed as words: use bytes for both
        s_units, y_units = s_units.view(torch.uint8), y_units.view(torch.uint8)
    per_unit = s_units.element_size()  # pixels per unit
    units = pixels // per_unit
    # Pass 1, chunk by chunk: which units of each image are in the union of its S+D masks.
    union = torch.empty(n, units, dtype=torch.bool, device=device)
    for i in range(0, n, chunk):
        # Max over the masks of each pixel's byte (uint8 reductions are fast), then "any pixel of the unit".
        u = torch.zeros(min(chunk, n - i), pixels, dtype=torch.uint8, device=device)
        for part in (s_units[i : i + chunk], y_units[i : i + chunk]):
            if part.shape[1]:
                torch.maximum(u, part.view(torch.uint8).amax(dim=1), out=u)
        union[i : i + chunk] = u.view(s_units.dtype) != 0
    counts = union.sum(dim=1)
    order = torch.argsort(counts, stable=True)
    widths = counts[order].tolist()  # one host sync for all chunks
    terms = torch.zeros(n, 3, dtype=torch.float64, device=device)
    s_flat, y_flat = s_units.reshape(-1), y_units.reshape(-1)
    runs = _similar_runs(widths, chunk, slack=max(1, 64 // per_unit))
    # Runs whose union covers most of the image gain little from compaction and would pay for the gather: with int8
    # counts they multiply zero-copy int8 views of the inputs instead (pixels % 8 == 0 for the int8 kernel).
    whole_ok = dtype == torch.int8 and pixels % 8 == 0
    whole, compact = [], []
    for run in runs:
        (whole if whole_ok and 2 * widths[run[1] - 1] * per_unit > pixels else compact).append(run)
    s_i8 = s_units.view(torch.int8).view(n, s, pixels)  # the bool bytes as int8 {0,1}: no copy
    y_i8 = y_units.view(torch.int8).view(n, d, pixels)
    for start, stop in whole:
        images = order[start:stop]
        grams = [
            torch.stack([_gram_pair(a[i], b[i]) for i in images.tolist()])
            for a, b in ((s_i8, s_i8), (s_i8, y_i8), (y_i8, y_i8))
        ]
        terms[images] = _terms_from_grams(*grams)
    # One buffer for all compacted runs, sized for the largest: a fresh large tensor per run would be a fresh mmap
    # that the kernel page-faults in. Columns are padded to a multiple of 8 (zeros add nothing to any count) for
    # the int8 kernel.
    cols = [-(-widths[stop - 1] * per_unit // 8) * 8 for _, stop in compact]
    buffer = torch.empty(max((c * (stop - start) for c, (start, stop) in zip(cols, compact)), default=0) * (s + d),
                         dtype=dtype, device=device)
    # Pass 2: runs of at most `chunk` images of similar union size, each padded to its widest.
    for (start, stop), width_cols in zip(compact, cols):
        width = widths[stop - 1]
        if width == 0:
            continue  # every mask of these images is empty: all their distances are 0
        images = order[start:stop]
        # Keep `width` units per image: its union, then the first units outside it as padding (0 in every mask of
        # that image, so they add 0 to every count). nonzero() lists them in order, row by row.
        inside = union.index_select(0, images)
        outside = ~inside
        pad = (width - inside.sum(1, keepdim=True)).to(torch.int32)
        keep = inside | (outside & (outside.to(torch.int32).cumsum(1) <= pad))
        pos = keep.nonzero()[:, 1].view(len(images), 1, width)
        # Gather straight from the inputs (no copy of whole images): flat index (image * k + mask) * U + unit.
        parts = []
        for flat, k in ((s_flat, s), (y_flat, d)):
            rows = (images[:, None, None] * k + torch.arange(k, device=device)[None, :, None]) * units
            parts.append(flat.take(rows + pos).view(torch.uint8))  # [c,k,width*per_unit] pixel bytes
        # Stack samples and annotations so that one product gives all S+D by S+D intersections: the SS, SY and YY
        # blocks are read off the same Gram matrix. copy_ casts the bytes straight into the shared buffer.
        x = buffer[: len(images) * (s + d) * width_cols].view(len(images), s + d, width_cols)
        x[:, :s, : width * per_unit].copy_(parts[0])
        x[:, s:, : width * per_unit].copy_(parts[1])
        x[:, :, width * per_unit :].zero_()
        gram = _gram(x)
        terms[images] = _terms_from_grams(gram[:, :s, :s], gram[:, :s, s:], gram[:, s:, s:])
    cross, div_s, div_y = terms.unbind(1)
    return GedTerms(ged=2 * cross - div_s - div_y, cross=cross, sample_diversity=div_s, annotation_diversity=div_y)


def ged(samples: Tensor, annotations: Tensor, chunk: int = 32) -> Tensor:
    """Squared generalised energy distance D^2_GED per image.

    samples: bool [N,S,H,W]; annotations: bool [N,D,H,W]. Returns float64 [N]. The reported GED is the mean of
    this over all test images, empty ones included. See `ged_terms` for the memory bound set by `chunk`.
    """
    return ged_terms(samples, annotations, chunk).ged


def expected_distance(samples: Tensor, annotations: Tensor, chunk: int = 32) -> Tensor:
    """E d(S,Y) per image: the mean distance between a sample and an annotation. [N,S,H,W], [N,D,H,W] -> [N]."""
    _check_sets(samples, annotations)
    out = [
        pairwise_distance(samples[i : i + chunk].flatten(2), annotations[i : i + chunk].flatten(2)).mean(dim=(1, 2))
        for i in range(0, samples.shape[0], chunk)
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=samples.device)


def diversity(samples: Tensor, chunk: int = 32) -> Tensor:
    """E d(S,S') per image over all ordered pairs, i == j included (V-statistic). [N,S,H,W] -> float64 [N]."""
    if samples.ndim != 4:
        raise ValueError(f"diversity expects samples [N,S,H,W], got shape {tuple(samples.shape)}")
    out = []
    for i in range(0, samples.shape[0], chunk):
        flat = samples[i : i + chunk].flatten(2)
        out.append(pairwise_distance(flat, flat).mean(dim=(1, 2)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=samples.device)
