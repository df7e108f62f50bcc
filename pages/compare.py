import altair as alt
import streamlit as st

from landmark_core.reports.insights import comparison, curves_frame, short_label
from pages.common import current_dataset_runs, finished_runs, format_percent, format_seconds, run_label

st.title("⚖️ Compare runs")
runs = current_dataset_runs(finished_runs(), "compare")
if len(runs) < 2:
    st.info("Train at least two models (for example scratch_cnn and efficientnet_lite0) to compare them here.")
    st.stop()

chosen = st.multiselect("Runs", runs, default=runs[:2], format_func=run_label)
if len(chosen) < 2:
    st.info("Choose at least two runs above.")
    st.stop()
paths = [r.path for r in chosen]
result = comparison(paths)
first, second = chosen[0].run_id, chosen[1].run_id
shared = result["shared_photos"]
if not shared:
    st.info(f"{first} and {second} were tested on different photos ({result['test_photos'][first]:,} and "
            f"{result['test_photos'][second]:,}; none is in both): they are compared on their metrics"
            + (" and the classes they share" if not result["per_class"].empty and "difference" in result["per_class"]
               and len(result["per_class"]) else "") + ", not photo by photo.")

st.subheader("Final metrics")
metrics = result["metrics"].assign(**{
    "train time": result["metrics"]["train seconds"].map(format_seconds),
    # shares as every page writes them (94.2%), a missing one as a dash
    "test top-1": result["metrics"]["test top-1"].map(format_percent),
    "test top-5": result["metrics"]["test top-5"].map(format_percent)}).drop(columns="train seconds")
for whole in ("image size", "epochs"):  # whole numbers, or a dash where a run's config lacks them
    metrics[whole] = metrics[whole].map(lambda v: str(int(v)) if isinstance(v, (int, float)) and v == v else "–")
st.dataframe(metrics, hide_index=True,
             column_config={"run": st.column_config.TextColumn(width="large")})

st.subheader("Training curves")
curves = curves_frame(paths)
metric = st.radio("Metric", ["accuracy", "loss"], horizontal=True)
st.altair_chart(alt.Chart(curves[curves["metric"] == metric]).mark_line(point=True).encode(
    x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
    y=alt.Y("value:Q", title=metric, axis=alt.Axis(format=".0%" if metric == "accuracy" else ".2f")),
    color=alt.Color("run:N", scale=alt.Scale(scheme="category10"), legend=alt.Legend(orient="bottom", labelLimit=400)),
    # the legend draws the dash of each split, not the points on the lines
    strokeDash=alt.StrokeDash("split:N", legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2, symbolSize=300)),
    tooltip=["run", "split", "epoch", alt.Tooltip("value:Q", format=".3f")]).properties(height=320),
    width="stretch")

per_class = result["per_class"]
if "difference" in per_class and len(per_class):
    st.subheader(f"Per-class accuracy: {first} minus {second}")
    per_class["label"] = per_class["class"].map(short_label)
    st.altair_chart(alt.Chart(per_class).mark_bar().encode(
        x=alt.X("difference:Q", title="recall difference", axis=alt.Axis(format="+.0%")),
        y=alt.Y("label:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False, labelFlush=False, labelFontSize=11,
                                                                labelLimit=320)),
        color=alt.condition(alt.datum.difference > 0, alt.value("#2b8a3e"), alt.value("#c92a2a")),
        tooltip=["class", alt.Tooltip("difference:Q", format="+.2f")]).properties(height=max(200, 22 * len(per_class) + 40)),
        width="stretch")

disagreements = result["disagreements"]
if shared:
    st.subheader("Where they disagree")
    if disagreements.empty:
        st.write(f"Both runs are right and wrong on exactly the same photos, of the {shared:,} test photos both saw.")
    else:
        for run_id, other in ((first, second), (second, first)):
            only = disagreements[disagreements["right"] == run_id]
            st.markdown(f"**Only {run_id} is right** ({len(only)} of the {shared:,} test photos both saw)")
            pages = max(1, -(-len(only) // 12))
            page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"page-{run_id}") if pages > 1 else 1
            columns = st.columns(6)
            for i, row in enumerate(only.iloc[(page - 1) * 12:page * 12].itertuples()):
                said, probability = ((row.second_prediction, row.second_probability) if run_id == first
                                     else (row.first_prediction, row.first_probability))
                columns[i % 6].image(row.path, width="stretch", caption=f"true: {short_label(row.true)} · {other} said "
                                                                        f"{short_label(said)} ({probability:.0%})")
