"""supuq.data.lidc_root: where pylidc's DICOM root comes from (none configured, a bad one, ~/.pylidcrc rewritten with
a line)."""

from __future__ import annotations

import pytest

from supuq.data.lidc import load_lidc
from supuq.data.lidc_root import NO_ROOT_MESSAGE, configure_pylidcrc
from supuq.errors import DataError

from ..lidc_dicom import lidc_home
from .test_lidc import SMALL_PID


def test_pylidc_no_root_configured(lidc_home):
    with pytest.raises(DataError) as err:
        load_lidc(scans=[SMALL_PID], progress=False)
    assert str(err.value) == NO_ROOT_MESSAGE
    assert not (lidc_home / ".pylidcrc").exists()  # nothing written without a root


def test_pylidc_bad_root_and_unknown_patient(tmp_path, lidc_home, monkeypatch):
    monkeypatch.setenv("SUPUQ_LIDC_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="not a folder"):
        load_lidc(progress=False)
    (tmp_path / "dicom").mkdir()
    with pytest.raises(DataError, match="unknown LIDC patient id"):
        load_lidc(root=tmp_path / "dicom", scans=["LIDC-IDRI-9999"], work_dir=tmp_path / "w", progress=False)


def test_pylidcrc_rewritten_with_a_line(tmp_path, lidc_home, capsys):
    rc = lidc_home / ".pylidcrc"
    rc.write_text("[dicom]\npath = /somewhere/else\nwarn = True\n\n[other]\nkey = 1\n")
    (tmp_path / "dicom").mkdir()
    root = (tmp_path / "dicom").resolve()
    configure_pylidcrc(root)
    assert f"pointing at {root} (it pointed at /somewhere/else)" in capsys.readouterr().err
    text = rc.read_text()
    assert f"path = {root}" in text and "[other]" in text and "warn = True" in text
    configure_pylidcrc(root)  # already right: silent, untouched
    assert capsys.readouterr().err == ""
