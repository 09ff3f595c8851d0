"""Bad values fail at start-up with one line naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest
from test_configs import composed

from vaelab.schema import ConfigError, validate


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.beta=-1", "model.beta=-1.0 is not allowed: must be >= 0"),
        ("model.latent_dim=0", "model.latent_dim=0 is not allowed: must be an integer >= 1"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0 is not allowed: must be > 0"),
        ("model.free_bits=-0.5", "model.free_bits=-0.5 is not allowed"),
        ("likelihood.sigma_value=0", "likelihood.sigma_value=0.0 is not allowed: must be > 0"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5 is not allowed: must be in [0, 1)"),
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
    (["model.beta=-1"], "model.beta=-1.0 is not allowed: must be >= 0"),
    (["model.beta=abc"], "could not be converted to Float"),
    (["model.latent_dim=0"], "model.latent_dim=0 is not allowed"),
    (["model.latent_dim=2.5"], "could not be converted to Integer"),
    (["likelihood.sigma=gaussian"], "expected one of [fixed, learned_shared, learned_pixel, predicted, optimal]"),
    (["likelihood=poisson"], "Could not find 'likelihood/poisson'"),
    (["model.optimizer.lr=0"], "model.optimizer.lr=0 is not allowed: must be > 0"),
    (["model.optimizer.lr=-0.001"], "model.optimizer.lr=-0.001 is not allowed"),
    (["likelihood.optimal_shape=row"], "expected one of [shared, pixel]"),
    (["likelihood=bernoulli", "likelihood.binarize=sometimes"], "expected one of [dynamic, static, threshold, none]"),
    (["likelihood=bernoulli", "likelihood.binarize=none"], "likelihood.binarize=none needs binary data"),
    (["model=conv", "model.encoder.channels=[8,8,8,8]"], "needs image height and width divisible by 16"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5 is not allowed"),
    (["data.batch_size=0"], "data.batch_size=0 is not allowed"),
    (["likelihood.sigma=fixed", "likelihood.sigma_value=0"], "likelihood.sigma_value=0.0 is not allowed: must be > 0"),
    (["likelihood.log_sigma_min=5"], "must be below likelihood.log_sigma_max"),
    (["model.free_bits=-1"], "model.free_bits=-1.0 is not allowed"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed"),
    (["model.encoder.activation=Sigmoidx"], "is not a torch.nn activation"),
    (["data=image_folder"], "data.root must be set"),
    (["model.betta=1"], "Key 'betta' not in"),
    (["data=mnist", "data.root={tmp}/nowhere"], "set data.download=true to fetch them"),
    (["data=mnist", "data.root={tmp}/corrupt"], "t10k-labels-idx1-ubyte"),
    (["data=image_folder", "data.root={tmp}/not_images"], "broken.png"),
    (["ckpt_path={tmp}/missing.ckpt"], "missing.ckpt"),
]


@pytest.mark.slow
def test_malformed_commands_exit_nonzero_with_one_line_and_leave_nothing(tmp_path):
    from conftest import run_cli
    from test_data import write_mnist

    write_mnist(tmp_path / "corrupt", n_train=8, n_test=4)
    labels = tmp_path / "corrupt" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-7])  # truncated download
    (tmp_path / "not_images").mkdir()
    (tmp_path / "not_images" / "broken.png").write_text("not a png")
    assert len(MALFORMED) >= 20
    failures = []
    for overrides, fragment in MALFORMED:
        args = [o.format(tmp=tmp_path) for o in overrides]
        proc = run_cli("vaelab-train", *args, "trainer.enable_progress_bar=false", cwd=tmp_path, check=False)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        ok = (
            proc.returncode != 0
            and lines
            and lines[-1].startswith("error: ")
            and fragment in lines[-1]
            and "Traceback" not in proc.stderr
        )
        if not ok:
            failures.append(f"{args}: exit {proc.returncode}\n{proc.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    leftovers = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()] if (tmp_path / "logs").exists() else []
    assert not leftovers, leftovers
