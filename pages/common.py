"""What every page shares: the dataset chooser, cached loaders and error display.

Kept free of ML logic: it only calls landmark_core and caches the results.
"""
from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from landmark_core.core.demo import generate_demo_dataset, is_complete_demo
from landmark_core.data.download import DATASET_NAME, download_dataset, find_dataset_root
from landmark_core.core.errors import LandmarkError
from landmark_core.core.locations import artifacts_dir, data_dir, demo_dir
from landmark_core.geo.places import world_land
from landmark_core.runs.progress import format_seconds  # noqa: F401 (pages format times through common)
from landmark_core.runs import Run, RunState
from landmark_core.runs.run import list_runs

DEMO, REAL, FOLDER, ZIP = "Built-in demo", "landmark_images (50 classes)", "A folder on this machine", "Import a zip of photos"
#: What the browser may upload as a dataset zip; the archive is still checked entry by entry (landmark_core.data.download).
MAX_DATASET_ZIP_MB = 4096


def demo_path() -> Path:
    return demo_dir()


def real_path() -> Path | None:
    folder = data_dir() / DATASET_NAME
    try:
        return find_dataset_root(folder) if folder.is_dir() else None
    except LandmarkError:
        return None


def current_dataset() -> Path | None:
    """The dataset chosen in the sidebar, or the demo set when it exists and nothing was chosen."""
    chosen = st.session_state.get("dataset_path")
    if chosen:
        return Path(chosen)
    if st.session_state.get("dataset_choice", DEMO) != DEMO:
        return None  # the real set (not downloaded yet) or a folder was chosen: never fall back to the demo silently
    return demo_path() if is_complete_demo(demo_path()) else None


def create_demo_data() -> None:
    bar = st.progress(0.0, text="Drawing demo photos…")
    generate_demo_dataset(demo_path(), progress=lambda done, total: bar.progress(done / total, text=f"Drawing demo photos… {done}/{total} classes"))
    bar.empty()


def download_real_data() -> None:
    st.button("Cancel download", key="cancel_download", help="The part already downloaded is kept; downloading again resumes it.")
    bar = st.progress(0.0, text="Downloading landmark_images.zip…")

    def report(done: int, total: int | None) -> None:
        if total:
            bar.progress(min(1.0, done / total), text=f"Downloading… {done / 2**20:,.0f} / {total / 2**20:,.0f} MiB")

    try:
        root = download_dataset(data_dir(), progress=report)
    except LandmarkError as error:
        st.error(f"Download failed: {error}")
        st.stop()
    st.session_state["dataset_path"] = str(root)


def _offer(root: Path | None, caption: str, missing: str, button: str, create) -> None:
    """Use ``root`` when it exists; otherwise explain and offer the button that creates it."""
    if root:
        st.session_state["dataset_path"] = str(root)
        st.caption(caption)
        return
    st.session_state["dataset_path"] = None
    st.info(missing)
    if st.button(button, type="primary", key=f"make-{button}"):
        create()
        st.rerun()


def dataset_sidebar() -> None:
    with st.sidebar:
        st.subheader("Dataset")
        choice = st.radio("Photos to work with", [DEMO, REAL, FOLDER, ZIP], key="dataset_choice", label_visibility="collapsed")
        if choice == DEMO:
            _offer(demo_path() if is_complete_demo(demo_path()) else None,
                   f"12 landmark classes, drawn procedurally · `{demo_path()}`",
                   "The demo photos are not created yet.", "Create demo data", create_demo_data)
        elif choice == REAL:
            root = real_path()
            _offer(root, f"`{root}`", "Not downloaded yet (about 4996 train and 1250 test photos).", "Download",
                   download_real_data)
        elif choice == ZIP:
            import_zip_from_browser()
        else:
            folder = st.text_input("Folder with train/ and test/ (or class folders)", key="dataset_folder")
            if folder:
                path = Path(folder).expanduser()
                if path.is_dir():
                    st.session_state["dataset_path"] = str(path)
                else:
                    st.session_state["dataset_path"] = None
                    st.error("That folder does not exist.")
        st.caption(f"Artifacts: `{artifacts_dir()}`")


def import_zip_from_browser() -> None:
    """The same safe import as ``landmark data import``: class folders (or train/ and test/) in a zip, checked for
    path escapes, links and bombs before anything is written, unpacked into artifacts/data/<zip name>."""
    upload = st.file_uploader("Zip of class folders (or train/ and test/)", type=["zip"], key="dataset_zip",
                              max_upload_size=MAX_DATASET_ZIP_MB)
    if upload is None:
        st.session_state["dataset_path"] = st.session_state.get("imported_dataset")
        return
    marker = (upload.name, upload.size)
    if st.session_state.get("imported_zip") != marker:
        import tempfile
        from landmark_core.data.download import import_dataset
        with tempfile.TemporaryDirectory() as scratch:
            archive = Path(scratch) / Path(upload.name).name
            with open(archive, "wb") as handle:
                for chunk in iter(lambda: upload.read(1 << 20), b""):
                    handle.write(chunk)
            try:
                with st.spinner("Checking and unpacking…"):
                    root, dataset = import_dataset(archive, data_dir())
            except LandmarkError as error:
                st.session_state.update(imported_zip=None, imported_dataset=None, dataset_path=None)
                show_error(error)
                return
        st.session_state.update(imported_zip=marker, imported_dataset=str(root),
                                imported_summary=f"{dataset.num_classes} class{'es' if dataset.num_classes != 1 else ''}, "
                                                 f"{len(dataset.train)} train / "
                                                 f"{len(dataset.test)} test photos")
    st.session_state["dataset_path"] = st.session_state["imported_dataset"]
    st.success(f"Imported `{Path(st.session_state['imported_dataset']).name}`: {st.session_state['imported_summary']}")


@st.cache_data(ttl=60, show_spinner=False)
def dataset_classes(root: Path) -> list[str]:
    """The class names of a dataset folder ([] when its layout is wrong: the page that needs more says why)."""
    from landmark_core.data import scan_dataset
    try:
        return list(scan_dataset(root).classes)
    except (LandmarkError, OSError):
        return []


@st.cache_data(max_entries=32, show_spinner=False)
def model_summary(model: str, image_size: int, num_classes: int) -> dict:
    """A model's measured size (it builds the model and counts its FLOPs: once per model, size and class count)."""
    from landmark_core.models.registry import model_info
    return model_info(model, image_size, num_classes=num_classes)


@st.cache_data(ttl=60, show_spinner=False)
def dataset_training_photos(root: Path) -> int | None:
    """Photos in a dataset's training folder (what sets a scratch run's epochs), None when it cannot be read."""
    from landmark_core.data import scan_dataset
    try:
        return len(scan_dataset(root).train)
    except (LandmarkError, OSError):
        return None


@st.cache_data(ttl=600, max_entries=32, show_spinner="Timing a few training steps on this machine…")
def run_estimate(root: Path, model: str) -> tuple[object | None, str | None]:
    """(how long a run of ``model`` with its defaults takes on ``root`` here, None) from a few steps timed, or
    (None, why not)."""
    from landmark_core.training.estimate import estimate_in_a_training_process
    try:
        return estimate_in_a_training_process(str(root), model), None
    except Exception as error:  # an estimate is advice: a failure (out of memory, a bad file) says so, no more
        return None, f"{type(error).__name__}: {error}" if not isinstance(error, LandmarkError) else str(error)


def require_dataset() -> Path:
    """The current dataset, or stop the page with a hint."""
    dataset = current_dataset()
    if dataset is None:
        st.info("Choose or create a dataset in the sidebar first (one click creates the demo data).")
        st.stop()
    return dataset


def show_error(error: Exception) -> None:
    st.error(str(error) if isinstance(error, LandmarkError) else f"Something went wrong: {type(error).__name__}: {error}")


@st.cache_resource(max_entries=8, show_spinner="Loading model…")
def load_predictor(run_dir: str, export_mtime: float):
    """One Predictor per exported run (re-exporting rewrites export.json: a new mtime, so a new cache key)."""
    from landmark_core.tagging.predict import Predictor
    return Predictor(run_dir)


def predictor_for(run_dir: Path):
    return load_predictor(str(run_dir), Run(run_dir).export_stamp)


@st.cache_data(max_entries=512, show_spinner=False)
def _assessment(run_dir: str, export_mtime: float, photo: bytes):
    return load_predictor(run_dir, export_mtime).assess(photo, top_k=5)


def assessment_for(run_dir: Path, photo: bytes):
    """A model's top-5 and familiarity for a photo, computed once per model and photo: moving a slider or
    adding a model does not classify the other photos again."""
    return _assessment(str(run_dir), Run(run_dir).export_stamp, photo)


def finished_runs() -> list:
    return [r for r in list_runs() if r.state == RunState.FINISHED and r.run.evaluation is not None]


def trained_on(summary, dataset: Path | None) -> bool:
    """Whether a run was trained on this dataset folder (the same folder, however its path was written)."""
    if dataset is None or not isinstance(summary.data, str) or not summary.data:
        return False  # no dataset, or a damaged config.json's
    try:
        return Path(summary.data).expanduser().resolve() == Path(dataset).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def current_dataset_runs(runs: list, key: str) -> list:
    """The runs trained on the sidebar's dataset, which every page follows; a toggle shows the others too, so a
    model trained elsewhere is one click away, never mixed in unasked."""
    dataset = current_dataset()
    if dataset is None:
        return runs
    here = [r for r in runs if trained_on(r, dataset)]
    others = len(runs) - len(here)
    if others and st.toggle(f"Also runs trained on other datasets ({others})", key=f"{key}-other-datasets",
                            help=f"Off: only runs trained on `{dataset.name}`, the dataset chosen in the sidebar."):
        return runs
    if not here and others:
        st.caption(f"No run here was trained on `{dataset.name}` (the sidebar's dataset) yet.")
    return here


@st.cache_data(ttl=60, show_spinner=False)
def dataset_test_photos(root: Path, count: int = 6) -> list[str]:
    """A few test photos of a dataset, spread over its classes (for "try these")."""
    from landmark_core.data import scan_dataset
    try:
        test = [str(item.path) for item in scan_dataset(root).test]
    except (LandmarkError, OSError):
        return []
    return test[:: max(1, len(test) // count)][:count]


def run_label(summary) -> str:
    acc = f" · test {summary.test_acc:.1%}" if summary.test_acc is not None else ""
    return f"{summary.run_id} ({summary.model}{acc})"


def format_percent(share: float | None, digits: int = 1) -> str:
    """A share as every page writes it (94.2%); a missing one as a dash, never "None"."""
    return "–" if share is None or share != share else f"{share:.{digits}%}"


@st.cache_resource(max_entries=4, show_spinner="Preparing Grad-CAM…")
def _explainer(run_dir: str, checkpoint_mtime: float):
    from landmark_core.evaluation.explain import Explainer
    return Explainer(run_dir)


@st.cache_data(max_entries=256, show_spinner=False)
def _explanation(run_dir: str, checkpoint_mtime: float, photo: bytes | str):
    explanation = _explainer(run_dir, checkpoint_mtime).explain(photo)
    return explanation.overlay(), explanation.class_name, explanation.probability


def explanation_for(run_dir: Path, photo: bytes | str):
    """(Grad-CAM overlay, explained class, its probability) of a run's top prediction for a photo (bytes or path)."""
    return _explanation(str(run_dir), Run(run_dir).checkpoint("best").stat().st_mtime, photo)


@st.cache_data(max_entries=4, show_spinner=False)
def _model_bundle(run_dir: str, export_mtime: float) -> bytes:
    from landmark_core.export.bundle import export_bundle
    return export_bundle(Path(run_dir))


def model_bundle_for(run_dir: Path) -> bytes:
    """The zip Evaluate offers, built once per export (not on every rerun of the page)."""
    return _model_bundle(str(run_dir), Run(run_dir).export_stamp)


def world_map(points: pd.DataFrame, *, height: int = 220, color: alt.Color | None = None,
              tooltip: list | None = None) -> alt.LayerChart:
    """Points (``latitude``, ``longitude``) over the world's land outline shipped with the package: no tiles, no
    request leaves the machine."""
    land = alt.Chart(alt.InlineData(values=world_land(), format=alt.DataFormat(type="topojson", feature="land"))
                     ).mark_geoshape(fill="#e6e6e6", stroke="#b5b5b5", strokeWidth=0.5)
    dots = alt.Chart(points).mark_circle(size=90, opacity=0.9, stroke="white", strokeWidth=0.8).encode(
        longitude="longitude:Q", latitude="latitude:Q", color=color if color is not None else alt.value("crimson"),
        tooltip=tooltip or [c for c in points.columns])
    return (land + dots).project("equalEarth").properties(height=height)


@st.cache_data(show_spinner="Loading the world's towns…")
def _town_points() -> pd.DataFrame:
    from landmark_core.geo.towns import map_points
    return pd.DataFrame(map_points())


def town_picker_map(height: int = 360) -> alt.LayerChart:
    """The offline world map with a faint dot per town (one per 2° square): a click selects the nearest one
    (the selection named ``clicked``)."""
    clicked = alt.selection_point(name="clicked", on="click", nearest=True, fields=["latitude", "longitude"])
    land = alt.Chart(alt.InlineData(values=world_land(), format=alt.DataFormat(type="topojson", feature="land"))
                     ).mark_geoshape(fill="#e6e6e6", stroke="#b5b5b5", strokeWidth=0.5)
    towns = alt.Chart(_town_points()).mark_circle(size=12).encode(
        longitude="longitude:Q", latitude="latitude:Q",
        color=alt.condition(clicked, alt.value("crimson"), alt.value("#9aa8b8")),
        opacity=alt.condition(clicked, alt.value(1.0), alt.value(0.35)),
        tooltip=["town", "region", "country"]).add_params(clicked)
    return (land + towns).project("equalEarth").properties(height=height)


def town_zoom_map(points: pd.DataFrame, height: int = 360) -> alt.Chart:
    """The towns around a first click, drawn by longitude and latitude: a second click picks one precisely (the
    selection named ``clicked``)."""
    clicked = alt.selection_point(name="clicked", on="click", nearest=True, fields=["latitude", "longitude"])
    return alt.Chart(points).mark_circle(size=30).encode(
        x=alt.X("longitude:Q", scale=alt.Scale(zero=False), title="longitude"),
        y=alt.Y("latitude:Q", scale=alt.Scale(zero=False), title="latitude"),
        color=alt.condition(clicked, alt.value("crimson"), alt.value("#5b7083")),
        tooltip=["town", "region", "country"]).add_params(clicked).properties(height=height)
