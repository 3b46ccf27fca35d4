"""supuq.report.html: the result tables' HTML (the published column only for the paper's datasets)."""

from __future__ import annotations

from supuq.report.html import html_result_tables
from supuq.workflows.published import PUBLISHED_LABEL
from supuq.workflows.tables import build_tables


def test_published_column_only_for_the_papers_datasets():
    # three seeds whose GED has mean 0.3 and sample std 0.01, NCC mean 0.5 and std 0.02
    per_seed = {"supervised": [{"ged": g, "ncc": n} for g, n in ((0.29, 0.48), (0.30, 0.50), (0.31, 0.52))]}
    lidc = "".join(html_result_tables(build_tables("lidc-toolbox", per_seed, 50)))
    assert lidc.count(PUBLISHED_LABEL) == 2  # the published column of Table 2 and of Table 3
    assert "0.267 ± 0.012" in lidc and "0.669 ± 0.011" in lidc  # Hu et al.'s LIDC values for ours
    assert "slice-level random split, the authors&#x27; preprocessing" in lidc
    synthetic = "".join(html_result_tables(build_tables("synthetic", per_seed, 50)))
    assert PUBLISHED_LABEL not in synthetic and "0.3000 ± 0.0100" in synthetic and "0.500 ± 0.020" in synthetic
