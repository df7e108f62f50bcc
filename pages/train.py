import os

import altair as alt
import pandas as pd
import streamlit as st
import torch

from landmark_core.data import AUGMENTATIONS
from landmark_core.training.distributed import default_processes, process_limit
from landmark_core.core.errors import LandmarkError
from landmark_core.reports.insights import batch_losses, curves_frame
from landmark_core.runs.progress import run_progress
from landmark_core.models import DEFAULT_TRANSFER_MODEL, get_spec, list_models
from landmark_core.runs.states import ACTIVE_STATES, RESUMABLE_STATES, RunState
from landmark_core.runs.manage import delete_run, rename_run
from landmark_core.runs.run import Run, is_training, list_runs, request_cancel, resolve_run
from landmark_core.runs.launch import launch_background
from landmark_core.runs.config import HEAD_SOLVERS, OPTIMIZERS, SCHEDULERS, TrainConfig
from landmark_core.training.lr_finder import Sweep, SweepState
from landmark_core.pipeline import start_run
from pages.common import (dataset_classes, dataset_training_photos, format_percent, format_seconds, model_summary,
                          require_dataset, run_estimate, show_error)

st.title("🏋️ Train")
dataset = require_dataset()
existing_runs = list_runs()  # read once for the form and the question (the list below is read again: a run may just have started)


def sweep_view(sweep: Sweep, model: str, refreshing: bool) -> None:
    """The sweep's progress while its process runs (refreshed every second, this fragment alone), then its curve
    and suggestion: it runs in the background like a training run, so the page stays usable and may be left."""
    state = sweep.state
    if state == SweepState.RUNNING:
        done, total = sweep.progress
        st.progress(done / max(1, total), text=f"Sweeping {model} in the background… batch {done}/{total}")
    elif state == SweepState.FAILED:
        st.error(f"The learning-rate sweep failed: {sweep.error}")
    elif state == SweepState.FINISHED and (result := sweep.result) is not None:
        curve = pd.DataFrame({"learning rate": result.learning_rates, "loss": result.losses})
        chart = alt.Chart(curve).mark_line().encode(
            x=alt.X("learning rate:Q", scale=alt.Scale(type="log"), axis=alt.Axis(format=".0e")),
            y=alt.Y("loss:Q", scale=alt.Scale(zero=False), title="smoothed loss"),
            tooltip=[alt.Tooltip("learning rate:Q", format=".1e"), alt.Tooltip("loss:Q", format=".3f")])
        if result.suggestion:
            chart += alt.Chart(pd.DataFrame({"learning rate": [result.suggestion]})).mark_rule(
                color="crimson", strokeDash=[4, 4]).encode(x="learning rate:Q")
        st.altair_chart(chart.properties(height=240), width="stretch")
        st.markdown(f"Suggested learning rate: **{result.suggestion:.1e}** (trained: {result.trained}); enter it "
                    "under Advanced settings." if result.suggestion else "No clear descent: keep the default.")
    if refreshing and state != SweepState.RUNNING:
        st.rerun(scope="app")  # it has just ended: draw once more, without the timer


with st.expander("New training run", expanded=not existing_runs):
    model = st.selectbox("Model", list_models(), index=list_models().index(DEFAULT_TRANSFER_MODEL),
                         help=f"scratch_cnn learns from random weights; the others start from ImageNet. "
                              f"{DEFAULT_TRANSFER_MODEL} was the most accurate on real photos.")
    # a scratch run's epochs follow the dataset's size; a dataset that cannot be read is reported at Start
    defaults = TrainConfig(data=str(dataset), model=model).resolved(training_photos=dataset_training_photos(dataset))
    classes = len(dataset_classes(dataset)) or 50
    info = model_summary(model, defaults.image_size, classes)
    spec = get_spec(model)
    st.caption(f"{info['description']} {info['parameters'] / 1e6:.2f} M parameters (with this dataset's {classes}-class "
               f"head), {info['gflops']:.2f} GFLOPs ({info['gflops'] / 2:.2f} G multiply-adds) per image at "
               f"{info['image_size']} px. Pretrained: {info['pretrained_source']}.")
    # Timing steps beside a training run would slow it and report its own slowed pace: then only on request
    busy = [r.run_id for r in existing_runs if is_training(r.path)]
    if not busy or st.button("Estimate the time", key="estimate_anyway",
                             help=f"{', '.join(busy)} is training: the estimate would be slower than alone."):
        cost, why_not = run_estimate(dataset, model)
        if cost is not None:
            st.markdown(f"**Time on this machine** with the default settings: {cost.describe()}")
        else:
            st.caption(f"No time estimate: {why_not}")
    # A first visit (no run yet) sees the three steps only: photos, the model, Start. The ~15 settings wait under
    # Advanced with the defaults that finish in minutes on a 2-core CPU; it is on by default once runs exist.
    advanced = st.toggle("Advanced settings", key="train_advanced", value=bool(existing_runs),
                         help="Epochs, learning rate, image size, optimizer, augmentation, regularisation, the tag "
                              "threshold and processes. Off: the model's defaults.")
    # Enter in a number field must not start a run (a second click on Start started another): only the button does
    with st.form("train_form", enter_to_submit=False):
        if not advanced:
            epochs, lr, batch_size, image_size = defaults.epochs, defaults.lr, defaults.batch_size, defaults.image_size
            optimizer, scheduler, augment, augmentation = (defaults.optimizer, defaults.scheduler, defaults.augment,
                                                           defaults.augmentation)
            freeze_epochs, head_solver, tta_flip = defaults.freeze_epochs, defaults.head_solver, bool(defaults.tta_flip)
            class_balanced, weight_decay, label_smoothing = (defaults.class_balanced, defaults.weight_decay,
                                                             defaults.label_smoothing)
            patience, processes = defaults.early_stopping_patience, min(default_processes(), process_limit())
            mixup, cutmix, ema_epochs = defaults.mixup, defaults.cutmix, defaults.ema_epochs
            unfamiliar_percent = defaults.pseudo_unknown_pass * 100
            st.markdown(f"Trains **{model}** on `{dataset.name}` with its defaults: {defaults.schedule()}, "
                        f"{defaults.image_size} px photos. When it has finished, try it on **Predict & tag**.")
        else:
            a, b, c, d = st.columns(4)
            epochs = a.number_input("Epochs", 1, 500, defaults.epochs)
            lr = b.number_input("Learning rate", 1e-6, 1.0, defaults.lr, format="%.5f")
            batch_size = c.number_input("Batch size", 1, 1024, defaults.batch_size)
            image_size = d.number_input("Image size (px)", 32, 512, defaults.image_size, step=16)
            e, f, g, h = st.columns(4)
            optimizer = e.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(defaults.optimizer))
            scheduler = f.selectbox("Scheduler", SCHEDULERS, index=SCHEDULERS.index(defaults.scheduler))
            augment = g.slider("Augmentation strength", 0.0, 1.0, float(defaults.augment), 0.1,
                               help="How far the random crops, flips and colour changes go: 0 shows every photo as it is, "
                                    "1 the strongest changes. More helps small datasets generalise; too much hides the "
                                    "landmark.")
            freeze_epochs = h.number_input("Frozen-backbone epochs", 0, 500, defaults.freeze_epochs,
                                           disabled=not spec.has_frozen_phase, help="Train only the new head first (fast: features are cached).")
            augmentation = st.radio("Augmentation recipe", AUGMENTATIONS, index=AUGMENTATIONS.index(defaults.augmentation),
                                    horizontal=True, help="full: random resized crop, flip and colour jitter, scaled by the "
                                    "strength. crop_flip: random crop and flip only, no resampling (fastest on CPUs). "
                                    "trivial: full, then one random operation per photo (TrivialAugment).")
            i, j, k = st.columns(3)
            head_solver = i.radio("Frozen epochs fit the head by", HEAD_SOLVERS, index=HEAD_SOLVERS.index(defaults.head_solver),
                                  horizontal=True, disabled=not spec.has_frozen_phase,
                                  help="lbfgs: logistic regression solved to the optimum on cached features, one more "
                                       "augmented view each epoch (the default: best on real photos). sgd: minibatch steps.")
            tta_flip = j.checkbox("Flip test-time augmentation", value=bool(defaults.tta_flip),
                                  help="Average the prediction of each photo and its mirror image: twice the inference time.")
            class_balanced = k.checkbox("Class-balanced loss", value=defaults.class_balanced,
                                        help="Weight each class by the inverse of its photo count, for skewed datasets.")
            l, m, n = st.columns(3)
            weight_decay = l.number_input("Weight decay", 0.0, 10.0, float(defaults.weight_decay), format="%.5f",
                                          help="L2 penalty on the weights (decoupled for adamw).")
            label_smoothing = m.number_input("Label smoothing", 0.0, 0.9, float(defaults.label_smoothing), 0.05,
                                             help="Aim for 1 - ε on the true class instead of 1: less over-confident models.")
            patience = n.number_input("Early stopping (epochs without improvement)", 0, 500,
                                      defaults.early_stopping_patience, help="0: off. Stops when validation accuracy has "
                                      "not improved for this many epochs; the best epoch is kept.")
            o, q, r, u = st.columns(4)
            mixup = o.number_input("Mixup", 0.0, 100.0, float(defaults.mixup), 0.1,
                                   help="Blend pairs of training photos and their labels (the Beta distribution's alpha; "
                                        "0: off).")
            cutmix = q.number_input("CutMix", 0.0, 100.0, float(defaults.cutmix), 0.1,
                                    help="Paste a box of one training photo into another, labels shared by area (alpha; "
                                         "0: off). With mixup on too, each batch takes one of the two.")
            ema_epochs = r.number_input("Weight average (epochs)", 0.0, 500.0, float(defaults.ema_epochs), 0.5,
                                        help="Validate, keep and export a moving average of the weights over about the "
                                             "last N epochs (0: the weights as trained).")
            unfamiliar_percent = u.number_input(
                "Unfamiliar photos tagged (%)", 0.5, 50.0, round(defaults.pseudo_unknown_pass * 100, 2), 0.5,
                help="Where the tag threshold sits: this share of the training photos, each judged as if its "
                     "landmark had never been learned (leave-one-class-out), would still be tagged. Lower tags "
                     "fewer photos of places the model does not know (look-alikes), and fewer of the known ones "
                     "from other cameras. Shown: this model's default.")
            if defaults.trains_only_the_head:
                st.caption("On this machine (no GPU) training stops after the frozen epochs: fine-tuning the whole network "
                           "costs minutes per epoch on a CPU and did not pay on real photos. Add epochs to fine-tune.")
            limit = process_limit()
            processes = st.number_input(
                "Training processes", 1, limit, min(default_processes(), limit),
                help=("One process per GPU (data-parallel, NCCL)." if torch.cuda.is_available() else
                      "Data-parallel CPU processes (torchrun, gloo); each gets a share of the cores. The batch size "
                      "stays the global batch, so results match one process's.") + " Each process loads the model.")
        start = st.form_submit_button("Start", type="primary")
    with st.container(border=True):
        st.markdown("**Learning-rate finder**")
        st.caption("Trains a throwaway copy of the model for up to 80 batches while the learning rate grows from 1e-6 "
                   "to 1, and suggests a rate part-way down the loss's longest valley (fastai's lr_find). Uses this model's "
                   "default settings and runs in the background; no run is created.")
        sweep = Sweep.of(str(dataset), model)
        if st.button("Find a learning rate", key="lr_find", disabled=sweep.state == SweepState.RUNNING):
            try:
                Sweep.start(str(dataset), model)
            except (LandmarkError, OSError) as error:
                show_error(error)
        running = sweep.state == SweepState.RUNNING
        st.fragment(sweep_view, run_every=1 if running else None)(sweep, model, running)
    if start:
        config = TrainConfig(data=str(dataset), model=model, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
                             image_size=int(image_size), optimizer=optimizer, scheduler=scheduler, augment=float(augment),
                             augmentation=augmentation, head_solver=head_solver,
                             # left at the model's default it shrinks to fit fewer epochs; a value the user chose is checked
                             freeze_epochs=None if int(freeze_epochs) == defaults.freeze_epochs else int(freeze_epochs),
                             tta_flip=tta_flip, class_balanced=class_balanced, weight_decay=float(weight_decay),
                             label_smoothing=float(label_smoothing), early_stopping_patience=int(patience),
                             mixup=float(mixup), cutmix=float(cutmix), ema_epochs=float(ema_epochs),
                             pseudo_unknown_pass=round(float(unfamiliar_percent) / 100, 4))
        launch_now = (config, int(processes))
        st.session_state["pending_start"] = launch_now
    else:
        launch_now = None
    pending = st.session_state.get("pending_start")
    training_now = [r.run_id for r in existing_runs if is_training(r.path)] if pending else []
    if pending and pending[0].data != str(dataset):
        st.session_state.pop("pending_start")  # asked about another dataset's run: the question is gone
    elif pending and training_now:
        st.warning(f"{', '.join(training_now)} {'is' if len(training_now) == 1 else 'are'} training already: a second "
                   f"run shares the {os.cpu_count()} CPU cores, and both take about twice as long. Start anyway?")
        yes, no = st.columns([1, 6])
        if yes.button("Start anyway", type="primary", key="start_anyway"):
            launch_now = pending
        elif no.button("Don't start", key="start_cancelled"):
            st.session_state.pop("pending_start")
            st.rerun()
        else:
            launch_now = None  # only an answer starts it, never a later rerun
    elif pending and not launch_now:
        st.session_state.pop("pending_start")  # the other run has ended meanwhile: nothing starts unasked
    if launch_now:
        st.session_state.pop("pending_start", None)
        config, processes = launch_now
        try:
            run_dir = start_run(config, processes=processes)
            st.session_state["live_run_select"] = run_dir.name  # the live view follows the new run
            resolved = Run(run_dir).config()
            st.success(f"Started {run_dir.name} ({resolved.schedule()}): it trains in the background, "
                       "so you can leave this page.")
        except LandmarkError as error:
            show_error(error)

runs = list_runs()
if not runs:
    st.info("No runs yet: start one above.")
    st.stop()

ids = [r.run_id for r in runs]
if "renamed_run" in st.session_state:
    st.session_state["live_run_select"] = st.session_state.pop("renamed_run")
if st.session_state.get("live_run_select") not in ids:
    st.session_state["live_run_select"] = next((r.run_id for r in runs if r.state in ACTIVE_STATES), ids[0])
selected = st.selectbox("Run", ids, key="live_run_select")
# The live view refreshes every 2 s only while a process trains it: a page that is still keeps its buttons and
# popovers (Rename, Delete) under the pointer. The table looks for runs started elsewhere (the CLI, another tab)
# every 10 s when nothing trains.
REFRESH_S, IDLE_REFRESH_S = 2, 10


def live_view(run_id: str, refreshing: bool) -> None:
    try:
        run_dir = resolve_run(run_id)
    except LandmarkError as error:
        show_error(error)
        return
    training = is_training(run_dir)
    if refreshing and not training:
        st.rerun(scope="app")  # it has just stopped: draw the page once more, still
    progress = run_progress(run_dir)
    icon = {RunState.QUEUED: "⏳", RunState.RUNNING: "🏃", RunState.FINISHED: "✅", RunState.FAILED: "❌",
            RunState.CANCELLED: "⏹", RunState.INTERRUPTED: "⚠️"}.get(progress.state, "")
    st.progress(progress.fraction, text=f"{icon} {progress.describe(with_error=False)}")
    if progress.state == RunState.FAILED and progress.error:
        st.error(progress.error)
    elif progress.state == RunState.CANCELLED and not progress.stopped_by_request and progress.error:
        st.warning(progress.error)  # stopped by something else than Stop (a signal, Ctrl-C): say what
    buttons = st.columns(6)
    state = progress.state
    if state in ACTIVE_STATES and buttons[0].button("Stop", key=f"stop-{run_id}"):
        request_cancel(run_dir)
        st.toast("Stopping after the current batch…")
    if state in RESUMABLE_STATES and buttons[0].button("Resume", key=f"resume-{run_id}"):
        launch_background(run_dir, resume=True)
        st.rerun(scope="app")  # training again: the live view refreshes
    if not training:
        with buttons[1].popover("Rename", key=f"rename-popover-{run_id}"):  # per run: a fresh, closed one for the next
            new_name = st.text_input("New name", run_id, key=f"rename-{run_id}")
            if st.button("Rename run", key=f"do-rename-{run_id}"):
                try:
                    # the selector exists already in this run: it takes the new name at the top of the next one
                    st.session_state["renamed_run"] = rename_run(run_dir, new_name).name
                    st.rerun(scope="app")
                except (LandmarkError, OSError) as error:  # a file op: the reason, no traceback
                    show_error(error)
        with buttons[2].popover("Delete", key=f"delete-popover-{run_id}"):
            st.write(f"Delete **{run_id}** and everything in it (checkpoints, evaluation, exported model)?")
            if st.button("Delete for good", key=f"do-delete-{run_id}", type="primary"):
                try:
                    delete_run(run_dir)
                    st.rerun(scope="app")
                except (LandmarkError, OSError) as error:  # a file op: the reason, no traceback
                    show_error(error)
    run = Run(run_dir)
    last = (run.epochs or [None])[-1]
    if last:
        m = st.columns(4)
        m[0].metric("train loss", f"{last['train_loss']:.3f}")
        m[1].metric("train accuracy", f"{last['train_acc']:.1%}")
        m[2].metric("val loss", f"{last['val_loss']:.3f}" if last["val_loss"] is not None else "–")
        m[3].metric("val accuracy", f"{last['val_acc']:.1%}" if last["val_acc"] is not None else "–")
    curves = curves_frame([run_dir])
    if not curves.empty:
        left, right = st.columns(2)
        for column, metric in ((left, "loss"), (right, "accuracy")):
            column.altair_chart(alt.Chart(curves[curves["metric"] == metric]).mark_line(point=True).encode(
                # whole epochs and a fixed format: one epoch's single point drew "1.000000"-style axes
                x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
                y=alt.Y("value:Q", title=metric, scale=alt.Scale(domain=[0, 1]) if metric == "accuracy" else alt.Scale(zero=False),
                        axis=alt.Axis(format=".0%" if metric == "accuracy" else ".2f")),
                color=alt.Color("split:N"), tooltip=["epoch", "split", alt.Tooltip("value:Q", format=".3f")]
            ).properties(title=metric, height=260), width="stretch")
    elif not (losses := batch_losses(run_dir)).empty:
        st.altair_chart(alt.Chart(losses).mark_line(point=True).encode(
            x=alt.X("batch:Q", axis=alt.Axis(tickMinStep=1)), y=alt.Y("loss:Q", scale=alt.Scale(zero=False)),
            tooltip=["batch", alt.Tooltip("loss:Q", format=".3f")]).properties(
            title="batch loss (first epoch)", height=220), width="stretch")


selected_trains = is_training(next(r.path for r in runs if r.run_id == selected))  # a vanished run: not training
st.fragment(live_view, run_every=REFRESH_S if selected_trains else None)(selected, selected_trains)


def all_runs(trained: bool) -> None:
    """Refreshed with the live view: a run's state here never lags the progress bar above."""
    runs = list_runs()
    if trained != any(is_training(r.path) for r in runs):
        st.rerun(scope="app")  # training stopped, or started elsewhere: the whole page follows
    st.subheader("All runs")
    rows = []
    for r in runs:
        progress = run_progress(r.path)
        rows.append({"run": r.run_id, "state": progress.label, "model": r.model, "processes": r.processes,
                     "epochs": f"{progress.epoch}/{progress.epochs}", "best val acc": format_percent(r.best_val_acc),
                     "test top-1": format_percent(r.test_acc), "time": format_seconds(progress.elapsed),
                     "error": "" if progress.stopped_by_request else (r.error or "")})
    st.dataframe(pd.DataFrame(rows), hide_index=True)


any_trains = any(is_training(r.path) for r in runs)
st.fragment(all_runs, run_every=REFRESH_S if any_trains else IDLE_REFRESH_S)(any_trains)
