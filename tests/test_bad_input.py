"""Hostile and careless input, through the real CLI: every case ends with exit status 2 and one line that starts
with "error:", never a traceback, and leaves the user's files as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from supuq import tracking
from supuq.checkpoint import load_checkpoint, save_checkpoint
from supuq.cli import app
from supuq.config import load_config
from supuq.data.synthetic import generate
from supuq.train import fit

from .conftest import ROOT, TINY_OVERRIDES
from .processes import free_port

runner = CliRunner()
CONFIG = str(ROOT / "configs" / "synthetic.yaml")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    cfg = load_config(CONFIG, [*TINY_OVERRIDES, "train.epochs=1"])
    data = generate(cfg.data.synthetic.n, size=cfg.data.synthetic.size, graders=4, seed=0)
    return fit(cfg, data, checkpoint_dir=tmp_path_factory.mktemp("model")).checkpoint_path


def _variant(ckpt: Path, folder: Path, change) -> Path:
    state = load_checkpoint(ckpt)
    change(state)
    return save_checkpoint(folder / "checkpoint.pt", state)


def _not_json(state):
    state["config"] = "{not json"


def _other_widths(state):
    cfg = json.loads(state["config"])
    cfg["model"]["num_filters"] = [6, 12]  # the stored weights are for [4, 8]
    state["config"] = json.dumps(cfg)


def _image(path: Path, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=array.ndim == 3 and array.shape[-1] in (3, 4)), str(path))
    return path


CASES = {
    # id: (args builder (tmp_path, ckpt) -> argv, text the one line must contain[, paths that must not exist
    # afterwards, relative to tmp_path and to its parent])
    "config-binary-garbage": (lambda t, c: ["train", "--config", str(_bytes(t / "g.yaml", bytes(range(256))))],
                              "not a text file"),
    "config-bool-for-epochs": (lambda t, c: ["train", "--config", CONFIG, "--set", "train.epochs=true"],
                               "expected a number"),
    "ui-port-out-of-range": (lambda t, c: ["ui", "--port", "70000"], "--port must be between 1 and 65535"),
    "best-unreachable-server": (lambda t, c: ["best", "--tracking-uri", f"http://127.0.0.1:{free_port()}"],
                                "is not reachable"),
    "report-unreachable-server": (lambda t, c: ["report", "x", "--out", str(t / "r.html"), "--tracking-uri",
                                                f"http://127.0.0.1:{free_port()}"], "is not reachable"),
    "results-unreachable-server": (lambda t, c: ["results", "x", "--out", str(t / "r.md"), "--tracking-uri",
                                                 f"http://127.0.0.1:{free_port()}"], "is not reachable"),
    "ui-unreachable-server": (lambda t, c: ["ui", "--tracking-uri", f"http://127.0.0.1:{free_port()}"],
                              "is not reachable"),
    "best-malformed-sqlite-store": (lambda t, c: ["best", "--tracking-uri",
                                                  f"sqlite:///{_bytes(t / 'm.db', b'SQLite format 2 garbage' * 9)}"],
                                    "is not a sqlite database"),
    "best-truncated-sqlite-store": (lambda t, c: ["best", "--tracking-uri", f"sqlite:///{_truncated_store(t)}"],
                                    "MLflow tracking store"),
    "evaluate-config-not-json": (lambda t, c: ["evaluate", str(_variant(c, t, _not_json))], "not valid JSON"),
    "evaluate-weights-do-not-fit": (lambda t, c: ["evaluate", str(_variant(c, t, _other_widths))],
                                    "weights do not fit the stored config"),
    "predict-colour-png-to-grey-model": (
        lambda t, c: ["predict", str(c), str(_image(t / "rgb.png", _rgb())), "--out", str(t / "out")],
        "3-channel colour image"),
    "predict-nan-voxels": (
        lambda t, c: ["predict", str(c), str(_image(t / "nan.nii.gz", _with_nan())), "--out", str(t / "out")],
        "NaN or infinite"),
    # --- the sweep's input (issue 15): refused before Ray starts or any run is opened
    "sweep-zero-samples": (lambda t, c: _sweep(t, "--samples", "0"), "--samples: Input should be greater than or equal to 1, got 0"),
    "sweep-negative-concurrent": (lambda t, c: _sweep(t, "--concurrent", "-1"), "--concurrent: Input should be greater"),
    "sweep-name-escapes-storage": (lambda t, c: _sweep(t, "--name", "../escaped"), "a sweep name is one folder name",
                                   ["escaped", "rr"]),
    "sweep-name-absolute": (lambda t, c: _sweep(t, "--name", str(t / "abs")), "a sweep name is one folder name", ["abs"]),
    "sweep-resume-name-escapes": (lambda t, c: ["sweep", "--resume", "../rr", "--storage", str(t / "rr")],
                                  "--resume '../rr': a sweep name"),
    "sweep-storage-is-a-file": (lambda t, c: _sweep(t, "--storage", str(_bytes(t / "f", b"x"))),
                                "is a file, not a folder for the sweep's files", ["m.db"]),
    "sweep-storage-below-a-file": (lambda t, c: _sweep(t, "--storage", str(_bytes(t / "f", b"x") / "rr")),
                                   "is below the file", ["m.db"]),
    "sweep-space-upper-bound-rejected": (
        lambda t, c: _sweep(t, "--space", str(_space(t, "data.synthetic.graders: {int: [2, 40]}"))),
        "search space data.synthetic.graders: int [2, 40] reaches 17, which the config rejects", ["rr", "m.db"]),
    "sweep-space-even-kernel-rejected": (
        lambda t, c: _sweep(t, "--space", str(_space(t, "train.augment.kernel_size: {int: [3, 9]}"))),
        "reaches 4, which the config rejects (config: train.augment: train.augment.kernel_size must be odd)"),
    "sweep-space-choice-rejected": (
        lambda t, c: _sweep(t, "--space", str(_space(t, "model.method: {choice: [supervised, kohl]}"))),
        "model.method: choice ['supervised', 'kohl'] reaches 'kohl', which the config rejects"),
    "sweep-resume-group-writable-planted-pickle": (
        lambda t, c: _resume(t, _planted(t, folder_mode=0o775)), "(sweep state) is writable by its group",
        ["payload-ran"]),
    "sweep-resume-world-writable-state-file": (
        lambda t, c: _resume(t, _planted(t, file_mode=0o666)), "tuner.pkl (sweep state) is writable by its group "
        "and all users", ["payload-ran"]),
    "sweep-resume-state-owned-by-another-user": (
        lambda t, c: _resume(t, _planted(t, owner="nobody")), "tuner.pkl (sweep state) is owned by user 'nobody'",
        ["payload-ran"]),
    "sweep-resume-symlink-in-state": (
        lambda t, c: _resume(t, _planted(t, link=True)), "is a symbolic link", ["payload-ran"]),
    "sweep-resume-storage-writable-by-others": (
        lambda t, c: _resume(t, _planted(t, storage_mode=0o777)), "(the storage folder) is writable by its group "
        "and all users", ["payload-ran"]),
    "sweep-resume-state-not-json": (lambda t, c: _resume(t, _with_state(_planted(t), "{not json")),
                                    "supuq_sweep.json: not valid JSON", ["payload-ran"]),
    "sweep-resume-state-not-supuqs": (lambda t, c: _resume(t, _with_state(_planted(t), '{"a": 1}')),
                                      "not a supuq sweep state (missing parent_run_id", ["payload-ran"]),
    # --- caches whose values no supuq reader writes
    "data-info-mask-value-7": (lambda t, c: ["data", "info", str(_cache(t, _mask_value_7))],
                               "masks must be 0 or 1, image 5 holds 7"),
    "data-info-all-nan-images": (lambda t, c: ["data", "info", str(_cache(t, _all_nan))],
                                 "images must be finite and in [0, 1], image 0 holds nan"),
    "data-info-images-above-1": (lambda t, c: ["data", "info", str(_cache(t, _above_one))],
                                 "images must be finite and in [0, 1], image 2 holds 255.0"),
    "train-on-mask-value-7": (lambda t, c: ["train", "--no-track", "--config", CONFIG, "--out", str(t / "run"),
                                            *_sets(TINY_OVERRIDES), "--set", f"data.cache={_cache(t, _mask_value_7)}"],
                              "masks must be 0 or 1", ["run/checkpoint.pt"]),
    # --- --out that cannot be written
    "train-out-is-a-file": (lambda t, c: ["train", "--no-track", "--config", CONFIG, *_sets(TINY_OVERRIDES),
                                          "--out", str(_bytes(t / "f", b"keep"))], "an existing file, not a folder"),
    "train-out-below-a-file": (lambda t, c: ["train", "--no-track", "--config", CONFIG, *_sets(TINY_OVERRIDES),
                                             "--out", str(_bytes(t / "f", b"keep") / "run")], "below the file"),
    "train-out-unwritable": (lambda t, c: ["train", "--no-track", "--config", CONFIG, *_sets(TINY_OVERRIDES),
                                           "--out", str(_unwritable(t) / "run")], "--out"),
    "report-out-is-a-folder": (lambda t, c: ["report", "x", "--out", str(t), "--tracking-uri", f"sqlite:///{t}/m.db"],
                               "a folder, not a file name to write"),
    "report-out-below-a-file": (lambda t, c: ["report", "x", "--out", str(_bytes(t / "f", b"keep") / "r.html"),
                                              "--tracking-uri", f"sqlite:///{t}/m.db"], "below the file"),
    "report-out-unwritable": (lambda t, c: ["report", "x", "--out", str(_unwritable(t) / "r.html"),
                                            "--tracking-uri", f"sqlite:///{t}/m.db"], "cannot"),
    "predict-out-is-a-file": (
        lambda t, c: ["predict", str(c), str(_image(t / "g.png", _grey())), "--out", str(_bytes(t / "f", b"keep"))],
        "an existing file, not a folder"),
    "predict-out-unwritable": (
        lambda t, c: ["predict", str(c), str(_image(t / "g.png", _grey())), "--out", str(_unwritable(t) / "o")],
        "--out"),
}


def _sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def _sweep(folder: Path, *args: str) -> list[str]:
    """A tiny `supuq sweep` whose storage and store lie in `folder`; `args` come last (so they win)."""
    return ["sweep", "--config", CONFIG, "--storage", str(folder / "rr"), "--tracking-uri",
            f"sqlite:///{folder}/m.db", *_sets(TINY_OVERRIDES), *args]


def _space(folder: Path, line: str) -> Path:
    path = folder / "space.yaml"
    path.write_text(f"num_samples: 2\nscheduler: {{type: none}}\nspace:\n  optim.lr: {{loguniform: [1.0e-4, 1.0e-2]}}\n"
                    f"  {line}\n")
    return path


class _Payload:
    """A pickle that runs a command when loaded: what a planted tuner.pkl would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _planted(folder: Path, folder_mode: int = 0o755, file_mode: int = 0o644, owner: str | None = None,
             link: bool = False, storage_mode: int = 0o755) -> Path:
    """A sweep folder `rr/planted` as Ray would leave it (supuq_sweep.json, tuner.pkl), whose tuner.pkl runs
    `touch payload-ran` when unpickled; returns the storage folder."""
    import os
    import pickle
    import pwd

    sweep = folder / "rr" / "planted"
    sweep.mkdir(parents=True)
    (sweep / "supuq_sweep.json").write_text(json.dumps({"parent_run_id": "0" * 32, "tracking_uri": "sqlite:///x.db",
                                                        "config": {}, "space_raw": {}}))
    state = sweep / "tuner.pkl"
    state.write_bytes(pickle.dumps(_Payload(folder / "payload-ran")))
    state.chmod(file_mode)
    sweep.chmod(folder_mode)
    (folder / "rr").chmod(storage_mode)
    if owner is not None:
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(state, pwd.getpwnam(owner).pw_uid, -1)
    if link:
        (sweep / "searcher-state.pkl").symlink_to(state)
    return folder / "rr"


def _with_state(storage: Path, text: str) -> Path:
    (storage / "planted" / "supuq_sweep.json").write_text(text)
    return storage


def _resume(folder: Path, storage: Path) -> list[str]:
    return ["sweep", "--resume", "planted", "--storage", str(storage), "--tracking-uri", f"sqlite:///{folder}/m.db"]


def _cache(folder: Path, change) -> Path:
    """A tiny synthetic cache with one array changed after it was written (as other code or an edit would)."""
    cache = generate(48, size=16, graders=4, seed=0).save(folder / "cache")
    name, array = change(np.load(cache / "images.npy"), np.load(cache / "masks.npy"))
    np.save(cache / name, array)
    return cache


def _mask_value_7(images, masks):
    masks[5, 1, 3, 3] = 7
    return "masks.npy", masks


def _all_nan(images, masks):
    return "images.npy", np.full_like(images, np.nan)


def _above_one(images, masks):
    images[2, 0, 4, 4] = 255.0  # a pixel in 0..255 instead of 0..1
    return "images.npy", images


def _unwritable(folder: Path) -> Path:
    """A folder this user cannot write in: a read-only one when not root; /sys (no new entries, even for root)."""
    import os

    if os.geteuid() == 0:
        return Path("/sys")
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked


def _grey() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 255, (16, 16), dtype=np.uint8)


def _bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _truncated_store(folder: Path) -> Path:
    uri = f"sqlite:///{folder / 'full.db'}"
    tracking.init_store(uri, "supuq/synthetic")
    whole = (folder / "full.db").read_bytes()
    return _bytes(folder / "truncated.db", whole[: len(whole) // 3])


def _rgb() -> np.ndarray:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200  # red differs from green and blue: a real colour image
    rgb[4:12, 4:12, 1] = 90
    return rgb


def _with_nan() -> np.ndarray:
    volume = np.random.default_rng(0).uniform(0, 1, (2, 16, 16)).astype(np.float32)
    volume[1, 3, 3] = np.nan
    return volume


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build, needle, *absent = CASES[case]
    args = build(tmp_path, ckpt)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing the user had was changed
    for path in (absent[0] if absent else []):  # nor written where it must not (outside --storage, a payload)
        assert not (tmp_path / path).exists() and not (tmp_path.parent / path).exists(), path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
            and "mlflow" not in p.parts}


def test_a_grey_image_saved_as_rgb_is_still_accepted(ckpt, tmp_path):
    """The colour check must not refuse what it should collapse: identical channels are one grey channel."""
    grey = np.random.default_rng(1).integers(0, 255, (16, 16), dtype=np.uint8)
    path = _image(tmp_path / "grey-rgb.png", np.repeat(grey[..., None], 3, axis=2))
    result = runner.invoke(app, ["predict", str(ckpt), str(path), "--out", str(tmp_path / "out"), "--samples", "4",
                                 "--weight-samples", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "pm.nii.gz").is_file()


@pytest.mark.parametrize("content", [b"not a pickle at all", "pickled-dict"])
def test_resume_of_a_state_that_is_not_rays_is_one_line(content, tmp_path, monkeypatch, ray_session):
    """A trusted folder (this user's, nobody else may write it) whose tuner.pkl is not Ray Tune's state: Ray
    reads it and fails; supuq says so in one line naming the file, and the sweep's parent run is left as it was
    (the state is restored before the run is reopened)."""
    import pickle

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    parent = tracking.create_run(uri, "supuq/synthetic", run_name="foreign", tags={"supuq.kind": "sweep"})
    tracking.end_run(uri, parent, "KILLED")
    storage = _planted(tmp_path)
    sweep = storage / "planted"
    cfg = load_config(CONFIG, TINY_OVERRIDES)
    space_raw = {"num_samples": 1, "scheduler": {"type": "none"}, "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}}
    (sweep / "supuq_sweep.json").write_text(json.dumps({"parent_run_id": parent, "tracking_uri": uri,
                                                        "config": cfg.model_dump(mode="json"), "space_raw": space_raw}))
    (sweep / "tuner.pkl").write_bytes(pickle.dumps({"not": "ray"}) if content == "pickled-dict" else content)
    result = runner.invoke(app, _resume(tmp_path, storage))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert f"{sweep}/tuner.pkl: not a Ray Tune sweep state this Ray can restore" in lines[0], result.output
    assert tracking.get_run(uri, parent).info.status == "KILLED"
    assert not (tmp_path / "payload-ran").exists()
