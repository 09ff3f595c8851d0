"""Bad values fail at start-up with one line naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from test_configs import composed

from vaelab.schema import ConfigError, validate


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.beta=-1", "model.beta=-1.0 is not allowed: must be a number >= 0"),
        ("model.latent_dim=0", "model.latent_dim=0 is not allowed: must be an integer >= 1"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0 is not allowed: must be a number > 0"),
        ("model.free_bits=-0.5", "model.free_bits=-0.5 is not allowed"),
        ("likelihood.sigma_value=0", "likelihood.sigma_value=0.0 is not allowed: must be a number > 0"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5 is not allowed: must be a number in [0, 1)"),
        ("likelihood.log_sigma_min=3", "likelihood.log_sigma_min=3.0 must be below likelihood.log_sigma_max=2.0"),
    ],
)
def test_out_of_range_values_are_one_line_errors(override, message, tmp_path):
    cfg = composed(override, tmp_path=tmp_path)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("likelihood.sigma=gaussian", "expected one of [fixed, learned_shared, learned_pixel, predicted, optimal]"),
        ("likelihood.optimal_shape=row", "expected one of [shared, pixel]"),
        ("model.beta=abc", "could not be converted to Float"),
        ("model.latent_dim=2.5", "could not be converted to Integer"),
    ],
)
def test_wrong_types_and_choices_fail_while_composing(override, fragment, tmp_path):
    with pytest.raises(Exception) as error:
        composed(override, tmp_path=tmp_path)
    assert fragment in f"{error.value} {error.value.__cause__}"


def test_the_defaults_are_valid(tmp_path):
    validate(composed(tmp_path=tmp_path))
    validate(composed("likelihood=bernoulli", "likelihood.binarize=static", tmp_path=tmp_path))


MALFORMED = [
    (["model.beta=-1"], "model.beta=-1.0 is not allowed: must be a number >= 0"),
    (["model.beta=abc"], "could not be converted to Float"),
    (["model.latent_dim=0"], "model.latent_dim=0 is not allowed"),
    (["model.latent_dim=2.5"], "could not be converted to Integer"),
    (["likelihood.sigma=gaussian"], "expected one of [fixed, learned_shared, learned_pixel, predicted, optimal]"),
    (["likelihood=poisson"], "Could not find 'likelihood/poisson'"),
    (["model.optimizer.lr=0"], "model.optimizer.lr=0 is not allowed: must be a number > 0"),
    (["model.optimizer.lr=-0.001"], "model.optimizer.lr=-0.001 is not allowed"),
    (["likelihood.optimal_shape=row"], "expected one of [shared, pixel]"),
    (["likelihood=bernoulli", "likelihood.binarize=sometimes"], "expected one of [dynamic, static, threshold, none]"),
    (["likelihood=bernoulli", "likelihood.binarize=none"], "likelihood.binarize=none needs binary data"),
    (["model=conv", "model.encoder.channels=[8,8,8,8]"], "needs image height and width divisible by 16"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5 is not allowed"),
    (["data.batch_size=0"], "data.batch_size=0 is not allowed"),
    (
        ["likelihood.sigma=fixed", "likelihood.sigma_value=0"],
        "likelihood.sigma_value=0.0 is not allowed: must be a number > 0",
    ),
    (["likelihood.log_sigma_min=5"], "must be below likelihood.log_sigma_max"),
    (["model.free_bits=-1"], "model.free_bits=-1.0 is not allowed"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed"),
    (["model.encoder.activation=Sigmoidx"], "is not a torch.nn activation"),
    (["data=image_folder"], "data.root must be set"),
    (["model.betta=1"], "model.betta is not a key of model: did you mean model.beta?"),
    (["+model.betta=1"], "model.betta is not a setting of vaelab.model.vae.VAE: did you mean model.beta?"),
    (["trainer.max_epochs=two"], "trainer.max_epochs='two' is not an integer: must be an integer >= 1"),
    (["data=mnist", "data.root={tmp}/nowhere"], "set data.download=true to fetch them"),
    (["data=mnist", "data.root={tmp}/corrupt"], "t10k-labels-idx1-ubyte"),
    (["data=image_folder", "data.root={tmp}/not_images"], "broken.png"),
    (["ckpt_path={tmp}/missing.ckpt"], "missing.ckpt"),
    (["ckpt_path={tmp}/truncated.ckpt"], "truncated.ckpt: ckpt_path: truncated or damaged"),
    (["ckpt_path={tmp}/lightning.ckpt"], "a Lightning checkpoint, but not one written by vaelab-train"),
    (["--config-dir", "{tmp}/conf", "experiment=broken"], "broken.yaml: not valid YAML at line 3, column 1"),
    # Lightning would fail inside the Trainer with a traceback, after the run folder exists
    *(
        []
        if torch.cuda.is_available()
        else [(["trainer=gpu"], "trainer.accelerator=gpu asks for a GPU, but torch finds none")]
    ),
]

#: checkpoints handed to vaelab-eval (both commands read them with vaelab.checkpoints.read_checkpoint)
MALFORMED_FOR_EVAL = [
    (
        [],
        "ckpt_path must be set: the checkpoint to evaluate, e.g. a training run's: vaelab-eval ckpt_path=logs/train/runs/",
    ),
    (["ckpt_path={tmp}/missing.ckpt"], "missing.ckpt: ckpt_path: no such file"),
    (["ckpt_path={tmp}/empty.ckpt"], "empty.ckpt: ckpt_path: the file is empty"),
    (["ckpt_path={tmp}/text.ckpt"], "text.ckpt: ckpt_path: not a PyTorch checkpoint"),
    (["ckpt_path={tmp}/tensors.ckpt"], "tensors.ckpt: ckpt_path: a PyTorch file, but not a Lightning checkpoint"),
    (["ckpt_path={tmp}/checkpoints"], "checkpoints: ckpt_path: a folder, not a checkpoint file"),
]


def write_files_that_are_not_what_they_claim(tmp_path):
    """Checkpoints, data and a config that a user might hand over by mistake."""
    import torch
    from test_data import write_mnist

    write_mnist(tmp_path / "corrupt", n_train=8, n_test=4)
    labels = tmp_path / "corrupt" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-7])  # truncated download
    (tmp_path / "not_images").mkdir()
    (tmp_path / "not_images" / "broken.png").write_text("not a png")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("epoch 3, val -24.0\n")
    torch.save({"weights": torch.randn(64, 64)}, tmp_path / "tensors.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, tmp_path / "lightning.ckpt")
    whole = (tmp_path / "tensors.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "broken.yaml").write_text("model:\n  beta: [1,\n")


def one_line_failures(command, cases, tmp_path):
    """The cases that did not end with exit code 2 and one ``error:`` line. They run two
    at a time (each in a run folder of its own): most of each is Python start-up."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import run_cli

    def attempt(numbered):
        i, (overrides, fragment) = numbered
        args = [o.format(tmp=tmp_path) for o in overrides]
        proc = run_cli(command, *args, f"hydra.run.dir={tmp_path}/runs/{command}-{i}", cwd=tmp_path, check=False)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        ok = (
            proc.returncode == 2
            and lines
            and lines[-1].startswith("error: ")
            and fragment in lines[-1]
            and "Traceback" not in proc.stderr
        )
        return None if ok else f"{command} {args}: exit {proc.returncode}\n{proc.stderr[-1500:]}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [failure for failure in pool.map(attempt, enumerate(cases)) if failure]


@pytest.mark.slow
def test_malformed_commands_exit_nonzero_with_one_line_and_leave_nothing(tmp_path):
    write_files_that_are_not_what_they_claim(tmp_path)
    assert len(MALFORMED) >= 28
    failures = one_line_failures(
        "vaelab-train", [(o + ["trainer.enable_progress_bar=false"], f) for o, f in MALFORMED], tmp_path
    )
    failures += one_line_failures("vaelab-eval", MALFORMED_FOR_EVAL, tmp_path)
    assert not failures, "\n\n".join(failures)
    leftovers = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()] if (tmp_path / "runs").exists() else []
    assert not leftovers, leftovers


@pytest.mark.slow
def test_a_bug_keeps_its_traceback(tmp_path):
    """Only vaelab's typed errors are one-liners: a ValueError from a bug is not the user's."""
    import subprocess
    import sys

    code = (
        "import sys, vaelab.train as train, vaelab.training as training\n"
        "def build_model(*args, **kwargs):\n"
        "    raise ValueError('an internal invariant broke')\n"
        "training.build_model = build_model\n"
        "sys.argv = ['vaelab-train', 'debug=fast', 'trainer.enable_progress_bar=false']\n"
        "train.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode not in (0, 2)
    assert "Traceback" in proc.stderr and "ValueError: an internal invariant broke" in proc.stderr
