import altair as alt
import pandas as pd
import streamlit as st

from landmark_core.core.errors import ImageError, LandmarkError
from landmark_core.core.images import MAX_UPLOAD_BYTES, about_file, check_upload
from landmark_core.geo.places import display_name
from landmark_core.tagging.decision import STATUS_MEANINGS, TagStatus, decide_for
from landmark_core.tagging.metadata import read_gps
from landmark_core.tagging.writing import tagged_bytes, tagged_zip, xmp_sidecar
from pages.common import (assessment_for, current_dataset, current_dataset_runs, dataset_test_photos, explanation_for,
                          finished_runs, predictor_for, run_label, show_error, world_map)

st.title("📍 Predict & tag")
runs = current_dataset_runs([r for r in finished_runs() if r.run.exported], "predict")
if not runs:
    st.info("No trained model yet: train one on the **Train** page.")
    st.stop()

chosen = st.multiselect("Models (side by side)", runs, default=runs[:2], format_func=run_label)
if not chosen:
    st.stop()
try:
    tagger = predictor_for(chosen[0].path)
    _ = tagger.places  # a damaged places.csv shows here, once, with its line number (assigned: Streamlit's
    # "magic" would print a bare expression on the page)
except LandmarkError as error:
    show_error(error)
    st.stop()
# The threshold follows the tagging model's own suggestion until the user moves it; from then on it is theirs,
# whichever models are added or removed (Streamlit drops a keyed widget's value when the page is left: start over).
if not st.session_state.get("threshold_moved") or "tag_threshold" not in st.session_state:
    st.session_state.update(tag_threshold=tagger.probability_threshold, threshold_moved=False)
threshold = st.slider("Tag only when the top probability is at least", 0.0, 1.0, step=0.01, key="tag_threshold",
                      on_change=lambda: st.session_state.update(threshold_moved=True),
                      help="Below it the photo gets no tag: abstaining beats a wrong location. Until you move it, it "
                           "is the tagging model's suggestion, chosen on its validation split (see Evaluate).")
suggested = tagger.probability_threshold
if abs(threshold - suggested) < 1e-9:
    st.caption(f"▲ {suggested:.2f} is the tagging model's suggested threshold.")
else:  # a slider has no tick marks: the suggestion is said, and one click away
    st.button(f"Back to the suggested {suggested:.2f} (now {threshold:.2f})", key="threshold_reset",
              on_click=lambda: st.session_state.update(tag_threshold=suggested, threshold_moved=False))
if tagger.familiarity_threshold is not None:
    st.caption(f"Tags come from **{run_label(chosen[0])}**. A photo is tagged only if it also looks like the training "
               f"photos of its landmark (familiarity at least {tagger.familiarity_threshold:.2f}); otherwise it is "
               "*unknown*: " + STATUS_MEANINGS["unknown"] + ".")
else:
    st.caption(f"Tags come from **{run_label(chosen[0])}**. This model has no open-set check yet: evaluate it again "
               "(`landmark evaluate RUN`) so that photos of places it never learned are left untagged.")

uploads = st.file_uploader("Drop photos here", accept_multiple_files=True, max_upload_size=MAX_UPLOAD_BYTES // 2**20)
dataset = current_dataset()
if dataset is not None:  # the sidebar's dataset, which the page follows
    examples, source = dataset_test_photos(dataset), f"test photos of {dataset.name}"
else:
    test = chosen[0].run.split.get("test", [])
    examples, source = test[:: max(1, len(test) // 6)][:6], f"test photos of {run_label(chosen[0])}"
picked = st.pills(f"…or try {source}", examples, selection_mode="multi",
                  format_func=lambda p: p.split("/")[-2].split(".", 1)[-1].replace("_", " ") + " · " + p.split("/")[-1]) if examples else []

sidecars_only = st.radio(
    "Tags go into", ["tagged copies", "XMP sidecars"], horizontal=True, key="tag_into",
    help="Sidecars (photo.jpg.xmp) carry the same tags beside your originals, which stay untouched: digiKam, "
         "darktable and Immich read them (`landmark tag --sidecars` writes them for a whole library).") == "XMP sidecars"
explain = st.toggle("Show where each model looked (Grad-CAM)",
                    help="A heatmap over the photo: hot where the evidence for the model's top prediction is.")
photos = [(u.name, u.getvalue()) for u in uploads or []]
for path in picked or []:
    with open(path, "rb") as handle:
        photos.append((path.split("/")[-1], handle.read()))
if not photos:
    st.stop()

tagged_items = []
for index, (name, data) in enumerate(photos):
    st.divider()
    try:
        check_upload(data, name)
        assessments = {run.run_id: assessment_for(run.path, data) for run in chosen}
        existing = read_gps(data)
    except ImageError as error:  # read from the upload's bytes: said about its file name
        st.error(str(about_file(error, name)))
        continue
    except Exception as error:  # a broken model file must not take the page down
        show_error(error)
        continue
    columns = st.columns([1] + [1.3] * len(chosen) + [1.3])
    columns[0].image(data, caption=name, width="stretch")
    for column, run in zip(columns[1:], chosen):
        assessment = assessments[run.run_id]
        top = pd.DataFrame([{"landmark": display_name(p.label), "probability": p.probability} for p in assessment.predictions])
        column.caption(run_label(run) + (f" · familiarity {assessment.familiarity:.2f}" if assessment.familiarity is not None else ""))
        column.altair_chart(alt.Chart(top).mark_bar().encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            y=alt.Y("landmark:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False, labelFlush=False, labelLimit=180)),
            tooltip=["landmark", alt.Tooltip("probability:Q", format=".1%")]).properties(height=28 * len(top) + 30),
            width="stretch")
        column.markdown("\n".join(f"{rank}. {row.landmark} — {row.probability:.1%}" for rank, row in enumerate(top.itertuples(), 1)))
        if explain:
            overlay, explained, _ = explanation_for(run.path, data)
            column.image(overlay, caption=f"Grad-CAM · {display_name(explained)}", width="stretch")
    decision = decide_for(tagger, data, threshold=threshold, existing_gps=existing, assessment=assessments[chosen[0].run_id])
    with columns[-1]:
        if decision.status == TagStatus.TAGGED:
            st.success(f"Tag: **{decision.description}** ({decision.probability:.0%})")
            if decision.place:
                st.caption(f"GPS {decision.place.latitude:.4f}, {decision.place.longitude:.4f}")
                where = pd.DataFrame({"latitude": [decision.place.latitude], "longitude": [decision.place.longitude],
                                      "place": [decision.place.display_name]})
                st.altair_chart(world_map(where, height=180), width="stretch")
            else:
                st.caption("No place for this class: tagged by name only (add it on the Explore page).")
            if sidecars_only:  # named to lie beside the original: photo.jpg -> photo.jpg.xmp
                st.download_button("Download XMP sidecar", xmp_sidecar(decision), file_name=f"{name}.xmp",
                                   key=f"xmp-{index}-{name}")
            else:
                photo, sidecar = tagged_bytes(data, decision)
                st.download_button("Download tagged copy", photo, file_name=f"tagged-{name}", key=f"dl-{index}-{name}")
                if sidecar:
                    st.download_button("Download XMP sidecar", sidecar, file_name=f"tagged-{name}.xmp",
                                       key=f"xmp-{index}-{name}")
            # sidecars keep the photo's own name (photo.jpg.xmp beside photo.jpg) unless two uploads share it
            entry = name if sidecars_only and name not in {item[0] for item in tagged_items} else f"{index:03d}-tagged-{name}"
            tagged_items.append((entry, data, decision))
        elif decision.status == TagStatus.UNKNOWN:
            st.warning(f"**Unknown**: not a landmark this model knows (familiarity {decision.familiarity:.2f}, needs "
                       f"{tagger.familiarity_threshold:.2f}; top guess {decision.name}, {decision.probability:.0%}). No tag.")
        elif decision.status == TagStatus.HAS_GPS:
            st.info(f"Already geotagged ({decision.existing_gps[0]:.4f}, {decision.existing_gps[1]:.4f}); left as it is.")
        else:
            st.warning(f"No tag: the top guess ({decision.name}, {decision.probability:.0%}) "
                       f"is under the {threshold:.0%} threshold.")

if len(tagged_items) > 1:
    st.divider()
    what = "XMP sidecars" if sidecars_only else "tagged photos"
    st.download_button(f"Download all {len(tagged_items)} {what} (zip)",
                       tagged_zip(tagged_items, sidecars_only=sidecars_only),
                       file_name="tag-sidecars.zip" if sidecars_only else "tagged-photos.zip", mime="application/zip")
