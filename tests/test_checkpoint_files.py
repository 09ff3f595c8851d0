"""The pieces behind the run-ending guarantees, called directly (the command-line
tests are in test_run_endings.py and test_validation.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vaelab.checkpoints import RunCheckpoint, check_training_left, read_checkpoint
from vaelab.errors import one_line
from vaelab.exceptions import CheckpointError, ConfigError, DatasetFormatError, JobBusyError, UserError
from vaelab.sweeps import JobFolderLock


def test_read_checkpoint_names_the_file_and_what_is_wrong(tmp_path):
    torch.save({"w": torch.randn(32, 32)}, tmp_path / "tensors.pt")
    whole = (tmp_path / "tensors.pt").read_bytes()
    files = {
        "empty.ckpt": b"",
        "truncated.ckpt": whole[: len(whole) // 2],
        "text.ckpt": b"not a checkpoint\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"state_dict": {}}, tmp_path / "lightning.ckpt")
    torch.save({"state_dict": {}, "vaelab_config": {"model": {}}}, tmp_path / "ours.ckpt")
    expected = {
        "missing.ckpt": "no such file",
        "empty.ckpt": "the file is empty",
        "truncated.ckpt": "truncated or damaged",
        "text.ckpt": "not a PyTorch checkpoint",
        "tensors.pt": "not a Lightning checkpoint",
        "lightning.ckpt": "not one written by vaelab-train",
    }
    for name, fragment in expected.items():
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(tmp_path / name)
        assert str(error.value).startswith(str(tmp_path / name)) and fragment in str(error.value)
        assert "\n" not in str(error.value)
    assert read_checkpoint(tmp_path / "ours.ckpt")["vaelab_config"] == {"model": {}}


def test_only_typed_errors_are_one_liners():
    assert one_line(ConfigError("model.beta=-1 is not allowed")) == "model.beta=-1 is not allowed"
    assert (
        one_line(DatasetFormatError("/data/x.gz", "not a complete gzip file")) == "/data/x.gz: not a complete gzip file"
    )
    assert one_line(ValueError("a bug")) is None
    assert one_line(FileNotFoundError("a bug too")) is None
    assert all(issubclass(e, UserError) for e in (ConfigError, CheckpointError, DatasetFormatError, JobBusyError))


def test_nothing_left_to_train_is_refused_with_how_to_train_longer():
    checkpoint = {"global_step": 30, "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 10}}}}}
    with pytest.raises(ConfigError, match=r"already trained 10 epochs .*trainer.max_epochs=20"):
        check_training_left(checkpoint, SimpleNamespace(max_epochs=10, max_steps=-1), "last.ckpt")
    with pytest.raises(ConfigError, match=r"already trained 30 steps and trainer.max_steps=30"):
        check_training_left(checkpoint, SimpleNamespace(max_epochs=100, max_steps=30), "last.ckpt")
    check_training_left(checkpoint, SimpleNamespace(max_epochs=11, max_steps=-1), "last.ckpt")


def test_a_job_folder_is_held_by_one_process_at_a_time(tmp_path):
    with JobFolderLock(tmp_path / "job"):
        with pytest.raises(JobBusyError, match="is being trained by another process"):
            with JobFolderLock(tmp_path / "job"):
                pass
    with JobFolderLock(tmp_path / "job"):  # released with the first holder
        pass


def test_a_resume_into_a_new_folder_carries_the_best_checkpoint_and_its_score(tmp_path):
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    old.mkdir(parents=True)
    (old / "best_epoch012.ckpt").write_bytes(b"weights")
    score = torch.tensor(-23.95)
    state = {
        "dirpath": str(old),
        "monitor": "val/elbo",
        "best_model_path": str(old / "best_epoch012.ckpt"),
        "best_model_score": score,
        "best_k_models": {str(old / "best_epoch012.ckpt"): score},
        "kth_best_model_path": str(old / "best_epoch012.ckpt"),
    }
    best = RunCheckpoint(dirpath=new, monitor="val/elbo", mode="max", save_top_k=1)
    best.load_state_dict(state)
    assert best.best_model_path == str(new / "best_epoch012.ckpt")
    assert (new / "best_epoch012.ckpt").read_bytes() == b"weights"
    assert float(best.best_model_score) == pytest.approx(-23.95)
    # a worse epoch after the resume is not "top 1"; a better one is
    trainer = SimpleNamespace(
        global_step=1, strategy=SimpleNamespace(reduce_boolean_decision=lambda decision: decision)
    )
    assert not best.check_monitor_top_k(trainer, torch.tensor(-24.03))
    assert best.check_monitor_top_k(trainer, torch.tensor(-23.90))
    # the last-state checkpoint starts afresh in the new folder
    last = RunCheckpoint(dirpath=new, monitor=None, filename="last")
    last.load_state_dict({**state, "monitor": None})
    assert last.best_model_path == ""
