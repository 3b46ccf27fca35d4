"""Seeded train/val/test splits by group (patient), recorded with their seed (DESIGN.md section 8).

`by="group"` (the default) keeps every image of a patient in one split: the unique groups are shuffled with
`numpy.random.default_rng(seed)` and each is assigned, whole, to the split that is furthest below its target
image count. `by="slice"` splits images ignoring groups; it exists only to reproduce the authors' protocol, which
puts slices of one patient in several splits, and warns that it leaks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Image indices of each split (sorted int64 arrays) and how they were drawn.

    groups maps each split name to the sorted unique group ids it contains (in slice mode a group can appear in
    several splits; that is the leak).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    by: str
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def indices(self, name: str) -> np.ndarray:
        """The index array of split `name` ("train", "val" or "test")."""
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: seed, mode, fractions, image counts and the groups of each split."""
        return {
            "seed": int(self.seed),
            "by": self.by,
            "fractions": [float(f) for f in self.fractions],
            "counts": {name: int(len(self.indices(name))) for name in SPLIT_NAMES},
            "groups": {name: list(self.groups.get(name, [])) for name in SPLIT_NAMES},
        }


def _check_fractions(fractions: tuple[float, float, float] | list[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f < 0) or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    return f


def _as_tuple(f: np.ndarray) -> tuple[float, float, float]:
    return (float(f[0]), float(f[1]), float(f[2]))


def _groups_of(groups: np.ndarray, parts: list[np.ndarray]) -> dict[str, list[str]]:
    return {name: sorted(set(groups[idx].tolist())) for name, idx in zip(SPLIT_NAMES, parts)}


def split_indices(
    groups: np.ndarray,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    by: str = "group",
) -> Split:
    """Split N images into train/val/test.

    groups: [N] group (patient/case) id of each image (any dtype; compared as strings).
    fractions: target image fractions of train, val, test. seed: seeds `numpy.random.default_rng`.
    by: "group" (no group in two splits) or "slice" (ignores groups, leaks; warns).
    Every split with a positive fraction gets at least one group (one image in slice mode); a split with
    fraction 0 stays empty. Raises `DataError` when there are fewer groups than splits to fill (fewer than 3
    images in slice mode).
    """
    f = _check_fractions(fractions)
    groups = np.asarray(groups).astype(str).reshape(-1)
    n = len(groups)
    if by == "slice":
        return _split_slices(groups, f, seed)
    if by != "group":
        raise ValueError(f"by must be 'group' or 'slice', got {by!r}")

    # np.unique sorts, so the result depends on the set of groups and the seed, not on the order of the images.
    unique, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    active = f > 0
    need = int(active.sum())  # 3 unless a fraction is 0 (that split stays empty)
    if len(unique) < need:
        raise DataError(
            f"cannot split {n} images from {len(unique)} group(s) into train/val/test without putting a patient "
            f"in two splits: need at least {need} groups (or use data.split_by=slice, which leaks)"
        )
    rng = np.random.default_rng(seed)
    target = f * n
    owner = np.full(len(unique), -1, dtype=np.int64)
    count = np.zeros(3)
    for g in rng.permutation(len(unique)):
        # Give the whole group to the split furthest below its target image count (ties: train, val, test).
        deficit = np.where(active, target - count, -np.inf)
        j = int(np.argmax(deficit))
        owner[g] = j
        count[j] += sizes[g]

    # Greedy can leave a small split empty when the groups it met first were large; move the smallest group of
    # the split furthest above its target (that still keeps a group) into each empty split.
    for j in np.flatnonzero(active):
        if np.any(owner == j):
            continue
        n_groups = np.bincount(owner, minlength=3)
        surplus = np.where(active & (n_groups >= 2), count - target, -np.inf)
        donor = int(np.argmax(surplus))
        members = np.flatnonzero(owner == donor)
        g = int(members[np.argmin(sizes[members])])
        owner[g] = j
        count[donor] -= sizes[g]
        count[j] += sizes[g]

    split_of_image = owner[inverse]
    parts = [np.flatnonzero(split_of_image == j).astype(np.int64) for j in range(3)]
    return Split(*parts, seed=int(seed), by="group", fractions=_as_tuple(f), groups=_groups_of(groups, parts))


def _split_slices(groups: np.ndarray, f: np.ndarray, seed: int) -> Split:
    """The authors' protocol: shuffle images and cut at the fractions, ignoring which patient they come from."""
    warnings.warn(
        "split_by='slice' splits images ignoring patients: slices of one patient land in several splits, so "
        "test scores are optimistic (leaky protocol, kept only to reproduce the authors' numbers)",
        UserWarning,
        stacklevel=3,
    )
    n = len(groups)
    if n < 3:
        raise DataError(f"cannot split {n} image(s) into train/val/test: need at least 3")
    sizes = np.floor(f * n + 0.5).astype(np.int64)
    # At least one image in every split that asked for some, taken from the largest split.
    for j in range(3):
        if f[j] > 0 and sizes[j] == 0:
            sizes[j] = 1
    sizes[int(np.argmax(sizes))] -= sizes.sum() - n
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum(sizes)[:-1]
    parts = [np.sort(p).astype(np.int64) for p in np.split(perm, cuts)]
    return Split(*parts, seed=int(seed), by="slice", fractions=_as_tuple(f), groups=_groups_of(groups, parts))
