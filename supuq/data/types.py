"""`MultiGraderSet` (images with several graders' masks) and its on-disk cache format.

Cache layout (one folder): images.npy float32 [N,1,H,W] in [0,1]; masks.npy uint8 [N,D,H,W] in {0,1};
groups.npy str [N] (patient / case id); optional prob.npy float32 [N,H,W] (true foreground probability,
synthetic only); meta.json (dataset, source, preprocessing, counts, format_version). Arrays are loaded with
mmap. A cache is written to a temporary sibling folder and renamed, so a half-written cache never looks
complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

FORMAT_VERSION = 1
_REQUIRED = ("images.npy", "masks.npy", "groups.npy", "meta.json")


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
        """Write the cache atomically: into a temporary sibling folder, then rename over `folder`."""
        folder = Path(folder)
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
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
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
        return cls(read("images.npy"), read("masks.npy"), read("groups.npy"), prob, meta)
