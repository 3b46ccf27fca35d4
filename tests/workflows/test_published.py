"""supuq.workflows.published: Hu et al.'s published values."""

from __future__ import annotations

from supuq.workflows.published import PROTOCOL, PUBLISHED_LABEL
from supuq.workflows.tables import build_tables

from .test_tables import random_per_seed


def test_published_values_of_hu_et_al():
    per_seed = random_per_seed(seeds=3)
    expected = {
        "lidc-png": {"ged": ["0.267 ± 0.012", "0.346 ± 0.038", "0.553 ± 0.010"],
                     "ncc": ["0.669 ± 0.011", "not reported", "0.597 ± 0.006"]},
        "miccai2012": {"ged": ["0.373 ± 0.021", "0.382 ± 0.017", "0.571 ± 0.028"],
                       "ncc": ["0.345 ± 0.005", "not reported", "0.299 ± 0.011"]},
    }
    for dataset, metrics in expected.items():
        result = build_tables(dataset, per_seed, 50)
        for table, metric, seeds in zip(result.tables[:2], ("ged", "ncc"), (5, 3)):
            column = table.columns[-1]
            assert column.kind == "published" and PUBLISHED_LABEL in column.name and PROTOCOL in column.name
            assert f"{seeds} seeds" in column.name
            assert [row[-1].text for row in table.rows] == metrics[metric]
        assert all(c.kind != "published" for c in result.tables[2].columns)
        assert any("slice-level" in note for note in result.notes)
    for dataset in ("synthetic", "qubiq"):
        result = build_tables(dataset, per_seed, 50)
        assert all(c.kind != "published" for t in result.tables for c in t.columns)
        assert any("No published values" in note for note in result.notes)
