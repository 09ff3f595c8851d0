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
