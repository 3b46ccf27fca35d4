"""Seeded train/val/test splits by group (patient), recorded with their seed (docs/architecture.md, Data and caches).

Patient-level rules (no patient in two splits), chosen by the cache's ``meta["split_rule"]``:
- ``"group"`` (every cache that does not say otherwise): the unique groups are shuffled with
  `numpy.random.default_rng(seed)` and each is assigned, whole, to the split that is furthest below its target
  image count. Image fractions come out close even with few patients, but adding a patient can move others.
- ``"hash"`` (LIDC from pylidc, a cache that grows as scans are downloaded): each group goes to the split whose
  cumulative-fraction interval holds ``sha256("<seed>:<group>")`` read as a number in [0, 1), so a group's split
  depends only on its id, the seed and the fractions and never changes when groups are added. Fractions hold
  for patients, not images, and only on average.
`by="slice"` (``data.split_by=slice``) splits images ignoring groups; it exists only to reproduce the authors'
protocol, which puts slices of one patient in several splits, and warns that it leaks.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from ..config import DataConfig
    from .types import MultiGraderSet

SPLIT_NAMES = ("train", "val", "test")
PATIENT_RULES = ("group", "hash")  # the values a cache's meta["split_rule"] may take


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
    by: "group" (no group in two splits, balanced by images), "hash" (no group in two splits, each group's split
    fixed by a hash of its id) or "slice" (ignores groups, leaks; warns); see the module docstring.
    Every split with a positive fraction gets at least one group (one image in slice mode); a split with
    fraction 0 stays empty. Raises `DataError` when there are fewer groups than splits to fill (fewer than 3
    images in slice mode; in hash mode, when no group's hash falls in a split's interval).
    """
    f = _check_fractions(fractions)
    groups = np.asarray(groups).astype(str).reshape(-1)
    n = len(groups)
    if by == "slice":
        return _split_slices(groups, f, seed)
    if by == "hash":
        return _split_hash(groups, f, seed)
    if by != "group":
        raise ValueError(f"by must be 'group', 'hash' or 'slice', got {by!r}")

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


def hash_unit(seed: int, group: str) -> float:
    """The hash rule's number for `group` under `seed`: the first 8 bytes of sha256("<seed>:<group>") (UTF-8),
    big-endian, divided by 2**64 -- uniform in [0, 1) and the same on every machine and Python version."""
    digest = hashlib.sha256(f"{int(seed)}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _split_hash(groups: np.ndarray, f: np.ndarray, seed: int) -> Split:
    """Each unique group to the split whose interval [F_(j-1), F_j) of the cumulative fractions holds its
    `hash_unit` (a split with fraction 0 has an empty interval)."""
    unique, inverse = np.unique(groups, return_inverse=True)
    u = np.array([hash_unit(seed, g) for g in unique])
    # side="right": u == F_j belongs to the next split; rounding of the last edge below 1 goes to the last active.
    owner = np.minimum(np.searchsorted(np.cumsum(f), u, side="right"), int(np.flatnonzero(f > 0)[-1]))
    empty = [name for j, name in enumerate(SPLIT_NAMES) if f[j] > 0 and not np.any(owner == j)]
    if empty:
        raise DataError(
            f"the patient-hash split of {len(unique)} group(s) leaves {' and '.join(empty)} empty: no patient id "
            "hashes into its share; add patients (with about 25, an empty split is unlikely at fractions "
            "0.7/0.15/0.15) or change data.split_seed"
        )
    split_of_image = owner[inverse]
    parts = [np.flatnonzero(split_of_image == j).astype(np.int64) for j in range(3)]
    return Split(*parts, seed=int(seed), by="hash", fractions=_as_tuple(f), groups=_groups_of(groups, parts))


def dataset_split(data: MultiGraderSet, cfg: DataConfig) -> Split:
    """The split training and evaluation use: ``data.split_by=slice`` is the leaky slice split; otherwise
    patients stay whole under the rule the cache records in ``meta["split_rule"]`` ("group" when absent)."""
    if cfg.split_by == "slice":
        return split_indices(data.groups, cfg.fractions, cfg.split_seed, "slice")
    rule = data.meta.get("split_rule", "group")
    if rule not in PATIENT_RULES:
        raise DataError(f"the cache's meta split_rule {rule!r} is not one this supuq knows "
                        f"({', '.join(PATIENT_RULES)}); prepare it again")
    return split_indices(data.groups, cfg.fractions, cfg.split_seed, rule)
