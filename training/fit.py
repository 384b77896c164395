"""Fitting a run's members: one seed each, epochs recorded on the run as they end, the epoch
that holds up best under the stressed validation kept, the members joined into one model."""

from __future__ import annotations

from typing import Any, Protocol

import keras
import numpy as np

from core.db import Database
from core.training_runs import TrainingParams, record_epoch
from training.augment import augmenter
from training.batchnorm import recalibrate_batch_norm
from training.data import Arrays, class_weights, with_threshold_copies
from training.datasets import Splits
from training.evaluate import auroc, predict
from training.model import averaged, compile_model, make_model
from training.stress import mixed


class Progress(Protocol):
    """What a front end (the CLI's progress bar) hears while a run trains."""

    def started(self, epochs: int, steps_per_epoch: int) -> None: ...

    def step(self) -> None: ...

    def epoch_done(self, epoch: int, logs: dict[str, float]) -> None: ...


def train_members(
    db: Database,
    run_id: int,
    params: TrainingParams,
    splits: Splits,
    progress: Progress | None,
    mixed_precision: bool,
) -> tuple[Any, list[dict[str, float]], list[dict[str, Any]]]:
    """Train the ensemble's members one after the other (one seed each), recalibrate their
    BatchNorm statistics if asked, and join them (and the test-time views) into one model."""
    members, history, selection = [], [], []
    for member in range(params.ensemble):
        network, recorder = _fit(db, run_id, params, splits, progress, member, mixed_precision)
        if params.batch_norm_recalibration:
            recalibrate_batch_norm(network, splits.train.x, params.batch_size, params.seed + member)
        members.append(network)
        history += recorder.history
        selection.append(
            {
                "member": member,
                "seed": params.seed + member,
                "epoch": recorder.best_epoch,
                "val_stressed_auroc": recorder.best_score,
            }
        )
    if len(members) == 1 and params.tta_views == 1:
        return members[0], history, selection
    return averaged(members, params.tta_views), history, selection


def _fit(
    db: Database,
    run_id: int,
    params: TrainingParams,
    splits: Splits,
    progress: Progress | None,
    member: int = 0,
    mixed_precision: bool = False,
) -> tuple[Any, EpochRecorder]:
    import tensorflow as tf

    seed = params.seed + member
    keras.utils.set_random_seed(seed)
    # float16 compute on GPUs; the saved model keeps the policy, so scoring uses it too.
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    weights = None if params.weights == "none" else params.weights
    network = make_model(params.architecture, params.input_size, weights)
    train = splits.train
    if params.augment in ("threshold", "both"):
        train = with_threshold_copies(train)
    steps = int(np.ceil(len(train.y) / params.batch_size))
    cosine = params.optimizer.endswith("cosine")
    compile_model(
        network,
        params.optimizer,
        params.label_smoothing,
        total_steps=steps * params.epochs,
        warmup_steps=steps if cosine and params.epochs > 1 else 0,
    )
    dataset = tf.data.Dataset.from_tensor_slices((train.x, train.y)).shuffle(
        len(train.y), seed=seed, reshuffle_each_iteration=True
    )
    dataset = dataset.batch(params.batch_size).map(augmenter(params.augment, seed)).prefetch(2)
    if progress is not None and member == 0:
        progress.started(params.total_epochs, steps)
    selection_set = mixed(splits.validation_stressed)
    recorder = EpochRecorder(db, run_id, progress, selection_set, member * params.epochs)
    validation = splits.validation
    network.fit(
        dataset,
        epochs=params.epochs,
        validation_data=(validation.x.astype(np.float32), validation.y),
        class_weight=class_weights(train.y),
        callbacks=[recorder],
        shuffle=False,  # the dataset shuffles itself
        verbose=0,
    )
    return network, recorder


class EpochRecorder(keras.callbacks.Callback):
    """Writes each epoch's metrics to the run, feeds the progress display, and keeps the
    weights of the epoch with the best AUROC on the stressed validation images (each under
    one change), restored when training ends: the epoch is chosen for holding up under the
    shift, not for the clean validation alone."""

    def __init__(
        self,
        db: Database,
        run_id: int,
        progress: Progress | None,
        selection_set: Arrays,
        epoch_offset: int = 0,
    ) -> None:
        super().__init__()
        self.db, self.run_id, self.progress = db, run_id, progress
        self.selection_set, self.epoch_offset = selection_set, epoch_offset
        self.history: list[dict[str, float]] = []
        self.best_epoch, self.best_score = 0, -1.0
        self._best_weights: list[Any] | None = None

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if self.progress is not None:
            self.progress.step()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        values = {key: float(value) for key, value in (logs or {}).items()}
        scores = predict(self.model, self.selection_set)
        values["val_stressed_auroc"] = auroc(self.selection_set.y, scores) or 0.0
        number = self.epoch_offset + epoch + 1
        self.history.append({"epoch": number, **values})
        if values["val_stressed_auroc"] > self.best_score:
            self.best_epoch, self.best_score = epoch + 1, values["val_stressed_auroc"]
            self._best_weights = self.model.get_weights()
        with self.db.session() as session:
            record_epoch(session, self.run_id, number, values)
        if self.progress is not None:
            self.progress.epoch_done(number, values)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        # Validation may choose the epoch; the holdout never chooses anything.
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)
