"""supuq.cli.tables: the result tables on the terminal (rich fits a narrow one) next to their markdown."""

from __future__ import annotations

from supuq.workflows.tables import Scale, build_tables, to_markdown

from ..workflows.test_tables import METHODS, random_per_seed, rich_text


def test_markdown_rows_are_whole_lines_and_rich_fits_a_narrow_terminal():
    result = build_tables("lidc", random_per_seed(), "50 (5 x 10)", scale=Scale(4, 8, 32))
    for table in to_markdown(result).split("\n## ")[1:]:
        rows = [line for line in table.splitlines() if line.startswith("|")]
        assert len(rows) == 2 + len(METHODS)
        assert len({row.count(" | ") for row in rows[:1] + rows[2:]}) == 1  # every row has every column
    for width in (80, 130):
        text = rich_text(result, width)
        assert max(len(line) for line in text.splitlines()) <= width
        assert "Table 2: GED on lidc" in text and "Smoke-scale run" in text
