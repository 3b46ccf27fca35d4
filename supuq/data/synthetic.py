"""Embedded synthetic benchmark with a known ground-truth per-pixel grader probability.

Generative model (per image i, up to K=3 lesion slots k, D graders j):

- Lesion k has a smooth *field* f_k(x) = sigmoid((1 - r_k(x)) / w_k) in (0,1), where r_k is an elliptical,
  harmonically perturbed normalised radius (r = 1 on the "nominal" boundary) and w_k the rim width (how
  ambiguous the boundary is). The image shows the lesion as a bump of height ~ contrast c_k with a similar
  smooth profile, over a smoothed-noise texture plus white noise; images are clipped to [0,1].
- Grader j has a base threshold t_j (graders differ systematically, from generous to conservative) and, per
  image, a jitter e_ij ~ N(0, s^2). Its effective threshold is T_ij = clip(t_j + e_ij, lo, hi).
- Grader j misses lesion k independently with probability m_kj = sigmoid((c50_j - c_k) / tau): faint lesions
  are often missed, conservative graders (high t_j) miss more (higher c50_j).
- Grader j's mask is {x : f_k(x) > T_ij for some lesion k it did not miss} = {max_{k kept} f_k(x) > T_ij}.

Exact per-pixel probability (a uniformly random grader, fresh jitter, fresh misses). At a pixel sort the
lesion fields descending, f_(1) >= f_(2) >= ... (absent lesions have f = 0). Because the threshold is shared
by all of a grader's lesions, the pixel is marked iff the *first kept* lesion in that order exceeds T_ij, so

    p(x) = (1/D) sum_j sum_i [prod_{l<i} m_(l)j] (1 - m_(i)j) G_j(f_(i)(x)),
    G_j(f) = P(f > clip(t_j + e, lo, hi)) = 0 if f <= lo, 1 if f > hi, else Phi((f - t_j) / s).

(The clip makes G exact: for lo < f <= hi, f > clip(T) iff f > T.) Everything is vectorised numpy over
image chunks; determinism comes from one SeedSequence split into independent streams.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import expit, ndtr

from ..errors import DataError
from .preprocessing import unit_record
from .types import MultiGraderSet

MAX_LESIONS = 3
_CHUNK = 128  # images per vectorised chunk: bounds memory ([chunk, K, D, H, W] float32 temporaries)


@dataclass(frozen=True)
class SyntheticParams:
    """Generator knobs (any of them can be passed to `generate(**knobs)`); recorded in the cache meta."""

    lesion_count_probs: tuple[float, ...] = (0.2, 0.35, 0.3, 0.15)  # P(0..3 lesions); P(0) = lesion-free rate
    radius: tuple[float, float] = (0.07, 0.17)  # lesion semi-axes as a fraction of the image size
    rim: tuple[float, float] = (0.06, 0.25)  # field rim width w in normalised-radius units (ambiguity)
    harmonics: float = 0.12  # max amplitude of the 2nd/3rd angular harmonics (irregular outlines)
    contrast: tuple[float, float] = (0.1, 1.0)  # lesion contrast, drawn log-uniformly
    threshold_center: float = 0.5
    threshold_spread: float = 0.12  # grader base thresholds t_j evenly spaced in center +- spread
    jitter_std: float = 0.06  # s: per-(image, grader) threshold jitter
    clip: tuple[float, float] = (0.05, 0.95)  # (lo, hi) for the effective threshold
    miss_c50: float = 0.22  # contrast at which a middle grader misses a lesion half the time
    miss_c50_spread: float = 0.06  # c50_j spread, increasing with t_j (conservative graders miss more)
    miss_tau: float = 0.05  # softness of the miss curve in contrast units
    background: float = 0.2  # mean background intensity (a per-patient offset is added)
    patient_offset: float = 0.05  # per-patient background offset, uniform in +- this
    texture_std: float = 0.05  # amplitude of the smoothed-noise texture
    texture_sigma: float = 0.04  # texture correlation length as a fraction of the image size
    noise_std: float = 0.03  # white noise
    lesion_gain: float = 0.6  # image bump height = gain * contrast
    images_per_patient: int = 4

    def check(self) -> "SyntheticParams":
        probs = np.asarray(self.lesion_count_probs, dtype=float)
        if probs.shape != (MAX_LESIONS + 1,) or (probs < 0).any() or abs(probs.sum() - 1) > 1e-6:
            raise DataError(f"synthetic lesion_count_probs must be {MAX_LESIONS + 1} non-negative numbers summing to 1")
        lo, hi = self.clip
        if not 0 < lo < hi < 1:
            raise DataError(f"synthetic clip must satisfy 0 < lo < hi < 1, got {self.clip}")
        if self.jitter_std < 0 or self.miss_tau <= 0 or self.images_per_patient < 1:
            raise DataError("synthetic jitter_std must be >= 0, miss_tau > 0, images_per_patient >= 1")
        if self.harmonics < 0 or 2 * self.harmonics >= 1:
            raise DataError("synthetic harmonics must be in [0, 0.5) so the outline stays star-shaped")
        for name in ("radius", "rim", "contrast"):
            a, b = getattr(self, name)
            if not 0 < a <= b:
                raise DataError(f"synthetic {name} must be a range 0 < low <= high, got {(a, b)}")
        return self


@dataclass(frozen=True)
class SyntheticScene:
    """The latent scene of N images: lesion parameters and graders, from which fields, masks and p* follow.

    Per-lesion arrays are [N,K] (K = MAX_LESIONS slots, `active` marks the used ones); `harm_amp`/`harm_phase`
    are [N,K,2] (2nd and 3rd harmonic). `thresholds` and `miss_c50` are per grader, [D].
    """

    size: int
    params: SyntheticParams
    active: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    ry: np.ndarray
    rx: np.ndarray
    angle: np.ndarray
    harm_amp: np.ndarray
    harm_phase: np.ndarray
    rim: np.ndarray
    contrast: np.ndarray
    thresholds: np.ndarray
    miss_c50: np.ndarray

    def __len__(self) -> int:
        return int(self.active.shape[0])

    @property
    def graders(self) -> int:
        return int(self.thresholds.shape[0])

    def radius(self, index: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Normalised radius r [n,K,H,W] float32 (1 on the nominal outline) of the lesions of images `index`."""
        grid = np.arange(self.size, dtype=np.float32) + 0.5
        y = grid[None, None, :, None] - self.cy[index][..., None, None]
        x = grid[None, None, None, :] - self.cx[index][..., None, None]
        cos, sin = np.cos(self.angle[index])[..., None, None], np.sin(self.angle[index])[..., None, None]
        u = (x * cos + y * sin) / self.rx[index][..., None, None]
        v = (-x * sin + y * cos) / self.ry[index][..., None, None]
        theta = np.arctan2(v, u)
        amp, phase = self.harm_amp[index][..., None, None, :], self.harm_phase[index][..., None, None, :]
        wobble = (1 + amp[..., 0] * np.cos(2 * (theta - phase[..., 0]))
                  + amp[..., 1] * np.cos(3 * (theta - phase[..., 1])))
        return (np.sqrt(u * u + v * v) / wobble).astype(np.float32)

    def field(self, index: slice | np.ndarray = slice(None), radius: np.ndarray | None = None) -> np.ndarray:
        """Lesion fields f [n,K,H,W] float32 in [0,1); absent lesion slots are exactly 0."""
        r = self.radius(index) if radius is None else radius
        f = expit((1 - r) / self.rim[index][..., None, None]).astype(np.float32)
        return f * self.active[index][..., None, None]

    def miss_prob(self, index: slice | np.ndarray = slice(None)) -> np.ndarray:
        """m [n,K,D]: probability that grader j misses lesion k (independent over lesions and graders)."""
        c = self.contrast[index][..., None]
        return expit((self.miss_c50[None, None, :] - c) / self.params.miss_tau)

    def prob(self, index: slice | np.ndarray = slice(None), field: np.ndarray | None = None) -> np.ndarray:
        """Exact p* [n,H,W] float32 that a uniformly random grader marks each pixel (module docstring)."""
        f = self.field(index) if field is None else field  # [n,K,H,W]
        n, k, h, w = f.shape
        lo = self.params.clip[0]
        flat = f.transpose(0, 2, 3, 1).reshape(-1, k)  # [n*H*W, K]
        # Only pixels where some lesion field exceeds lo can ever be marked: work on those rows only.
        rows = np.flatnonzero(flat.max(axis=1) > lo)
        order = np.argsort(-flat[rows], axis=1, kind="stable")
        f_sorted = np.take_along_axis(flat[rows], order, axis=1)  # [P,K], descending over lesions
        m = self.miss_prob(index).astype(np.float32)[rows // (h * w)]  # [P,K,D]
        m_sorted = np.take_along_axis(m, order[..., None], axis=1)  # miss prob of the lesion ranked i
        # P(every lesion ranked before i is missed): exclusive cumulative product over the lesion axis.
        before = np.cumprod(np.concatenate([np.ones_like(m_sorted[:, :1]), m_sorted[:, :-1]], axis=1), axis=1)
        g = self._exceed_prob(f_sorted[..., None])  # [P,K,D]
        out = np.zeros(n * h * w, np.float32)
        out[rows] = (before * (1 - m_sorted) * g).sum(axis=1).mean(axis=1)
        return out.reshape(n, h, w)

    def _exceed_prob(self, f: np.ndarray) -> np.ndarray:
        """G_j(f) = P(f > clip(t_j + e, lo, hi)), e ~ N(0, s^2); f [...,1] -> [...,D]."""
        lo, hi = self.params.clip
        t = self.thresholds.astype(np.float32)
        s = self.params.jitter_std
        inner = ndtr((f - t) / s) if s > 0 else (f > t).astype(np.float32)
        return np.where(f > hi, 1.0, np.where(f > lo, inner, 0.0)).astype(np.float32)

    def sample(self, rng: np.random.Generator, index: slice | np.ndarray = slice(None),
               field: np.ndarray | None = None) -> np.ndarray:
        """One mask per grader for images `index`: uint8 [n,D,H,W] (slot j = grader j), fresh jitter and misses."""
        f = self.field(index) if field is None else field  # [n,K,H,W]
        n = f.shape[0]
        lo, hi = self.params.clip
        jitter = rng.normal(0.0, self.params.jitter_std, size=(n, self.graders)) if self.params.jitter_std > 0 else 0
        t_eff = np.clip(self.thresholds[None, :] + jitter, lo, hi).astype(np.float32)  # [n,D]
        kept = rng.random((n, MAX_LESIONS, self.graders)) >= self.miss_prob(index)  # [n,K,D]
        # Per grader, the max field over the lesions it kept; absent lesions have f = 0 <= lo, never marked.
        g = (f[:, :, None] * kept[..., None, None]).max(axis=1)  # [n,D,H,W]
        return (g > t_eff[..., None, None]).astype(np.uint8)


def _params(knobs: dict[str, Any]) -> SyntheticParams:
    names = {f.name for f in fields(SyntheticParams)}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise DataError(f"unknown synthetic generator knob(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in knobs.items()}
    return replace(SyntheticParams(), **clean).check()


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent (scene, image noise, grader draws) generators, so changing one never shifts the others."""
    scene, noise, graders = np.random.SeedSequence(seed).spawn(3)
    return np.random.default_rng(scene), np.random.default_rng(noise), np.random.default_rng(graders)


def make_scene(n: int, size: int = 64, graders: int = 4, seed: int = 0, **knobs: Any) -> SyntheticScene:
    """The latent lesions and graders behind `generate(n, size, graders, seed, **knobs)` (same seed, same scene)."""
    if n < 1 or size < 8 or graders < 1:
        raise DataError(f"synthetic needs n >= 1, size >= 8, graders >= 1 (got n={n}, size={size}, graders={graders})")
    p = _params(knobs)
    rng = _streams(seed)[0]
    shape = (n, MAX_LESIONS)
    count = rng.choice(MAX_LESIONS + 1, size=n, p=np.asarray(p.lesion_count_probs) / sum(p.lesion_count_probs))
    active = np.arange(MAX_LESIONS)[None, :] < count[:, None]
    margin = 0.2 * size  # keep centres away from the border so most of a lesion is in view
    cy = rng.uniform(margin, size - margin, shape)
    cx = rng.uniform(margin, size - margin, shape)
    radius = rng.uniform(*p.radius, shape) * size
    aspect = rng.uniform(0.6, 1.0, shape)  # elongation of the ellipse
    harm_amp = rng.uniform(0, p.harmonics, (*shape, 2))
    harm_phase = rng.uniform(0, 2 * np.pi, (*shape, 2))
    angle = rng.uniform(0, np.pi, shape)
    rim = rng.uniform(*p.rim, shape)
    contrast = np.exp(rng.uniform(np.log(p.contrast[0]), np.log(p.contrast[1]), shape))
    spread = np.linspace(-1.0, 1.0, graders) if graders > 1 else np.zeros(1)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731 - compact cast for the many fields below
    return SyntheticScene(
        size=size, params=p, active=active, cy=f32(cy), cx=f32(cx), ry=f32(radius * aspect), rx=f32(radius),
        angle=f32(angle), harm_amp=f32(harm_amp), harm_phase=f32(harm_phase), rim=f32(rim), contrast=f32(contrast),
        thresholds=p.threshold_center + p.threshold_spread * spread, miss_c50=p.miss_c50 + p.miss_c50_spread * spread,
    )


def _render(scene: SyntheticScene, index: slice, radius: np.ndarray, offset: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """Images [n,1,H,W] float32 in [0,1]: textured background plus lesion bumps plus white noise."""
    p, size = scene.params, scene.size
    n = radius.shape[0]
    texture = gaussian_filter(rng.standard_normal((n, size, size)), sigma=(0, p.texture_sigma * size,
                                                                            p.texture_sigma * size))
    texture /= texture.std(axis=(1, 2), keepdims=True) + 1e-8
    # The visible edge is a bit sharper than the field rim (ambiguity is in the annotation, not only blur) and
    # the lesion interior is mottled by the same texture, so intensity alone does not give the field.
    profile = expit((1 - radius) / (0.7 * scene.rim[index][..., None, None]))
    bumps = p.lesion_gain * scene.contrast[index][..., None, None] * profile * scene.active[index][..., None, None]
    lesion = bumps.max(axis=1) * (1 + 0.15 * texture)
    image = p.background + offset[:, None, None] + p.texture_std * texture + lesion
    image += p.noise_std * rng.standard_normal(image.shape)
    return np.clip(image, 0, 1).astype(np.float32)[:, None]


def generate(n: int, size: int = 64, graders: int = 4, seed: int = 0, **knobs: Any) -> MultiGraderSet:
    """N synthetic images with D graders' masks and the exact grader probability.

    Returns images float32 [N,1,S,S] in [0,1], masks uint8 [N,D,S,S] (slot j drawn by grader j), groups
    str [N] ("syn00000", one id per `images_per_patient` consecutive images), prob float32 [N,S,S]. Knobs
    are fields of `SyntheticParams`. Deterministic for (n, size, graders, seed, knobs).
    """
    scene = make_scene(n, size, graders, seed, **knobs)
    p = scene.params
    _, noise_rng, grader_rng = _streams(seed)
    patients = np.arange(n) // p.images_per_patient
    offset = noise_rng.uniform(-p.patient_offset, p.patient_offset, patients.max() + 1)[patients]
    images = np.empty((n, 1, size, size), np.float32)
    masks = np.empty((n, graders, size, size), np.uint8)
    prob = np.empty((n, size, size), np.float32)
    for start in range(0, n, _CHUNK):
        index = slice(start, min(start + _CHUNK, n))
        radius = scene.radius(index)
        field = scene.field(index, radius=radius)
        images[index] = _render(scene, index, radius, offset[index], noise_rng)
        masks[index] = scene.sample(grader_rng, index, field=field)
        prob[index] = scene.prob(index, field=field)
    meta = {
        "dataset": "synthetic",
        "source": "generated",
        "generator": {"n": n, "size": size, "graders": graders, "seed": seed, **asdict(p)},
        # Rendered directly in [0, 1]: `supuq predict` uses such inputs as they are.
        "preprocessing": unit_record(size),
        "grader_thresholds": scene.thresholds.round(4).tolist(),
        "grader_miss_c50": scene.miss_c50.round(4).tolist(),
        "lesion_free_images": int((~scene.active.any(axis=1)).sum()),
    }
    groups = np.array([f"syn{i:05d}" for i in patients])
    return MultiGraderSet(images=images, masks=masks, groups=groups, prob=prob, meta=meta)


def sample_graders(n: int, size: int = 64, graders: int = 4, seed: int = 0, draws: int = 1,
                   draw_seed: int = 1, **knobs: Any) -> np.ndarray:
    """Redraw grader masks for the SAME images as `generate(n, size, graders, seed, **knobs)`.

    Returns uint8 [draws,N,D,S,S]: each draw has fresh jitters and misses (the lesion fields are fixed), so
    the mean over draws and graders converges to `generate(...).prob`.
    """
    scene = make_scene(n, size, graders, seed, **knobs)
    rng = np.random.default_rng(draw_seed)
    field = scene.field()
    return np.stack([scene.sample(rng, field=field) for _ in range(draws)])
