"""``landmark data``: the demo set, the real dataset's download, imports and statistics."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..core.locations import data_dir, demo_dir
from .common import ProgressBar, resolve_data


def cmd_data_demo(args) -> int:
    from ..core.demo import generate_demo_dataset, is_complete_demo
    out = Path(args.out or demo_dir())
    if args.if_missing and is_complete_demo(out):
        print(out)
        return 0
    generate_demo_dataset(out, seed=args.seed, train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                          progress=ProgressBar("demo classes"))
    print(out)
    return 0


def cmd_data_download(args) -> int:
    from ..data.download import DATASET_URL, download_dataset
    root = download_dataset(Path(args.out or data_dir()), url=args.url or DATASET_URL,
                            progress=ProgressBar("downloading", 1 / 2**20, " MiB"))
    print(root)
    return 0


def cmd_data_import(args) -> int:
    from ..data.download import import_dataset
    root, dataset = import_dataset(args.zip, data_dir(), args.name)
    print(root)
    print(f"{dataset.num_classes} classes, {len(dataset.train)} train / {len(dataset.test)} test files", file=sys.stderr)
    return 0


def cmd_data_stats(args) -> int:
    from ..data import dataset_report, scan_dataset
    dataset = scan_dataset(resolve_data(args.data))
    report = dataset_report(dataset, progress=ProgressBar("checking images"))
    counts: dict[str, dict[str, int]] = {}
    for row in report["images"]:
        counts.setdefault(row["class"], {"train": 0, "test": 0})[row["split"]] += 1
    if args.json:
        print(json.dumps({"root": report["root"], "classes": len(report["classes"]), "counts": counts,
                          "unreadable": report["unreadable"], "duplicates": report["duplicates"],
                          "leaks": report["leaks"]}, indent=2))
        return 0
    print(f"{report['root']}: {len(report['classes'])} classes, "
          f"{sum(c['train'] for c in counts.values())} train / {sum(c['test'] for c in counts.values())} test images"
          + (" (test split taken from train)" if report["test_taken_from_train"] else ""))
    width = max(len(name) for name in counts)
    for name, c in counts.items():
        print(f"  {name:<{width}}  train {c['train']:5d}  test {c['test']:5d}")
    for path, reason in report["unreadable"].items():
        print(f"unreadable: {reason}")
    for group in report["duplicates"]:
        print(f"duplicates: {', '.join(group)}")
    if report["leaks"]:
        print(f"warning: {len(report['leaks'])} test photos are also in train/ (test accuracy would count them as "
              "recognised); remove them from one of the splits:", file=sys.stderr)
        for leak in report["leaks"]:
            how = "identical file" if leak["kind"] == "identical" else f"near-duplicate, {leak['distance']} bits apart"
            print(f"leak: {leak['test']} = {leak['train']} ({how})")
    return 0
