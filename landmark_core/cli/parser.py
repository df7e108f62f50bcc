"""The ``landmark`` argument parser; the training flags are generated from ``TrainConfig``."""
from __future__ import annotations

import argparse

from .common import bounded_number, config_flags
from .data_commands import cmd_data_demo, cmd_data_download, cmd_data_import, cmd_data_stats
from .train_commands import cmd_evaluate, cmd_export, cmd_lr_find, cmd_models, cmd_runs, cmd_train
from .use_commands import cmd_explain, cmd_places, cmd_predict, cmd_review, cmd_serve, cmd_tag

#: Flags that existed before the flags were generated from TrainConfig, kept working.
_FLAG_ALIASES = {"weights_path": ["--weights"], "early_stopping_patience": ["--early-stopping"]}
_NEGATIVE_ALIASES = {"cache_features": "--no-feature-cache", "calibrate": "--no-calibration"}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: type and choices from the field, help from its ``setting``."""
    from ..runs.config import CHOICES, TrainConfig
    defaults = TrainConfig()
    for f in config_flags():
        flags = ["--" + f.name.replace("_", "-"), *_FLAG_ALIASES.get(f.name, [])]
        default = getattr(defaults, f.name)
        shown = f" (default: {default})" if default not in (None, "") else ""
        kind = str(f.type).split(" | ")[0]
        if kind == "bool":
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f.metadata["help"] + shown)
            if f.name in _NEGATIVE_ALIASES:
                parser.add_argument(_NEGATIVE_ALIASES[f.name], dest=f.name, action="store_false", help=argparse.SUPPRESS)
        else:
            parser.add_argument(*flags, dest=f.name, type={"int": int, "float": float}.get(kind, str), default=None,
                                choices=CHOICES.get(f.name), help=f.metadata["help"] + shown,
                                metavar=None if f.name in CHOICES else f.name.split("_")[-1].upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="landmark", description="Landmark photo classification and tagging.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create, download or inspect datasets").add_subparsers(dest="data_command", required=True)
    demo = data.add_parser("demo", help="generate the built-in demo dataset")
    demo.add_argument("--out", help="folder (default: artifacts/data/demo)")
    demo.add_argument("--seed", type=bounded_number(int, 0, 2**32 - 1), default=0)
    demo.add_argument("--train-per-class", type=bounded_number(int, 1, 100_000), default=100)
    demo.add_argument("--test-per-class", type=bounded_number(int, 1, 100_000), default=25)
    demo.add_argument("--if-missing", action="store_true", help="do nothing when the folder already holds a complete demo set")
    demo.set_defaults(func=cmd_data_demo)
    download = data.add_parser("download", help="download the real 50-class landmark_images set (resumable)")
    download.add_argument("--out", help="folder to put landmark_images/ in (default: artifacts/data)")
    download.add_argument("--url", help="download from this URL instead")
    download.set_defaults(func=cmd_data_download)
    imported = data.add_parser("import", help="unpack a zip of photos (train/ and test/ or class folders) safely")
    imported.add_argument("zip")
    imported.add_argument("--name", help="folder name under artifacts/data (default: the zip's name)")
    imported.set_defaults(func=cmd_data_import)
    stats = data.add_parser("stats", help="counts per class and split, unreadable files and duplicates")
    stats.add_argument("data", help="dataset folder, or 'demo'")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_data_stats)

    train = sub.add_parser("train", help="train a model; prints the run folder",
                           description="Every training setting (TrainConfig); unset ones take the model's defaults.")
    _add_config_flags(train)
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted or cancelled run")
    train.add_argument("--run-dir", help=argparse.SUPPRESS)
    train.add_argument("--background", action="store_true", help="train in a detached process")
    train.add_argument("--estimate", action="store_true", help="say how long this run would take on this machine "
                       "(a few training steps timed) and train nothing")
    train.add_argument("--json", action="store_true", help="with --estimate: the estimate's parts as one line of JSON")
    train.add_argument("--nproc-per-node", type=bounded_number(int, 1, 1024), metavar="N",
                       help="data-parallel training with N processes on this machine through torchrun (one per GPU, "
                            "or CPU processes); --batch-size stays the global batch. Resuming uses the run's own N "
                            "unless given")
    train.set_defaults(func=cmd_train)

    lr_find = sub.add_parser("lr-find", help="suggest a learning rate: a short sweep with growing rates (fastai's "
                             "lr_find); prints the rate", description="Takes the training settings of landmark train; "
                             "nothing is written to any run.")
    _add_config_flags(lr_find)
    lr_find.add_argument("--steps", type=bounded_number(int, 10, 1000), default=80, help="batches in the sweep (default 80)")
    lr_find.add_argument("--json", action="store_true", help="the rates and smoothed losses too")
    lr_find.add_argument("--into", metavar="DIR", help="keep progress and result in DIR (status.json, result.json): how "
                         "the app runs a sweep in the background")
    lr_find.set_defaults(func=cmd_lr_find)

    evaluate = sub.add_parser("evaluate", help="evaluate a run on its test split")
    evaluate.add_argument("run")
    evaluate.add_argument("--checkpoint", default="best", choices=("best", "last"))
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", help="export a run (TorchScript or ONNX) with its preprocessing inside")
    export.add_argument("run")
    export.add_argument("--checkpoint", default="best", choices=("best", "last"))
    export.add_argument("--format", default="torchscript", choices=("torchscript", "onnx", "onnx-int8", "fastest"),
                        help="torchscript (default; what training exports), onnx (ONNX Runtime and other "
                             "runtimes) or onnx-int8 (quantised on the run's training photos, accepted only if it "
                             "keeps top-1 within 0.5 points and the tag decision on 99%% of the test photos), or "
                             "fastest: each of them timed on this machine, the fastest that passes its check kept; "
                             "the app, `landmark tag`, `landmark serve` and `landmark predict` load whichever was "
                             "exported last")
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser("predict", help="top-k landmarks for images")
    predict.add_argument("run")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=bounded_number(int, 1, 1000), default=5)
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=cmd_predict)

    runs = sub.add_parser("runs", help="list training runs")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    places = sub.add_parser("places", help="list the known places, or look one up: landmark places \"Taj Mahal\"")
    places.add_argument("name", nargs="?", help="a class or landmark name (all places when left out)")
    places.add_argument("--data", help="also the places.csv of this dataset folder (or 'demo')")
    places.add_argument("--json", action="store_true")
    places.add_argument("--towns", metavar="NAME", help="search GeoNames' towns (offline) instead: London, Agra, Cusco")
    places.add_argument("--near", metavar="LAT,LON", help="the towns nearest to a position")
    places.add_argument("--set", metavar="CLASS", help="give CLASS a place in --data's places.csv: at --at, its region "
                        "and country from the nearest town")
    places.add_argument("--at", metavar="LAT,LON", help="with --set: the landmark's position")
    places.add_argument("--display-name", help="with --set: the landmark's display name (default: from the class name)")
    places.set_defaults(func=cmd_places)

    review = sub.add_parser("review", help="review a tag report: confirm or correct tags, retrain on the verdicts",
                            description="Without options: the report's photos the model decided, by outcome, the "
                                        "least certain first. Each verdict copies the photo into the run's dataset "
                                        "(train/CLASS/ or unknown/), logged beside the report and undoable.")
    review.add_argument("report", help="a tag report (tag-report.csv) written by landmark tag")
    review.add_argument("--accept", nargs="+", default=[], metavar="FILE", help="these photos' tags are right")
    review.add_argument("--correct", nargs="+", default=[], metavar="FILE=CLASS",
                        help="these photos show CLASS, a class of the dataset")
    review.add_argument("--new-class", nargs="+", default=[], metavar="FILE=CLASS",
                        help="these photos show CLASS, a landmark the dataset has no class for yet (one is made)")
    review.add_argument("--not-landmark", nargs="+", default=[], metavar="FILE",
                        help="these photos show no landmark the model should know")
    review.add_argument("--undo", nargs="?", const="last", metavar="FILE",
                        help="take back the verdict on FILE (the latest verdict without FILE)")
    review.add_argument("--retrain", action="store_true", help="train a new run with the same settings on the "
                        "dataset with the verdicts, then re-tag the photos the model decided")
    review.add_argument("--json", action="store_true")
    review.set_defaults(func=cmd_review)

    served = sub.add_parser("serve", help="an HTTP API for photo platforms: POST /v1/predict and /v1/tag",
                            description="Answers on 127.0.0.1 unless --host says otherwise (then --api-key is needed). "
                                        "OpenAPI description at /docs and /openapi.json.")
    served.add_argument("run", help="a finished, exported run")
    served.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    served.add_argument("--port", type=bounded_number(int, 0, 65535), default=8000)
    served.add_argument("--workers", type=bounded_number(int, 1, 64), default=1, help="processes, each with its own model")
    served.add_argument("--api-key", help="required from clients (header X-API-Key), also from $LANDMARK_API_KEY")
    served.add_argument("--max-batch", type=bounded_number(int, 1, 256), default=8, help="photos classified in one pass")
    served.add_argument("--batch-wait-ms", type=bounded_number(float, 0, 1000), default=5.0,
                        help="how long a photo waits for others to share its pass (default: 5 ms)")
    served.add_argument("--queue", type=bounded_number(int, 1, 100_000), default=64,
                        help="photos that may wait; beyond it clients get 503 and Retry-After")
    served.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    served.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="list registered models")
    models.set_defaults(func=cmd_models)

    explain = sub.add_parser("explain", help="Grad-CAM heatmap of where the model looked, over the photo")
    explain.add_argument("run")
    explain.add_argument("photo")
    explain.add_argument("--out", default="heatmap.png", help="image to write (default: heatmap.png)")
    explain.add_argument("--target", help="explain this class (name) instead of the top prediction")
    explain.add_argument("--checkpoint", default="best", choices=("best", "last"))
    explain.set_defaults(func=cmd_explain)

    tag = sub.add_parser("tag", help="tag photos with the predicted landmark and its GPS position")
    tag.add_argument("run", help="a finished run")
    tag.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders")
    tag.add_argument("--min-confidence", type=bounded_number(float, 0, 1), help="abstain below this probability "
                     "(default: the threshold chosen on the run's validation split)")
    tag.add_argument("--tag-unfamiliar", action="store_true",
                     help="also tag photos that look like no landmark the model learned (not recommended)")
    tag.add_argument("--out", help="folder for tagged copies (default: ./tagged)")
    tag.add_argument("--overwrite", action="store_true", help="write the tags into the original files")
    tag.add_argument("--sidecars", action="store_true", help="write the tags into XMP sidecars beside the photos, "
                     "never touching them (an existing sidecar is merged into)")
    tag.add_argument("--sidecar-name", choices=("ext", "stem"), default="ext",
                     help="ext: photo.jpg.xmp (digiKam, darktable, Immich; default), stem: photo.xmp (Lightroom, "
                          "Capture One)")
    tag.add_argument("--sidecar-dir", metavar="DIR", help="with --sidecars: put them under DIR in a mirror of the "
                     "library's tree instead (for read-only libraries)")
    tag.add_argument("--overwrite-gps", action="store_true", help="also tag photos that already have GPS")
    tag.add_argument("--report", help="CSV report path (default: OUT/tag-report.csv, or OUT/tag-report-shard-K-of-N.csv)")
    tag.add_argument("--workers", type=bounded_number(int, 1, 256), help="threads decoding photos (default: one per two cores on a CPU, "
                     "one per core with a GPU; at most 8)")
    tag.add_argument("--batch-size", type=bounded_number(int, 1, 4096), help="photos per forward pass (default: 8 on a CPU, 64 on a GPU)")
    tag.add_argument("--shard", metavar="K/N", help="tag only this process's share of the files (1/4 ... 4/4): run N "
                     "processes, or one per GPU, on the same library; no file is tagged twice")
    tag.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    tag.set_defaults(func=cmd_tag)
    return parser
