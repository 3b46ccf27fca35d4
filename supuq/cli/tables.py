"""The tables the `supuq` commands print (rich): built here, printed by `supuq.cli`."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ..workflows.tables import ResultTables

# How the Table 2/3 model's column kinds look in the terminal.
COLUMN_STYLE = {"method": "bold", "verdict": "cyan", "published": "italic yellow"}


def metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    """Test or re-evaluation metrics, one row per run (`supuq train`, `supuq evaluate`)."""
    table = compact(title, caption="NCC: predicted aleatoric (from probabilities) vs grader variance (excl.: images "
                    "with a constant map); bin.: from binary samples; NCC true: vs the generator's p*(1-p*); GED100, "
                    "HM-IoU16: the literature's, on 100 and 16 samples")
    text_column(table, "run")
    for column in ("GED", "GED100", "HM-IoU16", "NCC", "bin.", "excl.", "NCC true"):
        number_column(table, column)
    for name, m in rows.items():
        table.add_row(name, _num(m["ged"], ".4f"), _num(m.get("ged_100"), ".4f"), _num(m.get("hm_iou_16"), ".3f"),
                      _num(m["ncc"], ".3f"), _num(m.get("ncc_binary"), ".3f"),
                      f"{int(m['ncc_excluded'])}/{int(m['n_images'])}", _num(m.get("ncc_true"), ".3f"))
    return table


def compact(title: str, caption: str | None = None) -> Table:
    """A table that fits an 80-column terminal: a rule under the header instead of boxes, no edge padding.
    Numbers never wrap (a number split over two lines misreads); text columns give way first."""
    return Table(title=title, caption=caption, box=None, pad_edge=False, padding=(0, 0, 0, 1), header_style="bold underline")


def number_column(table: Table, name: str) -> None:
    table.add_column(name, justify="right", no_wrap=True)


def text_column(table: Table, name: str) -> None:
    table.add_column(name, justify="left", no_wrap=True)


def _num(value, spec: str) -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value) if value not in (None, "") else "-"


STATUS_WORDS = {"TERMINATED": "done", "ERROR": "failed", "PENDING": "pending", "RUNNING": "running"}


def sweep_table(name: str, trials: list[dict], metric: str = "val/ged") -> Table:
    """`supuq sweep`'s closing table: the given trials (the top ones by `selection.rank_trials`), one row each,
    with one column per searched parameter (named by its last dotted part)."""
    table = compact(f"sweep {name}: top trials by last {metric} (trials that ran all epochs first)")
    searched = list(dict.fromkeys(key for t in trials for key in t["params"]))
    for column in ("trial", "status"):
        text_column(table, column)
    for column in ("ep", "GED", "NCC"):
        number_column(table, column)
    for key in searched:
        number_column(table, key.split(".")[-1])
    for t in trials:
        p, m = t["params"], t["metrics"]
        table.add_row(t["trial_id"], STATUS_WORDS.get(t["status"], t["status"].lower()), str(t["epochs"]),
                      _num(m.get("val/ged"), ".4f"), _num(m.get("val/ncc"), ".3f"),
                      *(_num(p.get(k), ".3g") for k in searched))
    return table


PARETO_KEYS = ("loss.beta", "loss.gamma", "model.weight_noise.prior", "model.weight_noise.prior_std", "optim.lr")


def pareto_table(parent, front: list[dict]) -> Table:
    """A sweep's Pareto-optimal trials (min val/ged, max val/ncc), numbered from 1 for `supuq best --pick`."""
    table = compact(f"sweep {parent.info.run_name}: Pareto-optimal trials (min val/ged, max val/ncc)",
                    caption="GED, NCC: last validation epoch; NCC nan: no validation image with a non-constant map "
                    "(ranked as the worst NCC)")
    number_column(table, "pick")
    text_column(table, "trial")
    for column in ("GED", "NCC", *(k.split(".")[-1] for k in PARETO_KEYS)):
        number_column(table, column)
    text_column(table, "run")
    for number, row in enumerate(front, 1):
        m, p = row["metrics"], row["params"]
        table.add_row(str(number), row.get("trial_id") or row["name"], _num(m["val/ged"], ".4f"), _num(m.get("val/ncc"), ".3f"),
                      *(_num(p.get(k), ".3g") for k in PARETO_KEYS), row["run_id"][:8])
    return table


def info_table(path: Path, info: dict, meanings: dict[str, str] | None = None) -> Table:
    """`supuq data prepare` / `data info`: one row per entry of `prepare.describe`, with what it means."""
    table = compact(str(path))
    for column in ("key", "value", "meaning"):
        text_column(table, column)
    table.columns[2].no_wrap = False  # the explanation wraps; key and value never do
    for key, value in info.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value), (meanings or {}).get(key, ""))
    return table


def result_tables(result: ResultTables) -> Group:
    """The Table 2/3 model (`supuq.workflows.tables`) for the terminal: rich tables, which fit the console's
    width by wrapping text inside their cells (a row never breaks across lines), each with its notes as the
    caption; the smoke banner first."""
    parts: list = [Text(result.heading, style="bold")]
    if result.banner:
        parts.append(Padding(Text(result.banner, style="bold white on red"), (1, 0, 0, 0), expand=False))
    for table in result.tables:
        rich_table = Table(title=table.title, caption=" ".join(table.notes), caption_justify="left",
                           box=box.SIMPLE_HEAD, title_justify="left")
        for column in table.columns:
            rich_table.add_column(column.name, justify="left" if column.kind == "method" else "right",
                                  style=COLUMN_STYLE.get(column.kind))
        for row in table.rows:
            rich_table.add_row(*(cell.text for cell in row))
        parts.append(Padding(rich_table, (1, 0, 0, 0), expand=False))
    parts += [Padding(Text(note, style="dim"), (1, 0, 0, 0), expand=False) for note in result.notes]
    return Group(*parts)
