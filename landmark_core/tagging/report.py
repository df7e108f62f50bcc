"""The tag report: one CSV row per photo, appended as photos are done, read back to resume a run
without redoing a photo, and safe to open in a spreadsheet."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Mapping

from ..core.errors import LandmarkError
from ..geo.places import Place, display_name, strip_control_characters
from .decision import STATUSES, TagDecision, TagStatus
from .metadata import EarlierTag
from .walk import DecodedPhoto, file_key

REPORT_FIELDS = ["file", "output", "status", "prediction", "probability", "familiarity", "landmark", "region",
                 "country", "latitude", "longitude", "note", "size", "mtime_ns", "error", "added"]

def repair_torn_tail(report_path: Path) -> None:
    """Drop a last line cut short by a kill mid-write (no final newline), so appending starts on a fresh line."""
    if not report_path.exists() or report_path.stat().st_size == 0:
        return
    with open(report_path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        data = handle.seek(0) or handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


def done_before(report_path: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Files a previous run finished, with their (size, mtime) as recorded (rows that do not parse are redone),
    and which photo each tagged copy belongs to."""
    done, outputs = {}, {}
    if report_path.exists():
        with open(report_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            for row in csv.DictReader(handle):
                try:
                    # a photo whose tags could not be written, or that could not be read, is tried again (a
                    # folder may be writable now, a permission fixed: chmod leaves size and mtime as they were)
                    retried = row.get("status") == TagStatus.FAILED or row.get("error", "").startswith("cannot read")
                    if row.get("status") in STATUSES and not retried and row.get("file"):
                        done[row["file"]] = (int(row["size"]), int(row["mtime_ns"]))
                        if row.get("output"):
                            outputs[row["output"]] = row["file"]
                except (TypeError, ValueError):
                    continue
    return done, outputs


def report_rows(report_path: Path) -> dict[str, dict]:
    """Each photo's current row of a tag report (the last one: a re-run or a re-tag appends), by file, in the
    order the photos were first handled; rows cut short or not parsing are left out."""
    rows: dict[str, dict] = {}
    if not report_path.is_file():
        return rows
    with open(report_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        for row in csv.DictReader(handle):
            if row.get("file") and row.get("status") in STATUSES and None not in row:
                rows[row["file"]] = {key: value or "" for key, value in row.items()}
    return rows


def report_counts(rows: Mapping[str, dict]) -> dict[str, int]:
    """Photos per status among a report's current rows."""
    counts = {status: 0 for status in STATUSES}
    for row in rows.values():
        counts[row["status"]] += 1
    return counts


def read_summary(report_path: Path) -> dict:
    """A tag report's summary (``report.json``): counts, thresholds, and (since reviews) the run, the paths and
    where the tags went; {} when there is none."""
    summary = report_path.with_suffix(".json")
    if not _is_our_summary(summary):
        return {}
    return json.loads(summary.read_bytes())


def _unquoted(text: str) -> str:
    """A report cell as it was before :func:`spreadsheet_safe` guarded it."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def previous_decision(row: Mapping[str, str]) -> TagDecision | None:
    """The tag a report row says was written, rebuilt from the row (None when the photo got none)."""
    if row.get("status") != TagStatus.TAGGED or not row.get("prediction"):
        return None
    prediction = _unquoted(row["prediction"])
    place = None
    try:
        if row.get("latitude") and row.get("longitude"):
            place = Place(prediction, _unquoted(row.get("landmark", "")) or display_name(prediction),
                          _unquoted(row.get("region", "")), _unquoted(row.get("country", "")),
                          float(row["latitude"]), float(row["longitude"]))
    except ValueError:
        place = None
    return TagDecision(TagStatus.TAGGED, prediction=prediction, place=place)


def earlier_tag(row: Mapping[str, str] | None) -> EarlierTag | None:
    """The tag a report row says was written, and what it added (None when the photo got none)."""
    decision = previous_decision(row) if row else None
    if decision is None:
        return None
    try:
        added = json.loads(row.get("added") or "null")
    except ValueError:
        added = None
    return EarlierTag(decision, added if isinstance(added, dict) else None)


def _is_our_summary(path: Path) -> bool:
    try:
        summary = json.loads(path.read_bytes()[:1_000_000])
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"report", "counts", "meanings"} <= set(summary)


def check_report_path(report_path: Path) -> None:
    """Refuse a ``--report`` that names an existing file that is not a tag report (a photo, notes): appending
    rows to it would destroy it."""
    if report_path.suffix.lower() == ".json":
        raise LandmarkError(f"the report is a CSV file; {report_path.name} would be replaced by its summary "
                            f"({report_path.stem}.json): choose a name ending in .csv")
    summary = report_path.with_suffix(".json")
    if os.path.lexists(summary) and not _is_our_summary(summary):
        raise LandmarkError(f"{summary} exists and is not a tag report's summary; choose another --report")
    if not os.path.lexists(report_path):
        return
    if not report_path.is_file():
        raise LandmarkError(f"the report {report_path} exists and is not a file; choose another --report")
    if report_path.stat().st_size == 0:
        return
    with open(report_path, "rb") as handle:
        first = handle.readline(4096)
    try:
        header = next(csv.reader([first.decode("utf-8")]), [])
    except UnicodeDecodeError:
        header = []
    if not header or "file" not in header or "status" not in header or not set(header) <= set(REPORT_FIELDS):
        raise LandmarkError(f"{report_path} exists and is not a tag report; choose another --report "
                            "(a report is only ever appended to)")


def report_fields(report_path: Path) -> list[str]:
    """The columns of an existing report (an older version may have fewer), or today's for a new one."""
    if report_path.exists() and report_path.stat().st_size:
        with open(report_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            header = next(csv.reader(handle), None)
        if header:
            return header
    return REPORT_FIELDS


#: Report columns that hold text from names and places (class folders, places.csv, file names): a spreadsheet
#: runs a cell that starts with = + - @ (or a tab or carriage return) as a formula.
_TEXT_FIELDS = ("prediction", "landmark", "region", "country", "note", "error")  # file, output: absolute paths
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs (OWASP's advice: a leading quote) and without control
    characters."""
    text = strip_control_characters(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def report_row(item: DecodedPhoto, decision: TagDecision) -> dict:
    place = decision.place
    row = {"file": file_key(item.path), "size": item.size, "mtime_ns": item.mtime_ns,  # absolute, like output
           "output": item.output, "status": decision.status, "prediction": decision.prediction or "",
           "probability": f"{decision.probability:.4f}" if decision.probability is not None else "",
           "familiarity": f"{decision.familiarity:.4f}" if decision.familiarity is not None else "",
           "landmark": decision.name if decision.prediction else "", "region": place.region if place else "",
           "country": place.country if place else "", "latitude": place.latitude if place else "",
           "longitude": place.longitude if place else "", "note": decision.note, "error": decision.error or "",
           "added": json.dumps(item.added, ensure_ascii=False) if item.added is not None else ""}
    return row | {field: spreadsheet_safe(row[field]) for field in _TEXT_FIELDS}
