"""The pieces of supuq's self-contained HTML reports (`supuq.report.retrain`, `supuq.report.sweep`): the page with its
inline CSS, tables (and the HTML renderer of the Table 2/3 model), figures embedded as base64 PNG data URIs,
number formatting, and MLflow artifacts fetched into a work folder (quietly: no progress bar per file).
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import SupuqError
from ..workflows.tables import ResultTables
from .figures import as_float

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 2em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
td.published, th.published { background: #fff7e0; color: #6b5500; font-style: italic; }
td.verdict, th.verdict { background: #eef4fb; text-align: left; }
td.num, td.published { white-space: nowrap; } th.published { min-width: 200px; }
.banner { background: #fde8e8; border: 2px solid #c0392b; color: #7b1d12; font-weight: bold; padding: 8px 12px; }
.meta { color: #555; font-size: 0.9em; } .note { color: #555; font-size: 0.88em; max-width: 1000px; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0 0 16px; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; max-width: 900px; }
.panel { flex: 1 1 340px; min-width: 300px; } .tag { font-family: monospace; font-size: 0.9em; }
"""


def html_page(title: str, parts: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def html_table(head: list[str], rows: list[list[str]], classes: list[str | None] | None = None,
               raw_last: bool = False) -> str:
    """A table; `classes` gives each column's CSS class (None: none), `raw_last` leaves the last column's cells
    unescaped (they hold markup)."""
    def cell(tag: str, value: str, i: int, raw: bool) -> str:
        cls = f" class='{classes[i]}'" if classes and classes[i] else ""
        return f"<{tag}{cls}>{value if raw else html.escape(str(value))}</{tag}>"

    n = len(head)
    out = ["<table><tr>" + "".join(cell("th", h, i, False) for i, h in enumerate(head)) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(cell("td", v, i, raw_last and i == n - 1) for i, v in enumerate(row)) + "</tr>")
    return "".join(out) + "</table>"


def html_result_tables(result: ResultTables) -> list[str]:
    """The Table 2/3 model (`supuq.workflows.tables.ResultTables`) as HTML: the smoke banner, then per table a
    heading, the table and its notes, then the shared notes."""
    out = [f"<p class='banner'>{html.escape(result.banner)}</p>"] if result.banner else []
    for table in result.tables:
        out.append(f"<h2>{html.escape(table.title)}</h2>")
        # numbers stay on one line ("0.4979 ± 0.2707"); the verdict and published columns are styled apart
        classes = [{"measured": "num", "verdict": "verdict", "published": "published"}.get(c.kind)
                   for c in table.columns]
        out.append(html_table([c.name for c in table.columns], [[cell.text for cell in row] for row in table.rows],
                              classes))
        out += [f"<p class='note'>{html.escape(note)}</p>" for note in table.notes]
    out += [f"<p class='note'>{html.escape(note)}</p>" for note in result.notes]
    return out


def html_figure(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(alt, quote=True)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def artifact(uri: str, run_id: str, path: str, dst: Path) -> Path | None:
    from .. import tracking

    try:
        local = tracking.download_artifact(uri, run_id, path, dst)
    except SupuqError:
        return None
    return local if local.is_file() else None


def json_artifact(uri: str, run_id: str, path: str, dst: Path) -> dict | None:
    local = artifact(uri, run_id, path, dst)
    return json.loads(local.read_text()) if local else None


def num(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def as_int(value: Any) -> int | None:
    number = as_float(value)
    return int(number) if number is not None else None


def param_text(value: str | None) -> str:
    number = as_float(value)
    if value is None:
        return "-"
    return f"{number:.3g}" if number is not None else str(value)


@contextlib.contextmanager
def quiet_downloads():
    """No MLflow progress bar per downloaded artifact (dozens of them would drown the CLI's one line)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
