"""``landmark predict``, ``explain``, ``tag``, ``places``, ``review`` and ``serve``."""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

from ..core.errors import LandmarkError
from ..core.locations import resolve_dataset
from .common import ProgressBar, open_finished_run
from .train_commands import duration


def cmd_predict(args) -> int:
    run = open_finished_run(args.run, "predict with")
    from ..core.errors import ImageError
    from ..tagging.decision import TagStatus, decide_for
    from ..tagging.metadata import read_gps
    from ..tagging.predict import Predictor
    predictor = Predictor(run)
    results, failures = [], 0
    for image in args.images:
        try:
            assessment = predictor.assess(image, top_k=args.top_k)
            existing_gps = read_gps(image)
        except ImageError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            results.append({"image": image, "error": str(error)})
            continue
        decision = decide_for(predictor, image, assessment=assessment, existing_gps=existing_gps)
        place = decision.place
        results.append({"image": image, "outcome": decision.status, "familiarity": assessment.familiarity,
                        "landmark": decision.name if decision.status == TagStatus.TAGGED else None,
                        "latitude": place.latitude if place and decision.status == TagStatus.TAGGED else None,
                        "longitude": place.longitude if place and decision.status == TagStatus.TAGGED else None,
                        "predictions": [{"class": p.label, "probability": p.probability} for p in assessment.predictions]})
        if not args.json:
            familiarity = f", familiarity {assessment.familiarity:.3f}" if assessment.familiarity is not None else ""
            where = f" at {place.latitude:.4f}, {place.longitude:.4f}" if place and decision.status == TagStatus.TAGGED else ""
            print(f"{image}: {decision.status}{' as ' + decision.description + where if decision.status == TagStatus.TAGGED else ''}"
                  f"{familiarity}")
            for p in assessment.predictions:
                print(f"  {p.probability:7.2%}  {p.label}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failures else 0


#: What ``landmark explain --out`` writes, by the name's extension.
_HEATMAP_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def cmd_explain(args) -> int:
    out = Path(args.out)
    image_format = _HEATMAP_FORMATS.get(out.suffix.lower())
    if image_format is None:
        raise LandmarkError(f"--out {out}: the heatmap is an image; give a name ending in "
                            f"{', '.join(_HEATMAP_FORMATS)}")
    if os.path.lexists(out) and os.path.lexists(args.photo) and os.path.samefile(out, args.photo):
        raise LandmarkError(f"--out {out} is the photo being explained; choose another name")
    run = open_finished_run(args.run, "explain")
    from ..core.fileio import write_user_file
    from ..evaluation.explain import Explainer
    explainer = Explainer(run.path, args.checkpoint)
    explanation = explainer.explain(args.photo, args.target)
    heatmap = io.BytesIO()
    explanation.overlay().convert("RGB").save(heatmap, format=image_format)
    write_user_file(out, heatmap.getvalue())  # atomic: a failure leaves what was there
    print(f"{out}: Grad-CAM of {explanation.class_name} ({explanation.probability:.1%}) on layer "
          f"{type(explainer.layer).__name__}", file=sys.stderr)
    return 0


def cmd_tag(args) -> int:
    from ..runs.config import device_or_error
    from ..tagging.batch import tag_files
    from ..tagging.predict import Predictor

    shard = _parse_shard(args.shard) if args.shard is not None else None
    run = open_finished_run(args.run, "tag with")
    sidecars = args.sidecars or args.sidecar_dir is not None
    if sidecars and (args.overwrite or args.out):
        raise LandmarkError("--sidecars leaves the photos alone: it takes neither --out nor --overwrite")
    sidecar_dir = Path(args.sidecar_dir) if args.sidecar_dir is not None else None
    predictor = Predictor(run, device=device_or_error(args.device))
    out_dir = None if args.overwrite or sidecars else Path(args.out or "tagged")
    suffix = f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""  # each shard its own report: no shared file
    report = Path(args.report) if args.report else (out_dir or sidecar_dir or Path(".")) / f"tag-report{suffix}.csv"
    bar = ProgressBar("tagging")

    def progress(state) -> None:
        eta = f"  ETA {duration(state.eta_seconds)}" if state.eta_seconds is not None else ""
        bar.label = (f"tagging {state.files_per_second:5.1f} files/s{eta}  "
                     + " ".join(f"{k} {v}" for k, v in state.counts.items() if v))
        bar(state.done, state.total)

    counts = tag_files(predictor, args.paths, out_dir=out_dir, threshold=args.min_confidence, in_place=args.overwrite,
                       overwrite_gps=args.overwrite_gps, report_path=report, open_set=not args.tag_unfamiliar,
                       progress=progress, workers=args.workers, batch_size=args.batch_size, shard=shard,
                       sidecars=sidecars, sidecar_naming=args.sidecar_name, sidecar_dir=sidecar_dir)
    threshold = predictor.probability_threshold if args.min_confidence is None else args.min_confidence
    rule = f"probability >= {threshold:.2f}"
    if predictor.familiarity_threshold is not None and not args.tag_unfamiliar:
        rule += f" and familiarity >= {predictor.familiarity_threshold:.3f}"
    elif predictor.familiarity_threshold is None:
        rule += " (this model has no open-set check: run landmark evaluate to add it)"
    if bar.line_open:  # end the progress line before the summary
        print(file=sys.stderr)
    print(f"tagged when {rule}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()), file=sys.stderr)
    if counts["tagged_without_place"]:
        print(f"{counts['tagged_without_place']} photos tagged by name only: their class has no place "
              "(add it to the dataset's places.csv)", file=sys.stderr)
    print(report)
    return 0


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise LandmarkError(f"--shard takes K/N, e.g. 1/4 (got {text!r})") from None
    if not 1 <= k <= n:
        raise LandmarkError(f"--shard K/N needs 1 <= K <= N (got {text})")
    return k, n


def _position(text: str) -> tuple[float, float]:
    try:
        latitude, longitude = (float(part) for part in text.split(","))
    except ValueError:
        raise LandmarkError(f"a position is LAT,LON in degrees, e.g. 30.3285,35.4444 (got {text!r})") from None
    return latitude, longitude


def cmd_places(args) -> int:
    from ..geo.places import places_matching
    root = resolve_dataset(args.data) if args.data else None
    if args.towns or args.near:
        from ..geo.towns import nearest_towns, search_towns
        found_towns = (search_towns(args.towns) if args.towns
                       else [town for town, _ in nearest_towns(*_position(args.near))])
        for town in found_towns:
            print(f"{town.latitude:9.4f} {town.longitude:10.4f}  {town.description}")
        return 0 if found_towns else 1
    if args.set:
        from ..geo.towns import nearest_towns, place_at, set_place
        if root is None or args.at is None:
            raise LandmarkError("--set CLASS needs --at LAT,LON and --data DATASET (whose places.csv it writes)")
        latitude, longitude = _position(args.at)
        town, distance = nearest_towns(latitude, longitude, 1)[0]
        place = place_at(args.set, town, args.display_name, latitude, longitude)
        path = set_place(root, place)
        print(f"{args.set}: {place.description} ({latitude:.4f}, {longitude:.4f}; {distance:.0f} km from {town.name}) "
              f"in {path}", file=sys.stderr)
        return 0
    found = places_matching(args.name, root)
    if args.json:
        print(json.dumps([place.__dict__ for place in found], indent=2, ensure_ascii=False))
    else:
        for place in found:
            print(f"{place.latitude:9.4f} {place.longitude:10.4f}  {place.description}")
    if args.name and not found:
        print(f"no place for {args.name!r}: add it to the dataset's places.csv (or on the Explore page)", file=sys.stderr)
        return 1
    return 0


def cmd_review(args) -> int:
    from ..curation.review import Review, Verdict
    review = Review(args.report)
    judged = [(file, Verdict.CONFIRMED, None, False) for file in args.accept]
    for flag, pairs, new_class in (("--correct", args.correct, False), ("--new-class", args.new_class, True)):
        for pair in pairs:
            file, _, class_name = pair.rpartition("=")
            if not file or not class_name:
                raise LandmarkError(f"{flag} takes FILE=CLASS (got {pair!r})")
            judged.append((file, Verdict.CORRECTED, class_name, new_class))
    judged += [(file, Verdict.NOT_A_LANDMARK, None, False) for file in args.not_landmark]
    for file, verdict, class_name, new_class in judged:
        entry = review.judge(file, verdict, class_name, new_class=new_class)
        print(f"{entry['verdict']}: {Path(entry['file']).name} -> {entry['copy']} (in {review.dataset_root})", file=sys.stderr)
    if args.undo:
        taken_back = review.undo(None if args.undo == "last" else args.undo)
        gone = " (its copy had already left the dataset)" if taken_back and taken_back.get("copy_was_gone") else ""
        print(f"undid: {taken_back['verdict']} {Path(taken_back['file']).name}{gone}" if taken_back
              else "nothing to undo", file=sys.stderr)
    if args.retrain:
        runs_before = review.run.id
        result = review.retrain(progress=lambda stage, done, total: ProgressBar(stage)(done, total))
        print(f"retrained {runs_before} as {result.run.name}; re-tagged the photos the model decided:", file=sys.stderr)
        for status in result.before:
            if result.before[status] or result.after[status]:
                print(f"  {status:<11} {result.before[status]:>6} -> {result.after[status]}", file=sys.stderr)
        for change in result.changes:
            print(f"  {Path(change['file']).name}: {change['before']} {change['before_landmark']} -> "
                  f"{change['after']} {change['after_landmark']}", file=sys.stderr)
        print(result.run)
        return 0
    if judged or args.undo:
        return 0
    items = review.items()
    if args.json:
        print(json.dumps([item.__dict__ for item in items], indent=2, ensure_ascii=False, default=str))
        return 0
    for item in items:
        verdict = item.verdict
        said = f"{verdict['verdict']}{' ' + verdict['class'] if verdict.get('class') else ''}" if verdict else "-"
        probability = f"{item.probability:.2f}" if item.probability is not None else "-"
        print(f"{item.status:<10} margin {item.doubt:+.3f}  {item.prediction or '-':<28} p {probability}  "
              f"review {said:<30} {item.file}")
    if not items:
        print("nothing to review: no photo of this report was decided by the model", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from ..serve import API_KEY_ENV, ServeSettings, serve
    settings = ServeSettings(run=args.run, host=args.host, port=args.port, workers=args.workers,
                             api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, max_batch=args.max_batch,
                             batch_wait_ms=args.batch_wait_ms, max_queue=args.queue, device=args.device)
    serve(settings)
    return 0
