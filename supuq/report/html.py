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
.configs td:nth-child(2) { text-align: left; white-space: pre-line; }
/* click to enlarge without a script: the label toggles a hidden checkbox; checked, the frame covers the window
   and shows the picture at least 1100 px wide (or the window's width), scrolling where it is taller */
.zoom { display: block; cursor: zoom-in; } .zoom input { display: none; }
.zoom input:checked + .frame { position: fixed; inset: 0; z-index: 10; overflow: auto; padding: 16px;
       background: rgba(20, 20, 20, 0.9); cursor: zoom-out; text-align: center; box-sizing: border-box; }
.zoom input:checked + .frame img { max-width: none; width: auto; min-width: min(100%, 1100px); background: #fff; }
/* a table sorted without a script: its cells are items of one grid in document order, and the checked radio
   button sets every cell's CSS `order` to its row's rank under that key (a custom property on the row) */
.sortbar { font-size: 0.88em; margin: 4px 0; } .sortbar input { display: none; }
.sortbar label { display: inline-block; margin: 2px 4px 2px 0; padding: 2px 8px; border: 1px solid #bbb;
                 border-radius: 10px; cursor: pointer; white-space: nowrap; }
.sortbar input:checked + label { background: #2b5d8a; border-color: #2b5d8a; color: #fff; }
.sorted { display: grid; width: max-content; max-width: 100%; max-height: 32em; overflow: auto;
          border: 1px solid #ccc; font-size: 0.9rem; margin: 6px 0 16px; }
.sorted .tr { display: contents; }
.sorted .th, .sorted .td { padding: 3px 10px; border-bottom: 1px solid #e6e6e6; text-align: right; white-space: nowrap; }
.sorted .th { position: sticky; top: 0; order: -1; background: #f2f2f2; font-weight: bold; }
.sorted .first { text-align: left; } .sorted .na { color: #999; }
""" + "".join(f".sort-{j}:checked ~ .sorted .td {{ order: var(--k{j}); }}\n" for j in range(16))
SORT_KEYS_MAX = 16  # the rules above cover this many sort keys per table


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


def html_figure(path: Path, alt: str, caption: str, anchor: str | None = None) -> str:
    """The PNG at `path` embedded as a data URI; a click enlarges it (pure CSS, see `.zoom`), another click
    puts it back. `anchor`: the figure's id, for links within the page."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    ident = f" id='{html.escape(anchor, quote=True)}'" if anchor else ""
    return (f"<figure{ident}><label class='zoom' title='click to enlarge'><input type='checkbox'><span class='frame'>"
            f"<img alt='{html.escape(alt, quote=True)}' src='data:image/png;base64,{data}'></span></label>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_sorted_table(name: str, head: list[str], rows: list[list[str]], keys: list[tuple[str, list[int]]],
                      raw_first: bool = False) -> str:
    """A table the reader re-sorts with radio buttons, without a script. `keys`: (label, ranks) per sort order,
    ranks[i] the position of row i in that order (0 first); the first key is checked. `name` makes the radio
    group unique on the page; `raw_first` leaves the first column's cells unescaped (they hold markup)."""
    if not 1 <= len(keys) <= SORT_KEYS_MAX:
        raise ValueError(f"a sorted table takes 1 to {SORT_KEYS_MAX} sort keys, got {len(keys)}")
    bar = []
    for j, (label, _) in enumerate(keys):
        ident = f"{name}-sort-{j}"
        bar.append(f"<input type='radio' name='{name}-sort' id='{ident}' class='sort-{j}'{' checked' if j == 0 else ''}>"
                   f"<label for='{ident}'>{html.escape(label)}</label>")

    def cell(kind: str, value: str, i: int, raw: bool) -> str:
        classes = kind + (" first" if i == 0 else "") + (" na" if value == "n/a" else "")
        return f"<span class='{classes}'>{value if raw else html.escape(str(value))}</span>"

    grid = [f"<div class='sorted' style='grid-template-columns: repeat({len(head)}, auto)'>",
            *(cell("th", h, i, False) for i, h in enumerate(head))]
    for r, row in enumerate(rows):
        ranks = ";".join(f"--k{j}:{ranks[r]}" for j, (_, ranks) in enumerate(keys))
        grid.append(f"<div class='tr' style='{ranks}'>"
                    + "".join(cell("td", v, i, raw_first and i == 0) for i, v in enumerate(row)) + "</div>")
    # the radio buttons must be siblings of the grid for the `.sort-j:checked ~ .sorted` rules
    return "<div class='sortbar'><span>sort by: </span>" + "".join(bar) + "".join(grid) + "</div></div>"


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
