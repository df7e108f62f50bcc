"""Review a tag report and teach the model: the user's verdicts become training photos, and a retrained model
re-tags the library.

A tag report (``landmark tag``) says what became of each photo. Reviewing it, the user confirms a tag, corrects
it to another class (or a new one), or marks a photo "not a landmark". Each verdict copies the photo into the
run's dataset (``train/<class>/``, or ``unknown/``, which calibrates and tests the open-set decision), never
moving or changing the photo itself, and is logged beside the report in ``<report>.review.jsonl`` with the
copy's hash, so an undo deletes only our own copy. :meth:`Review.retrain` trains a new run with the same
settings on the grown dataset and re-tags only the photos whose decision can change (those the model decided;
photos that had a position of their own, or could not be read, stay as they were); a verdict decides over the
model for its photo.
"""
from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import DataError, LandmarkError
from ..core.fileio import append_jsonl, read_jsonl, write_bytes_atomic
from ..core.images import read_photo
from ..data import UNKNOWN_FOLDERS, scan_dataset
from ..geo.places import normalise
from ..pipeline import create_run, train
from ..runs.run import Run, artifacts_of
from ..tagging.batch import destination_arguments, tag_files
from ..tagging.decision import TagStatus
from ..tagging.predict import Predictor
from ..tagging.report import check_report_path, previous_decision, read_summary, report_counts, report_rows
from .cleaning import free_name, training_folder


class Verdict(str, enum.Enum):
    """What the user says a reviewed photo shows."""
    CONFIRMED = "confirmed"  # the tag is right
    CORRECTED = "corrected"  # it is another landmark (a class of the run, or a new one)
    NOT_A_LANDMARK = "not_a_landmark"  # no landmark the model should know: it teaches the open-set decision

    def __str__(self) -> str:
        return self.value


#: The outcomes a review shows, in this order: those the model decided (a photo with a position of its own was
#: never decided, an unreadable one cannot be looked at).
REVIEWED_OUTCOMES = (TagStatus.TAGGED, TagStatus.ABSTAINED, TagStatus.UNKNOWN, TagStatus.FAILED)


@dataclass(frozen=True)
class ReviewItem:
    """One photo of a report as a review shows it."""
    file: str
    status: TagStatus
    prediction: str
    probability: float | None
    familiarity: float | None
    doubt: float  # how close the decision came to going the other way: smaller is less certain
    verdict: dict | None  # the logged verdict (see Review.judge), if the user gave one


@dataclass(frozen=True)
class RetagResult:
    run: Path
    before: dict[str, int]
    after: dict[str, int]
    changes: list[dict]  # file, before and after status and landmark, for each photo whose tag changed


def _finite_number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Review:
    """The one handle on the review of a tag report: its photos, the user's verdicts, retraining."""

    def __init__(self, report: str | os.PathLike):
        self.report_path = Path(report).expanduser().resolve()
        if not self.report_path.is_file():
            raise LandmarkError(f"{self.report_path} is not a tag report (make one with landmark tag)")
        check_report_path(self.report_path)
        self.log_path = self.report_path.with_name(self.report_path.stem + ".review.jsonl")

    # --- what there is to review ------------------------------------------------------------------

    @property
    def summary(self) -> dict:
        return read_summary(self.report_path)

    @property
    def run(self) -> Run:
        """The run whose model made the report's current tags."""
        run = self.summary.get("run")
        if not run:
            raise LandmarkError(f"{self.report_path.name} does not say which model tagged it (it was written before "
                                "reviews existed): tag the photos again to review them")
        return Run.open(run)

    @property
    def dataset_root(self) -> Path:
        root = self.run.dataset
        if root is None:
            raise DataError(f"the dataset {self.run.config_values.get('data')} of {self.run.id} is not there any more: "
                            "a verdict has nowhere to go")
        return root.resolve()

    def rows(self) -> dict[str, dict]:
        return report_rows(self.report_path)

    def verdicts(self) -> dict[str, dict]:
        """The current verdict of each judged photo, by file."""
        return {entry["file"]: entry for entry in self._log()}

    def _log(self) -> list[dict]:
        """The verdicts logged, oldest first; a line that is not one of ours (edited by hand, torn) is passed over."""
        return [entry for entry in read_jsonl(self.log_path) if isinstance(entry, dict)
                and all(isinstance(entry.get(key), str) for key in ("file", "verdict", "copy", "sha256"))
                and entry["verdict"] in {verdict.value for verdict in Verdict}]

    def items(self, outcomes: tuple[str, ...] = REVIEWED_OUTCOMES) -> list[ReviewItem]:
        """The photos to review, grouped by outcome (in ``outcomes``' order), the least certain first in each."""
        summary, verdicts = self.summary, self.verdicts()
        probability_threshold = _finite_number(summary.get("probability_threshold")) or 0.0
        familiarity_threshold = _finite_number(summary.get("familiarity_threshold"))
        items = []
        for file, row in self.rows().items():
            if row["status"] not in outcomes:
                continue
            probability, familiarity = _finite_number(row.get("probability")), _finite_number(row.get("familiarity"))
            items.append(ReviewItem(file, TagStatus(row["status"]), row.get("prediction", ""), probability, familiarity,
                                    _doubt(row["status"], probability, familiarity, probability_threshold,
                                           familiarity_threshold), verdicts.get(file)))
        # within an outcome: the photos still to judge first, the least certain of them first
        return sorted(items, key=lambda item: (outcomes.index(item.status), item.verdict is not None, item.doubt))

    # --- verdicts ---------------------------------------------------------------------------------

    def judge(self, file: str | os.PathLike, verdict: Verdict | str, class_name: str | None = None, *,
              new_class: bool = False) -> dict:
        """Record the user's verdict on one photo of the report and copy the photo into the dataset; a photo judged
        before loses its earlier verdict (and that copy) first. A correction names a class of the dataset (matched
        as class names are: ``Taj Mahal`` is ``21.Taj_Mahal``), or, with ``new_class``, a class to add: a typo
        never makes a class by itself. Returns the logged entry."""
        verdict = Verdict(verdict)
        file = self._file_of(file)
        row = self.rows()[file]
        root = self.dataset_root
        model_said = previous_decision(row)
        if verdict is Verdict.CONFIRMED:
            if model_said is None:
                raise LandmarkError(f"{Path(file).name} was not tagged ({row['status']}): there is no tag to confirm; "
                                    "correct it to its class instead")
            class_name = self._class_folder(root, model_said.prediction, new_class=False)
        elif verdict is Verdict.CORRECTED:
            if not class_name:
                raise LandmarkError("a correction names the photo's class")
            class_name = self._class_folder(root, class_name, new_class=new_class)
            if model_said is not None and class_name == model_said.prediction:
                verdict = Verdict.CONFIRMED
        else:
            class_name = None
        folder = training_folder(root, class_name) if class_name else _unknown_folder(root)
        data = read_photo(Path(file))
        with self._locked():
            if file in self.verdicts():
                self._undo_locked(file)
            created = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
            name = Path(file).name
            # a name the dataset reads as hidden or private (_DSC1234.JPG, .photo.jpg) would never be trained on
            copy = free_name(folder, f"review-{name}" if name.startswith((".", "_")) else name)
            write_bytes_atomic(copy, data)
            entry = {"file": file, "verdict": verdict.value, "class": class_name,
                     "copy": copy.relative_to(root).as_posix(), "sha256": _sha256(data),
                     "created_class": created and class_name is not None, "time": time.time()}
            append_jsonl(self.log_path, entry)
        return entry

    @staticmethod
    def _class_folder(root: Path, class_name: str, *, new_class: bool) -> str:
        """The dataset's class folder ``class_name`` means, or ``class_name`` itself when it is to be new."""
        classes = scan_dataset(root).classes
        if class_name in classes:
            return class_name
        matching = [c for c in classes if normalise(c) == normalise(class_name)]
        if len(matching) == 1:
            return matching[0]
        if not new_class:
            shown = ", ".join(classes[:8]) + (", …" if len(classes) > 8 else "")
            raise LandmarkError(f"{class_name!r} is not a class of {root.name} ({shown}); to add it as a new class, "
                                "say so (--new-class FILE=CLASS, or 'a new class…' on the page)")
        return class_name

    @contextlib.contextmanager
    def _locked(self):
        """One writer of the review log at a time (two browser tabs, the page and the CLI)."""
        with open(self.log_path.with_name(self.log_path.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def undo(self, file: str | os.PathLike | None = None) -> dict | None:
        """Take back the verdict on ``file`` (the latest verdict when None): its copy leaves the dataset (only if it
        is still the copy we made), and a class folder the verdict made goes when it is empty again. Returns the
        verdict taken back (with ``copy_was_gone`` when its copy had left the dataset already), or None when there
        was none."""
        with self._locked():
            return self._undo_locked(file)

    def _undo_locked(self, file: str | os.PathLike | None) -> dict | None:
        log = self._log()
        if not log:
            return None
        key = log[-1]["file"] if file is None else self._file_of(file, must_be_in_report=False)
        matching = [entry for entry in log if entry["file"] == key]
        if not matching:
            return None
        entry = dict(matching[-1])
        root = self.dataset_root
        copy = root / entry["copy"]
        if not copy.resolve().is_relative_to(root):
            raise DataError(f"the review log names {entry['copy']}, which is outside the dataset {root}: left alone")
        if copy.is_file():
            if _sha256(copy.read_bytes()) != entry["sha256"]:
                raise DataError(f"{entry['copy']} changed since the review copied it there: left alone (delete it by "
                                "hand if it should go)")
            copy.unlink()
        else:
            entry["copy_was_gone"] = True  # moved or deleted by hand: the verdict goes, there is no copy to take
        if entry.get("created_class") is True and copy.parent.is_dir() and not any(copy.parent.iterdir()):
            copy.parent.rmdir()  # an empty class folder would be a class without photos
        kept = [other for other in log if other["file"] != key]
        write_bytes_atomic(self.log_path, "".join(json.dumps(other) + "\n" for other in kept).encode())
        return entry

    def _file_of(self, file: str | os.PathLike, must_be_in_report: bool = True) -> str:
        """A photo as the report names it (its real path)."""
        key = os.path.realpath(os.path.expanduser(os.fspath(file)))
        if must_be_in_report and key not in self.rows():
            raise LandmarkError(f"{file} is not a photo of the report {self.report_path.name}")
        return key

    # --- teaching ---------------------------------------------------------------------------------

    def retrain(self, *, progress: Callable[[str, int, int], None] | None = None,
                tag_progress: Callable | None = None) -> RetagResult:
        """Train a new run with the tagging run's settings on its dataset (which now holds the verdicts' copies),
        then re-tag the report's photos with it. The old run stays as it was."""
        old = self.run
        new_run = create_run(old.config(), artifacts=artifacts_of(old.path))  # beside the old one
        train(new_run, progress=progress)
        return self.retag(new_run, progress=tag_progress)

    def retag(self, run: str | os.PathLike | Run, *, progress: Callable | None = None) -> RetagResult:
        """Re-tag, with ``run``'s model, the photos whose decision can change (see :data:`REVIEWED_OUTCOMES`),
        where the report's tags went; the earlier tag is taken out first, the verdicts decide over the model."""
        summary = self.summary
        arguments = destination_arguments(summary)
        predictor = Predictor(run)
        before_rows = self.rows()
        redo = [file for file, row in before_rows.items() if row["status"] in REVIEWED_OUTCOMES]
        verdicts = {file: (entry["verdict"], entry["class"]) for file, entry in self.verdicts().items()}
        tag_files(predictor, summary.get("paths") or [], report_path=self.report_path, redo=redo, verdicts=verdicts,
                  threshold=summary.get("threshold"), open_set=summary.get("open_set", True),
                  overwrite_gps=summary.get("overwrite_gps", False), progress=progress, **arguments)
        after_rows = self.rows()
        changes = []
        for file in redo:
            if file in after_rows and _tag_of(before_rows[file]) != _tag_of(after_rows[file]):
                (before, before_landmark), (after, after_landmark) = _tag_of(before_rows[file]), _tag_of(after_rows[file])
                changes.append({"file": file, "before": before, "before_landmark": before_landmark, "after": after,
                                "after_landmark": after_landmark})
        return RetagResult(predictor.run_dir, report_counts(before_rows), report_counts(after_rows), changes)


def _tag_of(row: dict) -> tuple[str, str]:
    """A report row's outcome and, when it was tagged, the landmark it was tagged with."""
    return row["status"], row["landmark"] if row["status"] == TagStatus.TAGGED else ""


def _doubt(status: str, probability: float | None, familiarity: float | None, probability_threshold: float,
           familiarity_threshold: float | None) -> float:
    """How far a photo's decision is from going the other way: a tag by the smaller of its two margins (either
    could have withheld it), an abstention by its probability's distance below the threshold, an unknown by its
    familiarity's. A missing number sorts last."""
    probability_margin = (probability - probability_threshold) if probability is not None else math.inf
    familiarity_margin = (familiarity - familiarity_threshold) if familiarity is not None and familiarity_threshold is not None else math.inf
    if status in (TagStatus.TAGGED, TagStatus.FAILED):
        return min(probability_margin, familiarity_margin)
    if status == TagStatus.ABSTAINED:
        return -probability_margin if probability is not None else math.inf
    return -familiarity_margin if familiarity_margin != math.inf else math.inf


def _unknown_folder(root: Path) -> Path:
    """The dataset's root-level unknown folder (``unknown/`` however it is spelled), or where a new one goes."""
    for candidate in sorted(root.iterdir()):
        if candidate.is_dir() and candidate.name.lower() in UNKNOWN_FOLDERS:
            return candidate
    return root / "unknown"


def find_reports(folders, depth: int = 2) -> list[Path]:
    """Tag reports (a CSV with its ``landmark tag`` summary beside it) in ``folders`` and up to ``depth`` levels
    below, the newest first: what the app offers to review."""
    found = set()
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            continue
        for level in range(depth + 1):
            for summary in folder.glob("/".join(["*"] * level + ["*.json"])):
                report = summary.with_suffix(".csv")
                if report.is_file() and read_summary(report):
                    found.add(report.resolve())
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)
