"""supuq.report.sweep: the report of a sweep, found by its name, on a tiny real sweep."""

from __future__ import annotations

from typer.testing import CliRunner

from supuq import tracking
from supuq.cli import app
from supuq.report import write_report

from ..conftest import PNG

runner = CliRunner()


def test_sweep_report_by_name(store):
    uri = store["uri"]
    written = write_report(uri, "rs", store["tmp"] / "sweep.html")
    assert written.kind == "sweep" and written.run_id == store["sweep"].parent_run_id
    page = written.path.read_text()
    assert written.images == page.count(PNG) == 3  # Pareto scatter, parameters vs GED, epochs reached
    assert "Pareto front" in page and "Epochs reached" in page and "Trials" in page
    for trial in store["sweep"].trials:
        assert trial["trial_id"] in page
    assert "report.html" in [a.path for a in tracking.client_for(uri).list_artifacts(written.run_id)]
    result = runner.invoke(app, ["report", "no-such-sweep", "--tracking-uri", uri])
    assert result.exit_code == 2 and "no retrain or sweep run" in result.output
