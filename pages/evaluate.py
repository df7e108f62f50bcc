import altair as alt
import pandas as pd
import streamlit as st

from landmark_core.reports.insights import (cell_images, class_places_frame, confusion_classes, confusion_frame,
                                            familiarity_curve_frame, per_class_frame, short_label, tagged_unknowns,
                                            top_losses, wrong_tag_estimate)
from pages.common import current_dataset_runs, explanation_for, finished_runs, model_bundle_for, run_label, world_map

st.title("📊 Evaluate")
runs = current_dataset_runs(finished_runs(), "evaluate")
if not runs:
    st.info("No finished run yet: train one on the **Train** page.")
    st.stop()

summary = st.selectbox("Run", runs, format_func=run_label)
evaluation = summary.run.evaluation
classes = evaluation["classes"]

m = st.columns(4)
m[0].metric("Top-1 accuracy", f"{evaluation['top1']:.1%}")
m[1].metric("Top-5 accuracy", f"{evaluation['top5']:.1%}")
m[2].metric("Test images", evaluation["num_images"])
m[3].metric("Suggested tag threshold", f"{evaluation['default_threshold']:.2f}",
            help="The lowest calibrated confidence (at least 0.5) at which the validation photos that pass the "
                 "familiarity check are ≥98% right.")
if summary.run.exported:
    st.download_button("⬇️ Download the model (zip: the exported model, export.json and a README with the lines that "
                       "load it)", model_bundle_for(summary.path), file_name=f"{summary.run_id}-model.zip",
                       mime="application/zip")
calibration = evaluation.get("calibration")
if calibration:
    c = st.columns(4)
    test_cal = calibration["test"]
    if test_cal["ece_before"] is not None:
        c[0].metric("Calibration error (test ECE)", f"{test_cal['ece_after']:.3f}",
                    delta=f"{test_cal['ece_after'] - test_cal['ece_before']:+.3f} by calibration", delta_color="inverse",
                    help="Expected calibration error: how far the confidence is from the real share of right answers "
                         "(0 is perfect). Calibration divides the logits by a temperature fit on the validation split.")
    c[1].metric("Temperature", f"{calibration['temperature']:.2f}",
                help="The model's scores are divided by it before they become probabilities, fit on the validation "
                     "split: below 1 the raw probabilities were too cautious and are sharpened, above 1 too "
                     "confident and are softened.")
    for column, point in zip(c[2:], evaluation["coverage_at_precision"]["test"]):
        column.metric(f"Coverage at {point['precision']:.0%} precision",
                      "–" if point["coverage"] is None else f"{point['coverage']:.1%}",
                      help=f"The share of test photos a confidence threshold ({point['threshold'] or 1:.2f}) can tag "
                           f"while {point['precision']:.0%} of the tagged ones are right.")
open_set = evaluation.get("open_set")
if open_set:
    st.subheader("Known or unknown: photos of places the model never learned")
    known, unknown = open_set["known"], open_set["unknown"]
    against_unknowns = open_set["auroc"]["unknown photos"]["familiarity"] is not None
    auroc = open_set["auroc"]["unknown photos" if against_unknowns else "leave-one-class-out"]["familiarity"]
    o = st.columns(4)
    o[0].metric("Known test photos tagged", f"{known['tagged_share']:.1%}" if known["tagged_share"] is not None else "–",
                help="At the default decision: probability and familiarity both at least their thresholds.")
    o[1].metric("Precision of those tags", f"{known['precision']:.1%}" if known.get("precision") is not None else "–")
    o[2].metric("Unknown photos tagged", f"{unknown['tagged_share']:.1%}" if unknown["tagged_share"] is not None else "–",
                help="Photos of other places (the dataset's unknown/ folder, evaluation half) that would still get a "
                     "tag. Without the familiarity check: "
                     + (f"{open_set['unknown_without_open_set']['tagged_share']:.0%}."
                        if open_set["unknown_without_open_set"]["tagged_share"] is not None else "–"))
    o[3].metric("AUROC known vs " + ("unknown photos" if against_unknowns else "held-out classes"),
                f"{auroc:.3f}" if auroc is not None else "–",
                help="How well familiarity tells known photos from unknown ones (1 perfect, 0.5 chance). " + (
                    "Measured on the dataset's unknown/ photos." if against_unknowns else
                    "This dataset has no unknown/ photos: measured by holding each class out of the model in turn "
                    "and treating its photos as unknown (a stand-in for photos of other places)."))
    st.caption((f"Familiarity compares {open_set['familiarity_features']}. " if "familiarity_features" in open_set
                else "") + f"Familiarity threshold **{open_set['familiarity_threshold']:.3f}** (set from "
               f"{' and '.join(open_set['threshold_basis'])}), probability threshold "
               f"**{open_set['probability_threshold']:.2f}**. Unknown photos: {open_set['unknown_photos']['calibration']} "
               f"to calibrate" + (f" (each also counts against a photo that looks more like it than like the "
                                  f"landmark's own training photos)" if open_set.get("distractors") else "")
               + f", {open_set['unknown_photos']['evaluation']} to evaluate"
               + ("" if open_set["unknown_photos"]["evaluation"] else
                  " — add an `unknown/` folder of photos of other places to the dataset to measure and tighten this")
               + ".")
    estimate = wrong_tag_estimate(evaluation)
    if estimate:
        st.info(estimate)
    curve = familiarity_curve_frame(evaluation)
    rule = alt.Chart(pd.DataFrame({"threshold": [open_set["familiarity_threshold"]]})).mark_rule(
        strokeDash=[4, 4], color="gray").encode(x="threshold:Q")
    st.altair_chart(rule + alt.Chart(curve).mark_line().encode(
        x=alt.X("threshold:Q", title="familiarity threshold"), y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title=None),
        color=alt.Color("series:N", title=None), tooltip=["threshold", "series", alt.Tooltip("value:Q", format=".1%")]
    ).properties(height=260), width="stretch")
    mistakes = tagged_unknowns(evaluation)
    if not mistakes.empty:
        st.caption("Unknown photos that would still be tagged:")
        columns = st.columns(6)
        for i, row in enumerate(mistakes.itertuples()):
            columns[i % 6].image(row.path, width="stretch",
                                 caption=f"as {short_label(row.predicted_name)} · familiarity {row.familiarity:.2f}")
if evaluation.get("skipped_images"):
    st.caption(f"{len(evaluation['skipped_images'])} unreadable files were skipped.")

st.subheader("Confusion matrix")
options = st.columns([1.2, 1.2, 2])
normalize = options[0].toggle("Shares of each true class", value=len(classes) > 12)
order = options[1].radio("Order", ["class", "confusion"], horizontal=True,
                         help="confusion: the classes with the most mistakes (made or received) first")
top = options[2].slider("Show the N most-confused classes", 2, len(classes), len(classes)) if len(classes) > 2 else len(classes)
shown = confusion_classes(evaluation, order, top)
cells = confusion_frame(evaluation, normalize=normalize)
cells = cells[cells["true"].isin(shown) & cells["predicted"].isin(shown)]
shorts = [short_label(c) for c in shown]
cell_px = 34 if len(shown) <= 20 else 22 if len(shown) <= 30 else 18  # a row per label: it grows with the classes
axis = dict(labelOverlap=False, labelFlush=False, labelFontSize=11, labelLimit=200)
# SVG, not the canvas Streamlit picks above 2,000 cells: crisp labels at any zoom, text the browser can find
as_svg = {"embedOptions": {"renderer": "svg"}}
selection = alt.selection_point(fields=["true", "predicted"], name="cell")
heatmap = alt.Chart(cells).mark_rect().encode(
    x=alt.X("predicted_short:N", sort=shorts, title="predicted", axis=alt.Axis(labelAngle=-60, **axis)),
    y=alt.Y("true_short:N", sort=shorts, title="true", axis=alt.Axis(**axis)),
    color=alt.Color("value:Q", scale=alt.Scale(scheme="blues"), title="share" if normalize else "images"),
    tooltip=["true", "predicted", "count", alt.Tooltip("share:Q", format=".1%")],
    opacity=alt.condition(selection, alt.value(1.0), alt.value(0.6)),
    # the clicked cell is outlined (nothing is outlined before a click)
    stroke=alt.condition(selection, alt.value("crimson"), alt.value(None), empty=False),
    strokeWidth=alt.condition(selection, alt.value(2.5), alt.value(0), empty=False),
).add_params(selection).properties(width=cell_px * len(shown), height=cell_px * len(shown))
if len(shown) <= 20:
    text = alt.Chart(cells[cells["count"] > 0]).mark_text(fontSize=10).encode(
        x=alt.X("predicted_short:N", sort=shorts),
        y=alt.Y("true_short:N", sort=shorts),
        text=alt.Text("value:Q", format=".0%" if normalize else "d"),
        color=alt.condition(alt.datum.share > 0.5, alt.value("white"), alt.value("black")))
    chart = heatmap + text
else:
    chart = heatmap
# "pad": the cells keep their size and the labels get room around them (Streamlit fits the whole chart otherwise)
chart = chart.properties(usermeta=as_svg, autosize=alt.AutoSizeParams(type="pad"))
event = st.altair_chart(chart, on_select="rerun", key="confusion", width="content")

picked = (event.selection.get("cell") or [{}])[0] if event and event.selection else {}
st.caption("Click a cell, or choose a pair below, to see its images.")
a, b = st.columns(2)
true_name = a.selectbox("True class", classes, index=classes.index(picked["true"]) if picked.get("true") in classes else 0,
                        format_func=short_label)
predicted_default = picked.get("predicted") if picked.get("predicted") in classes else (
    next((p["predicted"] for p in evaluation["most_confused"] if p["true"] == true_name), true_name))
predicted_name = b.selectbox("Predicted class", classes, index=classes.index(predicted_default), format_func=short_label)
explain = st.toggle("Show Grad-CAM heatmaps in the galleries", help="Where the model looked for the class it "
                    "predicted: hot colours over the evidence.")


def gallery_image(path: str) -> object:
    return explanation_for(summary.path, path)[0] if explain else path


def gallery_caption(text: str) -> str:
    return f"Grad-CAM · {text}" if explain else text


behind = cell_images(summary.path, true_name, predicted_name)
if behind.empty:
    st.write("No test images in this cell.")
columns = st.columns(6)
for i, row in enumerate(behind.head(18).itertuples()):
    columns[i % 6].image(gallery_image(row.path), width="stretch", caption=gallery_caption(
        f"predicted {short_label(row.predicted_name)} ({row.probability:.0%}) · true {short_label(row.true_name)}"))

st.subheader("Per-class precision, recall and F1")
per_class = per_class_frame(summary.path)
metric = st.radio("Chart", ["f1", "precision", "recall"], horizontal=True)
st.altair_chart(alt.Chart(per_class).mark_bar().encode(
    x=alt.X(f"{metric}:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format=".0%")),
    y=alt.Y("landmark:N", sort="x", title=None, axis=alt.Axis(labelOverlap=False, labelFlush=False, labelLimit=260, labelFontSize=11)),
    tooltip=["landmark", alt.Tooltip("precision:Q", format=".2f"), alt.Tooltip("recall:Q", format=".2f"),
             alt.Tooltip("f1:Q", format=".2f"), "support"]).properties(height=22 * len(classes) + 40, usermeta=as_svg),
                width="stretch")
st.dataframe(per_class.drop(columns="class"), hide_index=True, column_config={
    k: st.column_config.NumberColumn(format="percent") for k in ("precision", "recall", "f1")})

places = class_places_frame(summary.path)
if not places.empty:
    st.subheader("Where the classes are")
    st.caption(f"{len(places)} of {len(classes)} classes have a place; colour: test recall.")
    st.altair_chart(world_map(places, height=320, color=alt.Color("recall:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1])),
                              tooltip=["place", "country", alt.Tooltip("recall:Q", format=".0%"), "test photos"]), width="stretch")

if evaluation["most_confused"]:
    st.subheader("Most confused pairs")
    st.dataframe([{"true": short_label(p["true"]), "predicted": short_label(p["predicted"]), "photos": p["count"]}
                  for p in evaluation["most_confused"][:10]], hide_index=True)

st.subheader("Top losses")
st.caption("The test photos with the highest loss (the least probability on their true class), highest first.")
losses = top_losses(summary.path, 12)
columns = st.columns(6)
for i, row in enumerate(losses.itertuples()):
    columns[i % 6].image(gallery_image(row.path), width="stretch",
                         caption=gallery_caption(f"loss {row.loss:.2f} · true {short_label(row.true_name)} · "
                                                 f"predicted {short_label(row.predicted_name)} ({row.probability:.0%})"))

st.subheader("Confidence threshold: coverage vs accuracy")
curve = evaluation["coverage_curve"]["validation"]
if curve:
    frame = pd.DataFrame(curve).melt(id_vars="threshold", value_vars=["coverage", "accuracy"])
    st.altair_chart(alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("threshold:Q", title="confidence threshold"),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title=None, axis=alt.Axis(format=".0%")),
        color=alt.Color("variable:N", title=None),
        tooltip=["threshold", "variable", alt.Tooltip("value:Q", format=".1%")]).properties(height=260), width="stretch")

if calibration and calibration["test"]["reliability_after"]:
    st.subheader("Calibration: confidence vs accuracy (test split)")
    st.caption("Each point is a confidence bin: on the diagonal, photos predicted with 80% confidence are right 80% of "
               "the time. The temperature is fit on the validation split only.")
    points = pd.concat([pd.DataFrame(calibration["test"][f"reliability_{when}"]).assign(probabilities=label)
                        for when, label in (("before", "raw softmax"), ("after", "calibrated"))])
    diagonal = alt.Chart(pd.DataFrame({"confidence": [0, 1], "accuracy": [0, 1]})).mark_line(
        strokeDash=[4, 4], color="gray").encode(x="confidence:Q", y="accuracy:Q")
    st.altair_chart(diagonal + alt.Chart(points).mark_line(point=True).encode(
        x=alt.X("confidence:Q", scale=alt.Scale(domain=[0, 1]), title="confidence", axis=alt.Axis(format=".0%")),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="share right", axis=alt.Axis(format=".0%")),
        color="probabilities:N", tooltip=["probabilities", alt.Tooltip("confidence:Q", format=".2f"),
                                          alt.Tooltip("accuracy:Q", format=".1%"), "count"]).properties(height=300),
        width="stretch")
