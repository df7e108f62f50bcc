"""Run every benchmark, print the tables and write BENCHMARKS.md.

    python -m bench            # full run on this machine (tens of minutes on 2 CPU cores)
    python -m bench --smoke    # tiny sizes, seconds: keeps the benchmarks working (CI)
    python -m bench --only real fewshot --data DIR [DIR ...]   # real photos: class folders (train/ + test/)
    python -m bench --only openset --data DIR DIR              # held-out classes of each set and of both, and each set as the other's unknowns
    python -m bench --only tagging                             # landmark tag on a 20,000-photo library
    python -m bench --only distributed                         # torchrun: 1 vs 2 training processes
    python -m bench --only review --data KNOWN OTHER           # tag, review the mistakes, Retrain: real photos
    python -m bench --only serve                               # landmark serve: 1, 4, 16 clients, batching on/off
    python -m bench --only backends --data DIR [DIR ...]       # TorchScript vs ONNX Runtime fp32 and int8
    python -m bench --only scratch --data DIR [DIR ...]        # the scratch CNN's recipe: each set and all merged
    python -m bench --only crosssource --data KNOWN --other DIR --lookalike DIR --nolandmark DIR [--notphoto DIR]
                                      # the known set's landmarks from other sources, look-alikes, no landmark,
                                      # images that are no photograph (drawings, documents, posters, screenshots)
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

from landmark_core.core.allocator import keep_freed_memory

from . import suites
from .common import demo_dataset, machine

NAMES = ["input", "frozen", "throughput", "inference", "tta", "real", "fewshot", "openset", "tagging", "distributed",
         "review", "serve", "backends", "scratch", "crosssource"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run only these benchmarks")
    parser.add_argument("--out", default=None, help="markdown file to write (default: BENCHMARKS.md; none with --smoke)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--data", nargs="+", default=[], metavar="DIR",
                        help="real-photo datasets for the 'real' benchmark (default with --smoke: a tiny generated set)")
    for flag, what in (("--other", "the known set's classes photographed elsewhere (class folders)"),
                       ("--lookalike", "photos of other landmarks, look-alikes of the known ones"),
                       ("--nolandmark", "photos of no landmark at all"),
                       ("--notphoto", "images that are no photograph of a place (kind folders: drawings, documents, "
                                      "posters, screenshots, portraits)")):
        parser.add_argument(flag, default=None, metavar="DIR", help=f"crosssource: {what}")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every training process does (landmark_core.pipeline.train)
    scale = suites.SMOKE if args.smoke else suites.FULL
    out = Path(args.out) if args.out else (None if args.smoke else Path("BENCHMARKS.md"))
    chosen = args.only or [name for name in NAMES if (name not in ("real", "fewshot", "openset", "review", "backends", "scratch") or args.data or args.smoke)
                           and (name != "crosssource" or args.other or args.smoke)
                           # two training processes need two cores; tests/test_distributed.py covers the mechanism
                           and not (name == "distributed" and args.smoke)]
    with tempfile.TemporaryDirectory(prefix="landmark-bench-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        demo = demo_dataset(work / "demo", scale.demo_per_class, scale.demo_test_per_class, scale.demo_classes)
        if {"inference", "input", "tagging", "serve"} & set(chosen):
            from .common import photo_dataset
            photo_dataset(work / "photos", scale.photos)

        def photos_for_smoke() -> Path:
            return photo_dataset_for_smoke("real-smoke")

        def photo_dataset_for_smoke(name: str, first_class: int = 0) -> Path:
            from .common import photo_dataset
            return photo_dataset(work / name, max(scale.photos, 12), classes=3, first_class=first_class)
        runners = {
            "input": lambda: suites.input_pipeline(scale, demo, work),
            "frozen": lambda: suites.frozen_backbone(scale, demo, work),
            "throughput": lambda: suites.train_throughput(scale),
            "inference": lambda: suites.inference(scale, demo, work),
            "tta": lambda: suites.time_to_accuracy(scale, demo, work),
            "real": lambda: suites.real_photos(scale, [Path(d).resolve() for d in args.data] or [photos_for_smoke()], work),
            "fewshot": lambda: suites.few_shot(scale, [Path(d).resolve() for d in args.data] or [photos_for_smoke()], work),
            "scratch": lambda: suites.scratch_recipe(scale, [Path(d).resolve() for d in args.data] or [
                photos_for_smoke(), photo_dataset_for_smoke("scratch-smoke-b", first_class=3)], work),
            "tagging": lambda: suites.tagging(scale, work),
            "distributed": lambda: suites.distributed_training(scale, demo, work),
            "serve": lambda: suites.serving(scale, work),
            "backends": lambda: suites.inference_backends(scale, [Path(d).resolve() for d in args.data] or [photos_for_smoke()], work),
            "review": lambda: suites.review_loop(scale, [Path(d).resolve() for d in args.data] or [
                photos_for_smoke(), photo_dataset_for_smoke("review-smoke-b", first_class=3)], work),
            "openset": lambda: suites.open_set(scale, [Path(d).resolve() for d in args.data] or [
                photos_for_smoke(), photo_dataset_for_smoke("openset-smoke-b", first_class=3)], work),
        }
        if "crosssource" in chosen and args.smoke and not args.other:  # generated stand-ins, so the suite keeps working
            from .common import photo_dataset
            runners["crosssource"] = lambda: suites.cross_source(
                scale, photos_for_smoke(), photo_dataset(work / "cross-other", 6, classes=3, seed=1) / "train",
                photo_dataset_for_smoke("cross-lookalike", first_class=3), demo / "test", work, not_photo=demo / "test")
        elif "crosssource" in chosen:
            if not (args.data and args.other and args.lookalike and args.nolandmark):
                parser.error("crosssource needs --data KNOWN --other DIR --lookalike DIR --nolandmark DIR")
            runners["crosssource"] = lambda: suites.cross_source(
                scale, *(Path(d).resolve() for d in (args.data[0], args.other, args.lookalike, args.nolandmark)), work,
                not_photo=Path(args.notphoto).resolve() if args.notphoto else None)
        command = ("python -m bench" + (" --smoke" if args.smoke else "") + (f" --only {' '.join(args.only)}" if args.only else "")
                   + (f" --data {' '.join(args.data)}" if args.data else "")
                   + "".join(f" --{flag} {value}" for flag, value in (("other", args.other), ("lookalike", args.lookalike),
                                                                     ("nolandmark", args.nolandmark),
                                                                     ("notphoto", args.notphoto)) if value))
        stamp = f"_Measured by `{command}` on {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}._\n\n"
        sections = {}
        for name in chosen:
            text = runners[name]().markdown()
            print(text, flush=True)
            title, _, body = text.partition("\n")
            sections[title] = f"{title}\n\n{stamp}{body.lstrip()}"
    if out:
        header = (f"# Benchmarks\n\nRegenerate with `python -m bench` (or `make bench`); the real-photo table needs "
                  f"`--data DIR ...` (see the README).\n\n"
                  f"Machine: {machine()}.\n"
                  "Every figure is compared with a baseline measured in the same run. Like every training process, "
                  "this one keeps freed memory for reuse (glibc malloc thresholds raised, landmark_core.core.allocator); "
                  "baselines run under the same setting unless a row says otherwise.\n\n")
        kept = _sections(out.read_text()) if out.exists() else {}
        kept.update(sections)  # tables of this run replace their earlier versions; the others stay
        out.write_text(header + "\n".join(kept[title] for title in sorted(kept, key=_table_number)))
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _sections(markdown: str) -> dict[str, str]:
    """The "### N. title" sections of a benchmarks file, keyed by their title line."""
    parts = markdown.split("\n### ")
    return {f"### {part.partition(chr(10))[0]}": f"### {part}".rstrip("\n") + "\n" for part in parts[1:]}


def _table_number(title: str) -> int:
    number = title.removeprefix("### ").split(".", 1)[0]
    return int(number) if number.isdigit() else 99


if __name__ == "__main__":
    sys.exit(main())
