from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from landmark_core.curation.cleaning import move_photo, moves, suspect_photos, undo_last_move
from landmark_core.data import AUGMENTATIONS, dataset_report, scan_dataset
from landmark_core.core.errors import LandmarkError
from landmark_core.reports.explore import augmentation_preview, image_table, training_stats
from landmark_core.reports.insights import short_label
from landmark_core.geo.places import PLACES_FILE, Place, places_from_table, places_matching, places_table, save_places
from landmark_core.geo.towns import nearest_towns, place_at, search_towns, set_place, towns_around
from pages.common import finished_runs, require_dataset, run_label, show_error, town_picker_map, town_zoom_map

OUT_OF_DATASET = "out of the dataset (_excluded/)"

st.title("🔎 Explore the dataset")
dataset_path = require_dataset()


@st.cache_data(show_spinner="Reading the dataset…", max_entries=4, ttl=30)
def report_for(path: str):
    """The report itself is cached on disk by content; this only spares rescans between reruns."""
    dataset = scan_dataset(path)
    return dataset, dataset_report(dataset)


try:
    dataset, report = report_for(str(dataset_path))
except LandmarkError as error:
    show_error(error)
    st.stop()

images = image_table(report)
st.caption(f"`{dataset.root}` · {len(dataset.classes)} classes · {len(dataset.train)} train / {len(dataset.test)} test files"
           + (" · test split taken from train" if dataset.test_taken_from_train else "")
           + (f" · {len(dataset.unknown_calibration) + len(dataset.unknown_evaluation)} photos of other places in "
              "unknown/ (they calibrate and test the open-set decision, never a class)"
              if dataset.unknown_calibration or dataset.unknown_evaluation else ""))

def in_dataset(path: str) -> str:
    """A file's path inside the dataset folder (the caption above names the folder once)."""
    try:
        return Path(path).relative_to(dataset.root).as_posix()
    except ValueError:
        return path


counts = images.groupby(["class", "split"]).size().reset_index(name="images")
counts["label"] = counts["class"].map(short_label)
st.subheader("Images per class")
st.altair_chart(alt.Chart(counts).mark_bar().encode(
    x=alt.X("label:N", sort=None, title=None, axis=alt.Axis(labelAngle=-60, labelLimit=260, labelOverlap=False)),
    y=alt.Y("images:Q", title="photos"), color=alt.Color("split:N"), xOffset="split:N",
    tooltip=["class", "split", "images"]), width="stretch")

left, right = st.columns(2)
with left:
    st.subheader("Image sizes")
    sized = images.dropna(subset=["width"])
    st.altair_chart(alt.Chart(sized).mark_circle(opacity=0.4).encode(
        x=alt.X("width:Q"), y=alt.Y("height:Q"), color="split:N", tooltip=["path", "width", "height"]), width="stretch")
with right:
    st.subheader("Aspect ratio")
    st.altair_chart(alt.Chart(sized).mark_bar().encode(
        x=alt.X("aspect:Q", bin=alt.Bin(maxbins=30), title="width / height"), y=alt.Y("count():Q", title="photos"),
        color="split:N"), width="stretch")

st.subheader("Samples")
chosen = st.selectbox("Class", dataset.classes, format_func=short_label)
sample = images[(images["class"] == chosen) & images["readable"]].head(12)
columns = st.columns(6)
for i, row in enumerate(sample.itertuples()):
    columns[i % 6].image(row.path, caption=f"{row.split} · {row.width}×{row.height}", width="stretch")

st.subheader("Augmentation preview")
st.caption("One training photo through the training augmentation several times: full = random resized crop, flip "
           "and colour jitter scaled by the strength; crop_flip = random crop and flip; trivial = full, then one "
           "random operation per photo (rotation, shear, posterize, solarize, …: TrivialAugment).")
recipe, slider = st.columns([1, 2])
augmentation = recipe.radio("Augmentation recipe", AUGMENTATIONS, horizontal=True)
strength = slider.slider("Augmentation strength", 0.0, 1.0, 0.8, 0.1, disabled=augmentation == "crop_flip")
if not sample.empty:
    views = augmentation_preview(sample.iloc[0]["path"], strength=strength, count=6, image_size=160,
                                 augmentation=augmentation)
    for column, view in zip(st.columns(6), views):
        column.image(view, width="stretch")

st.subheader("Problems found")
unreadable = report["unreadable"]
if unreadable:
    st.warning(f"{len(unreadable)} unreadable files are skipped in training and evaluation.")
    st.dataframe(pd.DataFrame([{"file": in_dataset(k), "reason": v} for k, v in unreadable.items()]), hide_index=True)
else:
    st.success("Every file is a readable image.")
if report["duplicates"]:
    st.warning(f"{len(report['duplicates'])} groups of identical files.")
    st.dataframe(pd.DataFrame({"identical files": [" | ".join(map(in_dataset, g)) for g in report["duplicates"]]}),
                 hide_index=True)
else:
    st.success("No duplicate files.")

leaks = report.get("leaks", [])
if leaks:
    st.warning(f"{len(leaks)} test photos also appear in the training split (identical files or near-duplicates by "
               "perceptual hash): test accuracy counts them as recognised. Remove them from one of the splits.")
    st.dataframe(pd.DataFrame([{"test photo": in_dataset(leak["test"]), "training photo": in_dataset(leak["train"]),
                                "kind": leak["kind"],
                                "hash distance (bits)": leak["distance"]} for leak in leaks]), hide_index=True)
else:
    st.success("No test photo is also a training photo.")

st.subheader("Normalisation statistics (training split only)")
if st.button("Compute mean and std"):
    with st.spinner("Decoding the training split…"):
        try:
            mean, std = training_stats(str(dataset_path))
            st.table(pd.DataFrame({"channel": ["R", "G", "B"], "mean": mean, "std": std}))
        except LandmarkError as error:
            show_error(error)

st.subheader("Places")
try:
    table = pd.DataFrame(places_table(dataset.classes, dataset.root))
except LandmarkError as error:  # a damaged places.csv: say where, and offer the table to write a good one
    show_error(error)
    table = pd.DataFrame(places_table(dataset.classes))
missing = table[table["latitude"].isna()]
st.caption(f"Where each landmark is: tagged photos get this name and GPS position. "
           + (f"**{len(missing)} classes have no place** and would be tagged by name only: fill in their coordinates. "
              if len(missing) else "Every class has a place. ")
           + f"Saved as `{PLACES_FILE}` in the dataset folder; it overrides the built-in places.")
# a new key after the picker writes places.csv: the editor then shows the file, not its own earlier edits
edited = st.data_editor(table, hide_index=True, disabled=["folder"], key=f"places-{st.session_state.get('places_version', 0)}",
                        column_config={
    "latitude": st.column_config.NumberColumn(min_value=-90.0, max_value=90.0, format="%.4f"),
    "longitude": st.column_config.NumberColumn(min_value=-180.0, max_value=180.0, format="%.4f")})
if st.button(f"Save {PLACES_FILE}"):
    try:
        path = save_places(dataset.root, places_from_table(edited.to_dict("records")))
        st.success(f"Saved {path}")
    except (LandmarkError, OSError) as error:
        show_error(error)

with st.expander("Find a class's place: search a landmark or a town, or click on the map", expanded=bool(len(missing))):
    without_place = list(missing["folder"])
    target = st.selectbox("Class", without_place + [c for c in dataset.classes if c not in without_place],
                          key="place_class", format_func=lambda c: short_label(c) + (" (no place yet)" if c in without_place else ""))
    how = st.radio("Find it by", ["name", "map"], horizontal=True, key="place_how",
                   format_func={"name": "a landmark's or town's name", "map": "a click on the map"}.get)
    candidates: list = []
    if how == "name":
        query = st.text_input("Landmark or town", key="place_query", placeholder="Petra, Agra, Cusco…")
        candidates = (places_matching(query, dataset.root)[:5] + search_towns(query)) if query else []
        if query and not candidates:
            st.caption(f"No landmark or town is called {query!r}.")
    else:
        st.caption("Click near the landmark: the towns nearest to the click are offered (GeoNames' towns of 1,000 "
                   "people or more, on this machine).")
        clicked = st.altair_chart(town_picker_map(), on_select="rerun", key="place_map", selection_mode="clicked")
        points = (clicked.selection.get("clicked") or []) if clicked else []
        if points:
            around = pd.DataFrame(towns_around(points[0]["latitude"], points[0]["longitude"]))
            st.caption(f"Closer: the {len(around):,} towns around the click. Click the one by the landmark.")
            closer = st.altair_chart(town_zoom_map(around), on_select="rerun", key=f"place_zoom-{points[0]}",
                                     selection_mode="clicked")
            points = ((closer.selection.get("clicked") or []) if closer else []) or points
            candidates = [town for town, _ in nearest_towns(points[0]["latitude"], points[0]["longitude"])]
    if candidates:
        choice = st.selectbox("Place", candidates, key="place_choice", format_func=lambda c: (
            f"🏛 {c.description} (a known landmark)" if isinstance(c, Place) else f"{c.description}"))
        left, right = st.columns(2)
        latitude = left.number_input("Latitude", -90.0, 90.0, float(choice.latitude), format="%.5f",
                                     key=f"place_lat-{choice}", help="The town's centre: move it onto the landmark if you know better.")
        longitude = right.number_input("Longitude", -180.0, 180.0, float(choice.longitude), format="%.5f",
                                       key=f"place_lon-{choice}")
        shown = table.loc[table["folder"] == target, "display_name"]
        if st.button(f"Set the place of {short_label(target)}", type="primary", key="set_place"):
            try:
                name = shown.iloc[0] if len(shown) and shown.iloc[0] else None
                place = place_at(target, choice, name, latitude, longitude)
                set_place(dataset.root, place)
                st.session_state["places_version"] = st.session_state.get("places_version", 0) + 1
                for key in ("place_class", "place_query", "place_choice"):  # on to the next class without a place
                    st.session_state.pop(key, None)
                st.toast(f"{short_label(target)}: {place.description} ({place.latitude:.4f}, {place.longitude:.4f})")
                st.rerun()
            except (LandmarkError, OSError) as error:
                show_error(error)

st.subheader("Clean the training photos")
trained_here = [r for r in finished_runs() if r.run.exported and Path(r.data).resolve() == Path(dataset.root).resolve()]
if not trained_here:
    st.caption("Train a model on this dataset first: its mistakes on its own training photos point at mislabelled ones.")
else:
    cleaner_run = st.selectbox("Model that judges the photos", trained_here, format_func=run_label, key="cleaner_run")
    st.caption("The training photos with the highest loss on their own label: often in the wrong folder, or no "
               "landmark at all. Move a photo to its right class or out of the dataset (into `_excluded/`, never "
               "deleted); every move can be undone. Train again afterwards.")
    if st.button("Find likely mislabelled photos", key="find_suspects"):
        with st.spinner("Scoring every training photo…"):
            try:
                st.session_state["suspects"] = (cleaner_run.run_id, suspect_photos(cleaner_run.path, limit=18))
            except LandmarkError as error:
                show_error(error)
    found = st.session_state.get("suspects")
    if found and found[0] == cleaner_run.run_id:
        columns = st.columns(6)
        for i, row in enumerate(r for r in found[1] if Path(r["path"]).exists()):
            with columns[i % 6]:
                st.image(row["path"], width="stretch", caption=f"{short_label(row['label'])} · loss {row['loss']:.2f} · "
                                                              f"looks like {short_label(row['predicted'])}")
                options = [OUT_OF_DATASET] + [c for c in dataset.classes if c != row["label"]]
                default = options.index(row["predicted"]) if row["predicted"] in options else 0
                target = st.selectbox("Move to", options, index=default, key=f"move-to-{row['path']}",
                                      format_func=lambda c: c if c == OUT_OF_DATASET else short_label(c))
                if st.button("Move", key=f"move-{row['path']}"):
                    try:
                        moved = move_photo(dataset.root, row["path"], None if target == OUT_OF_DATASET else target)
                        st.toast(f"Moved to {moved.relative_to(Path(dataset.root).resolve())}")
                        report_for.clear()
                        st.rerun()
                    except (LandmarkError, OSError) as error:  # a file op: the reason, no traceback
                        show_error(error)
    history = moves(dataset.root)
    if history:
        last = history[-1]
        if st.button(f"Undo the last move ({last['from']} → {last['to']})", key="undo_move"):
            try:
                undo_last_move(dataset.root)
                report_for.clear()
                st.rerun()
            except (LandmarkError, OSError) as error:  # a file op: the reason, no traceback
                show_error(error)
