"""A run's checkpoints: the best and the last state, kept right however the run ends.

Lightning's ``ModelCheckpoint`` with ``save_last=True`` writes last.ckpt only when it
also writes a new best one, so last.ckpt of a run whose final epochs were not its best
is an older state; and resuming into a new run folder forgets the best score, so the
first resumed epoch becomes "best" however bad it is. vaelab therefore keeps two
:class:`RunCheckpoint` callbacks (conf/callbacks/default.yaml): one for the best
validation score, one (``monitor: null``) that writes ``last.ckpt`` at the end of
every epoch; and a resumed run brings the best checkpoint of the earlier folder along.

A run that stops where no validation ran (``trainer.max_steps`` inside an epoch,
``trainer.max_time``, ``check_val_every_n_epoch`` beyond the last epoch) is validated
by :func:`validate_where_training_stopped`, so every run has a validation score and
a best checkpoint.

:func:`read_checkpoint` checks a checkpoint file a user hands over before anything
trains on it, so that a missing, truncated or foreign file is one clear line.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from vaelab.exceptions import CheckpointError, ConfigError

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that carries the best checkpoints across a resume
    into another folder: they are copied into this run's folder, with their scores,
    so the best state of the whole training history is the one tested."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            super().load_state_dict(state_dict)
            return
        if self.monitor is None:
            return  # the last-state checkpoint: this run writes its own last.ckpt
        kept = {}
        for old_path, score in (state_dict.get("best_k_models") or {}).items():
            if not Path(old_path).is_file():
                log.warning(
                    "The earlier run's checkpoint %s is gone; it cannot be tested as a best candidate.", old_path
                )
                continue
            new_path = str(Path(self.dirpath) / Path(old_path).name)
            if rank_zero_only.rank == 0:
                Path(self.dirpath).mkdir(parents=True, exist_ok=True)
                shutil.copy2(old_path, new_path)
            kept[new_path] = score
        if not kept:
            return
        self.best_k_models = kept
        pick = min if self.mode == "min" else max
        self.best_model_path = pick(kept, key=lambda p: float(kept[p]))
        self.best_model_score = kept[self.best_model_path]
        worst = max if self.mode == "min" else min
        self.kth_best_model_path = worst(kept, key=lambda p: float(kept[p]))
        self.kth_value = kept[self.kth_best_model_path]
        log.info(
            "Resumed with the earlier run's best checkpoint (%s=%.4g), copied to %s",
            self.monitor,
            float(self.best_model_score),
            self.best_model_path,
        )

    def save_validated_state(self, trainer: pl.Trainer) -> None:
        """Save after a validation that ran outside the fit loop (see module docstring)."""
        if trainer.fast_dev_run:
            return
        candidates = self._monitor_candidates(trainer)
        # after fit, trainer.current_epoch counts the epochs run; the file names the
        # (last, perhaps partial) epoch these weights were trained in, as in the fit loop
        last_epoch = max(0, trainer.fit_loop.epoch_progress.current.processed - 1)
        candidates["epoch"] = torch.tensor(last_epoch)
        self._save_topk_checkpoint(trainer, candidates)


def last_state_path(trainer: pl.Trainer) -> str | None:
    """The file holding the latest saved state of this run (last.ckpt), else None."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            path = callback.last_model_path or (callback.best_model_path if callback.monitor is None else "")
            if path:
                return path
    return None


def validate_where_training_stopped(trainer: pl.Trainer, model: pl.LightningModule, datamodule: Any) -> bool:
    """Validate the final weights if the fit loop stopped without validating them, and
    let the checkpoint callbacks save that state; True if it validated."""
    if not trainer.enable_validation or trainer.global_step == 0:
        return False
    if getattr(model, "validated_at_step", None) == trainer.global_step:
        return False
    trainer.validate(model, datamodule=datamodule, verbose=False)
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, RunCheckpoint):
            callback.save_validated_state(trainer)
    return True


def read_checkpoint(path: str | Path, what: str = "ckpt_path") -> dict[str, Any]:
    """The contents of a checkpoint written by vaelab-train, or a :class:`CheckpointError`
    that names the file and what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, f"{what}: no such file")
    if path.is_dir():
        raise CheckpointError(path, f"{what}: a folder, not a checkpoint file (look inside for checkpoints/*.ckpt)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, f"{what}: the file is empty")
    try:
        # our checkpoints hold containers, tensors and the hyperparameters' plain values
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as error:
        problem = (
            "truncated or damaged" if zipfile.is_zipfile(path) or _starts_like_zip(path) else "not a PyTorch checkpoint"
        )
        raise CheckpointError(
            path, f"{what}: {problem} ({size} bytes; {type(error).__name__}: {_first_line(error)})"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(path, f"{what}: a PyTorch file, but not a Lightning checkpoint (it holds no state_dict)")
    if "vaelab_config" not in checkpoint:
        raise CheckpointError(
            path, f"{what}: a Lightning checkpoint, but not one written by vaelab-train (it holds no vaelab_config)"
        )
    return checkpoint


def check_weights_fit(checkpoint: dict[str, Any], model: torch.nn.Module, path: str | Path) -> None:
    """A checkpoint of another model (another network, latent size or likelihood) is
    one line naming the first difference, not Lightning's page of missing keys."""
    ours = model.state_dict()
    theirs = checkpoint["state_dict"]
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    shapes = [k for k in sorted(set(ours) & set(theirs)) if tuple(ours[k].shape) != tuple(theirs[k].shape)]
    if not (missing or extra or shapes):
        return
    if shapes:
        key = shapes[0]
        first = f"{key} is {tuple(theirs[key].shape)} there but {tuple(ours[key].shape)} here"
    else:
        first = f"{'it lacks ' + missing[0] if missing else 'it has ' + extra[0] + ', which this model lacks'}"
    trained = checkpoint.get("vaelab_config", {})
    encoder = (trained.get("model", {}).get("encoder") or {}).get("_target_", "?").rsplit(".", 1)[-1]
    likelihood = trained.get("likelihood", {}).get("_target_", "?").rsplit(".", 1)[-1]
    raise CheckpointError(
        path,
        f"holds a different model than this config builds ({first}; {len(missing) + len(extra) + len(shapes)} "
        f"differences). It was trained with encoder {encoder} and {likelihood}: resume with the model and "
        "likelihood settings it was trained with",
    )


def check_training_left(checkpoint: dict[str, Any], trainer: pl.Trainer, path: str | Path) -> None:
    """Resuming from a checkpoint that already reached ``max_epochs`` or ``max_steps``
    would train nothing: say so, and how to train longer."""
    epochs_done = _completed_epochs(checkpoint)
    steps_done = int(checkpoint.get("global_step", 0))
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    if max_steps is not None and max_steps >= 0 and steps_done >= max_steps:
        raise ConfigError(
            f"ckpt_path={path} has already trained {steps_done} steps and trainer.max_steps={max_steps}: nothing is "
            f"left to train. To train longer, raise trainer.max_steps (e.g. trainer.max_steps={2 * max(steps_done, 1)})"
        )
    if max_epochs is not None and max_epochs >= 0 and epochs_done >= max_epochs:
        raise ConfigError(
            f"ckpt_path={path} has already trained {epochs_done} epochs ({steps_done} steps) and "
            f"trainer.max_epochs={max_epochs}: nothing is left to train. To train longer, raise trainer.max_epochs "
            f"(e.g. trainer.max_epochs={2 * max(epochs_done, 1)}); to test it, use vaelab-eval ckpt_path={path}"
        )


def _completed_epochs(checkpoint: dict[str, Any]) -> int:
    """Epochs fully trained when the checkpoint was written (Lightning's fit-loop record)."""
    try:
        progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
        return int(progress["processed"])
    except (KeyError, TypeError):
        return int(checkpoint.get("epoch", 0))


def _starts_like_zip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else ""
