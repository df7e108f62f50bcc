"""Tables the dashboard and reports draw: training curves, live progress, confusion cells, run comparisons.

Pure functions from run folders to pandas DataFrames and dicts, so pages stay
thin and everything here is testable without a browser.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..runs.run import Run


def short_label(class_name: str, width: int = 28) -> str:
    """``11.Mount_Rushmore_National_Memorial`` → ``11 Mount Rushmore National…``: readable on a 50-class axis
    (47 of the 50 landmark_images classes fit whole)."""
    text = re.sub(r"^(\d+)\.", r"\1 ", class_name).replace("_", " ")
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def epoch_frame(run_dir: Path) -> pd.DataFrame:
    return pd.DataFrame(Run(run_dir).epochs)


def curves_frame(run_dirs: list[Path]) -> pd.DataFrame:
    """Long form: run, epoch, metric (train/val loss/acc), value — for overlaid line charts."""
    frames = []
    for run_dir in run_dirs:
        epochs = epoch_frame(run_dir)
        if epochs.empty:
            continue
        long = epochs.melt(id_vars=["epoch"], value_vars=[c for c in ("train_loss", "val_loss", "train_acc", "val_acc")
                                                          if c in epochs], var_name="series", value_name="value")
        long["run"] = run_dir.name
        long["split"] = long["series"].str.split("_").str[0]
        long["metric"] = long["series"].str.split("_").str[1].map({"loss": "loss", "acc": "accuracy"})
        frames.append(long)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["epoch", "series", "value", "run", "split", "metric"])


def batch_losses(run_dir: Path) -> pd.DataFrame:
    """The logged batch losses of a run's first epoch (the only curve there is before an epoch ends)."""
    return pd.DataFrame([{"batch": r["batch"], "loss": r["loss"]} for r in Run(run_dir).metrics
                         if r.get("kind") == "batch" and r.get("epoch") == 1], columns=["batch", "loss"])


def confusion_frame(evaluation: dict, normalize: bool = False) -> pd.DataFrame:
    """Long form of the confusion matrix: true, predicted (full and short names), count, share of the true class."""
    classes = evaluation["classes"]
    matrix = np.asarray(evaluation["confusion_matrix"], dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    rows = []
    for t, true_name in enumerate(classes):
        for p, pred_name in enumerate(classes):
            rows.append({"true": true_name, "predicted": pred_name, "true_short": short_label(true_name),
                         "predicted_short": short_label(pred_name), "count": int(matrix[t, p]),
                         "share": float(shares[t, p])})
    frame = pd.DataFrame(rows)
    frame["value"] = frame["share"] if normalize else frame["count"]
    return frame


def confusion_classes(evaluation: dict, order: str = "class", top: int | None = None) -> list[str]:
    """The classes a confusion matrix shows, in order: ``class`` (their own order) or ``confusion`` (the classes
    with the most mistakes, made or received, first); ``top`` keeps only the N most-confused classes."""
    classes = list(evaluation["classes"])
    matrix = np.asarray(evaluation["confusion_matrix"], dtype=float)
    errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
    by_confusion = [classes[i] for i in np.argsort(-errors, kind="stable")]
    chosen = set(by_confusion[:top]) if top else set(classes)
    return [c for c in (by_confusion if order == "confusion" else classes) if c in chosen]


def predictions_frame(run_dir: Path) -> pd.DataFrame:
    """One row per test image with class names, top-1 probability and loss."""
    run = Run(run_dir)
    classes = (run.evaluation or {}).get("classes", [])
    rows = run.predictions
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["path", "true", "predicted", "loss", "top5", "true_name", "predicted_name",
                                     "probability", "correct"])
    frame["true_name"] = frame["true"].map(lambda i: classes[i])
    frame["predicted_name"] = frame["predicted"].map(lambda i: classes[i])
    frame["probability"] = frame["top5"].map(lambda top: top[0][1])
    frame["correct"] = frame["true"] == frame["predicted"]
    return frame


def cell_images(run_dir: Path, true_name: str, predicted_name: str) -> pd.DataFrame:
    frame = predictions_frame(run_dir)
    return frame[(frame["true_name"] == true_name) & (frame["predicted_name"] == predicted_name)].sort_values("loss", ascending=False)


def top_losses(run_dir: Path, n: int = 12) -> pd.DataFrame:
    return predictions_frame(run_dir).sort_values("loss", ascending=False).head(n)


def per_class_frame(run_dir: Path) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, with the class's ``landmark`` label (as the confusion matrix
    writes it: "21 Taj Mahal", not the folder "21.Taj_Mahal") first."""
    frame = pd.DataFrame((Run(run_dir).evaluation or {}).get("per_class", []))
    if frame.empty:
        return frame
    frame.insert(0, "landmark", frame["class"].map(short_label))
    return frame


def class_places_frame(run_dir: Path) -> pd.DataFrame:
    """Each class that has a place: its name, coordinates and test recall (for a map of where the model works)."""
    from ..geo.places import places_table
    run = Run(run_dir)
    evaluation = run.evaluation or {}
    recall = {row["class"]: row for row in evaluation.get("per_class", [])}
    rows = [{"class": row["folder"], "place": row["display_name"], "country": row["country"],
             "latitude": row["latitude"], "longitude": row["longitude"],
             "recall": recall.get(row["folder"], {}).get("recall"), "test photos": recall.get(row["folder"], {}).get("support")}
            for row in places_table(evaluation.get("classes", []), run.dataset) if row["latitude"] is not None]
    return pd.DataFrame(rows, columns=["class", "place", "country", "latitude", "longitude", "recall", "test photos"])


def comparison(run_dirs: list[Path]) -> dict:
    """Final metrics of each run, per-class recall side by side, and images the first run gets right and another wrong.

    Runs evaluated on different test sets are compared on the images they share (``shared_photos``, none for
    runs on different datasets) and on the classes they share.
    """
    metrics, recalls = [], []
    predictions = {}
    for run_dir in run_dirs:
        run = Run(run_dir)
        evaluation, config, status = run.evaluation or {}, run.config_values, run.status
        metrics.append({"run": run_dir.name, "model": config.get("model"), "image size": config.get("image_size"),
                        "epochs": config.get("epochs"), "test top-1": evaluation.get("top1"),
                        "test top-5": evaluation.get("top5"), "train seconds": status.get("train_seconds")})
        for row in evaluation.get("per_class", []):
            recalls.append({"run": run_dir.name, "class": row["class"], "recall": row["recall"]})
        predictions[run_dir.name] = predictions_frame(run_dir).set_index("path")
    per_class = pd.DataFrame(recalls)
    if not per_class.empty:
        per_class = per_class.pivot_table(index="class", columns="run", values="recall").reset_index()
        names = [r.name for r in run_dirs]
        if len(names) >= 2 and all(n in per_class for n in names[:2]):
            per_class = per_class.dropna(subset=names[:2])  # a class only one of them knows has no difference
            per_class["difference"] = per_class[names[0]] - per_class[names[1]]
    disagreements = []
    shared = pd.Index([])
    if len(run_dirs) >= 2:
        first, second = predictions[run_dirs[0].name], predictions[run_dirs[1].name]
        shared = first.index.intersection(second.index)
        for path in shared:
            a, b = first.loc[path], second.loc[path]
            if bool(a["correct"]) != bool(b["correct"]):
                disagreements.append({"path": path, "true": a["true_name"], "right": run_dirs[0].name if a["correct"] else run_dirs[1].name,
                                      "first_prediction": a["predicted_name"], "first_probability": a["probability"],
                                      "second_prediction": b["predicted_name"], "second_probability": b["probability"]})
    return {"metrics": pd.DataFrame(metrics), "per_class": per_class, "disagreements": pd.DataFrame(disagreements),
            # what the per-photo comparison stands on: the test photos both runs were evaluated on
            "shared_photos": len(shared), "test_photos": {name: len(frame) for name, frame in predictions.items()}}


def familiarity_curve_frame(evaluation: dict) -> pd.DataFrame:
    """Long form: familiarity threshold, series (known tagged / precision / unknown tagged), value."""
    curve = pd.DataFrame((evaluation.get("open_set") or {}).get("curve") or [])
    if curve.empty:
        return curve
    names = {"known_tagged": "known photos tagged", "precision": "precision of the tags",
             "unknown_tagged": "unknown photos tagged",
             "held_out_tagged": "photos of a held-out class tagged"}
    long = curve.melt(id_vars="threshold", value_vars=[c for c in names if c in curve], var_name="series")
    long["series"] = long["series"].map(names)
    return long.dropna()


#: How the run's own held-out estimate compared with the share actually tagged when landmarks were held out of
#: training (BENCHMARKS.md table 8, 2026-12-02: the default recipe, 4 draws on each development set and both
#: merged) and when another set's landmarks were the unknowns.
HELD_OUT_UNDERESTIMATE = "3 to 23 times"


def wrong_tag_estimate(evaluation: dict) -> str | None:
    """In words, what the default operating point means for photos of landmarks the run never learned."""
    open_set = evaluation.get("open_set") or {}
    held_out, unknown = open_set.get("held_out_classes") or {}, open_set.get("unknown") or {}
    if held_out.get("tagged_share") is None:
        return None  # evaluated before the estimate existed
    text = (f"Of photos of landmarks this model never learned, roughly **{held_out['tagged_share']:.0%}** would get "
            "a wrong name and place: that share of its own test photos would, each judged as if its landmark had "
            "never been learned. Take it as a floor for landmarks like its own (another domed mosque, another "
            f"stone pyramid): on real photos, landmarks held out of training were tagged {HELD_OUT_UNDERESTIMATE} "
            "as often (BENCHMARKS.md, table 8). Landmarks unlike all of its own were tagged less often than this, "
            "photos of no landmark hardly ever.")
    if unknown.get("tagged_share") is not None and unknown.get("count"):
        text += (f" Of the {unknown['count']} photos of other places it was evaluated on (the dataset's unknown/ "
                 f"folder), {unknown['tagged_share']:.0%} would.")
    return text


def tagged_unknowns(evaluation: dict, n: int = 12) -> pd.DataFrame:
    """Unknown evaluation photos the default decision would still tag, most familiar first: the mistakes to look at."""
    open_set = evaluation.get("open_set") or {}
    frame = pd.DataFrame(open_set.get("unknown_predictions") or [])
    if frame.empty:
        return frame
    frame = frame[(frame["split"] == "evaluation") & (frame["probability"] >= open_set["probability_threshold"])
                  & (frame["familiarity"] >= open_set["familiarity_threshold"])]
    frame = frame.assign(predicted_name=[evaluation["classes"][i] for i in frame["predicted"]])
    return frame.sort_values("familiarity", ascending=False).head(n)
