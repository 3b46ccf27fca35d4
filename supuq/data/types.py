"""`MultiGraderSet` (images with several graders' masks) and its on-disk cache format.

Cache layout (one folder): images.npy float32 [N,1,H,W] in [0,1]; masks.npy uint8 [N,D,H,W] in {0,1};
groups.npy str [N] (patient / case id); optional prob.npy float32 [N,H,W] (true foreground probability,
synthetic only); meta.json (dataset, source, preprocessing, counts, format_version). Arrays are loaded with
mmap, their values checked at load in bounded chunks (`check_values`). A cache is written to a temporary sibling folder and renamed, so a half-written cache never looks
complete. Writing never loses the user's files: a cache replaces only an empty folder or an earlier cache that
holds nothing but cache files (`check_cache_target`). Folders and files get the usual permissions of the
user's umask (group-readable under 022), so a cache on shared storage or in a container running as another
user can be read.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

FORMAT_VERSION = 1
_REQUIRED = ("images.npy", "masks.npy", "groups.npy", "meta.json")
CACHE_FILES = (*_REQUIRED, "prob.npy")
# What `save` adds to every meta.json: a folder whose meta.json has all of them is a supuq cache.
_SAVED_KEYS = ("format_version", "count", "graders", "size", "has_prob")


def _cache_meta(folder: Path) -> dict[str, Any] | None:
    """The meta.json of `folder` if it says the folder is a supuq cache (any format version), else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and all(key in meta for key in _SAVED_KEYS) else None


def check_cache_target(folder: str | Path) -> dict[str, Any] | None:
    """Whether a cache may be written to `folder`: None when it creates one (nothing there, or an empty folder),
    the earlier cache's meta when it replaces one; DataError (nothing touched) for anything a write could lose
    or cannot go through: a file, a link, a folder that is not a supuq cache or also holds other files, a path
    below a file."""
    folder = Path(folder)
    for parent in folder.parents:
        if parent.exists() and not parent.is_dir():
            raise DataError(f"{folder}: {parent} is a file, not a folder; choose another output folder")
    if folder.is_symlink():
        raise DataError(f"{folder}: a symbolic link; pass the folder it points to, a cache never replaces a link")
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise DataError(f"{folder}: an existing file, not a supuq cache; not replaced (choose another output folder)")
    entries = sorted(entry.name for entry in folder.iterdir())
    if not entries:
        return None
    meta = _cache_meta(folder)
    if meta is None:
        raise DataError(f"{folder}: a folder that is not a supuq cache (no meta.json saying so); not replaced "
                        "(choose another output folder, or empty it)")
    others = [name for name in entries if name not in CACHE_FILES]
    if others:
        raise DataError(f"{folder}: a supuq cache that also holds {others[0]}"
                        f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}; not replaced (move them out)")
    return meta


@dataclass
class MultiGraderSet:
    """N images, each with D graders' binary masks.

    images: float32 [N,1,H,W] in [0,1]; masks: uint8 [N,D,H,W] in {0,1} (a grader who drew nothing has an
    empty mask); groups: str [N] patient/case ids (splits never put one group in two splits);
    prob: optional float32 [N,H,W] true per-pixel probability that a grader marks the pixel; meta: free dict.
    """

    images: np.ndarray
    masks: np.ndarray
    groups: np.ndarray
    prob: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def graders(self) -> int:
        return int(self.masks.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def validate(self) -> None:
        im, mk, gr = self.images, self.masks, self.groups
        if im.ndim != 4 or im.shape[1] != 1:
            raise DataError(f"images must be [N,1,H,W], got shape {tuple(im.shape)}")
        if mk.ndim != 4 or mk.shape[0] != im.shape[0] or mk.shape[2:] != im.shape[2:]:
            raise DataError(f"masks must be [N,D,H,W] matching images {tuple(im.shape)}, got {tuple(mk.shape)}")
        if gr.shape != (im.shape[0],):
            raise DataError(f"groups must be [N]={im.shape[0]}, got shape {tuple(gr.shape)}")
        if self.prob is not None and self.prob.shape != (im.shape[0], *im.shape[2:]):
            raise DataError(f"prob must be [N,H,W] matching images, got {tuple(self.prob.shape)}")

    def subset(self, index: np.ndarray) -> "MultiGraderSet":
        """A new set with the rows `index` (int array), copied into memory."""
        index = np.asarray(index)
        return MultiGraderSet(
            images=np.ascontiguousarray(self.images[index]),
            masks=np.ascontiguousarray(self.masks[index]),
            groups=np.asarray(self.groups[index]),
            prob=None if self.prob is None else np.ascontiguousarray(self.prob[index]),
            meta=dict(self.meta),
        )

    def save(self, folder: str | Path) -> Path:
        """Write the cache atomically: into a temporary sibling folder, then rename over `folder`.

        Only a missing or empty folder or an earlier cache is replaced (`check_cache_target`; DataError otherwise).
        """
        folder = Path(folder)
        check_cache_target(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta)
        meta.update(
            format_version=FORMAT_VERSION,
            count=len(self),
            graders=self.graders,
            size=list(self.size),
            groups=int(len(np.unique(self.groups))),
            has_prob=self.prob is not None,
        )
        # os.mkdir, not tempfile.mkdtemp: mkdtemp makes the folder 0700 whatever the umask, and the rename keeps it.
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        tmp.mkdir()
        try:
            np.save(tmp / "images.npy", np.ascontiguousarray(self.images, dtype=np.float32))
            np.save(tmp / "masks.npy", np.ascontiguousarray(self.masks, dtype=np.uint8))
            np.save(tmp / "groups.npy", np.asarray(self.groups).astype(str))
            if self.prob is not None:
                np.save(tmp / "prob.npy", np.ascontiguousarray(self.prob, dtype=np.float32))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
                folder.rename(old)
                tmp.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> "MultiGraderSet":
        """Read a cache folder written by `save` (arrays memory-mapped unless `mmap=False`)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such dataset cache folder (run `supuq data prepare` first)")
        missing = [name for name in _REQUIRED if not (folder / name).is_file()]
        if missing:
            raise DataError(f"{folder}: not a complete supuq cache (missing {', '.join(missing)})")
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{folder / 'meta.json'}: unreadable ({err.__class__.__name__})") from None
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(
                f"{folder}: cache format version {version!r}, this supuq reads {FORMAT_VERSION}; prepare it again"
            )
        mode = "r" if mmap else None

        def read(name: str) -> np.ndarray:
            try:
                return np.load(folder / name, mmap_mode=mode, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DataError(f"{folder / name}: unreadable or truncated ({err})") from None

        prob = read("prob.npy") if (folder / "prob.npy").is_file() else None
        data = cls(read("images.npy"), read("masks.npy"), read("groups.npy"), prob, meta)
        check_values(folder / "images.npy", data.images, "images", binary=False)
        check_values(folder / "masks.npy", data.masks, "masks", binary=True)
        if prob is not None:
            check_values(folder / "prob.npy", prob, "probabilities", binary=False)
        return data


CHECK_CHUNK_BYTES = 64 * 2**20
"""How much of an array `check_values` reads at a time: a memory-mapped cache is never read into memory whole."""


def check_values(path: Path, array: np.ndarray, what: str, binary: bool) -> None:
    """DataError (one line, naming the file and the first bad image) unless every value of `array` [N, ...] is
    0 or 1 (`binary`: masks) or a finite number in [0, 1] (images, probabilities). A cache edited or written
    by other code would otherwise train on, or `data info` describe, values no supuq reader produces (a mask
    value of 7 gives a negative grader variance). Read in chunks of rows of about `CHECK_CHUNK_BYTES`."""
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise DataError(f"{path}: {what} must be numbers, got dtype {array.dtype}; prepare the cache again")
    row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
    rows = max(1, CHECK_CHUNK_BYTES // row_bytes)
    for start in range(0, len(array), rows):
        chunk = np.asarray(array[start : start + rows])
        low, high = chunk.min(), chunk.max()  # NaN propagates into both, so NaN fails the range test too
        exact = not binary or np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
        if low >= 0 and high <= 1 and (exact or bool(((chunk == 0) | (chunk == 1)).all())):
            continue
        flat = chunk.reshape(len(chunk), -1)
        bad = ~((flat == 0) | (flat == 1)) if binary else ~((flat >= 0) & (flat <= 1))  # NaN is bad here too
        row = int(np.argmax(bad.any(axis=1)))
        value = flat[row][bad[row]][0].item()
        expected = "0 or 1" if binary else "finite and in [0, 1]"
        raise DataError(f"{path}: {what} must be {expected}, image {start + row} holds {value!r}; "
                        "this is not a cache supuq wrote as is (prepare it again)")
