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
    table = Table(title=title, caption="NCC: predicted aleatoric vs grader variance (excl.: images with a constant map); "
                  "NCC true: vs the generator's p*(1-p*); div.: E d(S,S')")
    for column in ("run", "GED", "NCC", "excl.", "NCC true", "div.", "E d(S,Y)"):
        table.add_column(column, justify="right")
    for name, m in rows.items():
        true = f"{m['ncc_true']:.3f}" if m.get("ncc_true") is not None else "-"
        table.add_row(
            name, f"{m['ged']:.4f}", f"{m['ncc']:.3f}", f"{int(m['ncc_excluded'])}/{int(m['n_images'])}", true,
            f"{m['diversity']:.3f}", f"{m['dist_sy']:.3f}",
        )
    return table


def sweep_table(name: str, trials: list[dict]) -> Table:
    """`supuq sweep`'s closing table: the given trials (the top ones by validation GED), one row each."""
    table = Table(title=f"sweep {name}: top trials by validation GED")
    for column in ("trial", "status", "epochs", "val/ged", "val/ncc", "beta", "gamma", "prior", "prior_std", "lr"):
        table.add_column(column, justify="right")
    for t in trials:
        p, m = t["params"], t["metrics"]
        table.add_row(
            t["trial_id"], t["status"], str(t["epochs"]), f"{m.get('val/ged', float('nan')):.4f}",
            f"{m.get('val/ncc', float('nan')):.3f}", f"{p.get('loss.beta', float('nan')):.3g}",
            f"{p.get('loss.gamma', float('nan')):.3g}", str(p.get("model.weight_noise.prior", "-")),
            f"{p.get('model.weight_noise.prior_std', float('nan')):.3g}", f"{p.get('optim.lr', float('nan')):.2e}",
        )
    return table


def pareto_table(parent, front: list[dict]) -> Table:
    """A sweep's Pareto-optimal trials (min val/ged, max val/ncc), numbered from 1 for `supuq best --pick`."""
    table = Table(title=f"sweep {parent.info.run_name}: Pareto-optimal trials (min val/ged, max val/ncc)",
                  caption="NCC nan: no validation image with a non-constant map (ranked as the worst NCC)")
    for column in ("pick", "trial", "val/ged", "val/ncc", "beta", "gamma", "prior", "prior_std", "lr", "run id"):
        table.add_column(column, justify="right", overflow="fold")

    def short(value: str | None) -> str:
        try:
            return f"{float(value):.3g}"
        except (TypeError, ValueError):
            return value or "-"

    for number, row in enumerate(front, 1):
        m, p = row["metrics"], row["params"]
        table.add_row(
            str(number), row["name"], f"{m['val/ged']:.4f}", f"{m.get('val/ncc', float('nan')):.3f}",
            *(short(p.get(k)) for k in ("loss.beta", "loss.gamma", "model.weight_noise.prior",
                                         "model.weight_noise.prior_std", "optim.lr")),
            row["run_id"],
        )
    return table


def info_table(path: Path, info: dict) -> Table:
    """`supuq data prepare` / `data info`: one row per entry of `prepare.describe`."""
    table = Table(title=str(path), show_header=False)
    for key, value in info.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
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
