"""A mistyped key gets "did you mean", a key its target does not take is refused at
start-up, and a GPU run on a machine without one says so in one line."""

from __future__ import annotations

import pytest
import torch
from test_configs import composed

from vaelab.accelerators import check_gpus_exist
from vaelab.config_keys import check_target_arguments, target_arguments
from vaelab.errors import one_line
from vaelab.exceptions import ConfigError
from vaelab.schema import validate


def composition_message(override, tmp_path):
    with pytest.raises(Exception) as error:
        composed(override, tmp_path=tmp_path)
    return one_line(error.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.betta=2", "model.betta is not a key of model: did you mean model.beta?"),
        ("trainer.max_epoch=2", "trainer.max_epoch is not a key of trainer: did you mean trainer.max_epochs?"),
        ("likelihood.sigmaa=fixed", "likelihood.sigmaa is not a key of likelihood: did you mean likelihood.sigma?"),
        (
            "model.encoder.hiden=[3]",
            "model.encoder.hiden is not a key of model.encoder: did you mean model.encoder.hidden?",
        ),
        # a key of another group, given without its group
        ("beta=2", "beta is not a key of the config: did you mean model.beta?"),
        ("max_epochs=3", "max_epochs is not a key of the config: did you mean trainer.max_epochs?"),
        # an argument of the target that the shipped config leaves at its default: appending it is right
        (
            "trainer.limit_train_batches=3",
            "lightning.pytorch.Trainer takes it: add it with +trainer.limit_train_batches=3",
        ),
    ],
)
def test_an_unknown_key_gets_the_key_meant_and_no_hint_that_crashes(override, message, tmp_path):
    text = composition_message(override, tmp_path)
    assert text == f"{message}" or text.endswith(message), text
    assert "To append" not in text


def test_a_key_of_nothing_lists_the_keys_there_and_how_to_add_ones_own(tmp_path):
    text = composition_message("zzz=1", tmp_path)
    assert text.startswith("zzz is not a key of the config; its keys are task_name, tags, seed"), text
    assert "hydra," not in text and text.endswith("(to add a key of your own: +zzz=1)")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+model.betta=2", "model.betta is not a setting of vaelab.model.vae.VAE: did you mean model.beta?"),
        (
            "+trainer.max_epoch=2",
            "trainer.max_epoch is not a setting of lightning.pytorch.Trainer: did you mean trainer.max_epochs?",
        ),
        (
            "+model.encoder.zzz=1",
            "model.encoder.zzz is not a setting of vaelab.model.networks.MLPEncoder: it takes activation, hidden",
        ),
    ],
)
def test_an_appended_key_its_target_does_not_take_fails_before_anything_is_built(override, message, tmp_path):
    cfg = composed(override, tmp_path=tmp_path)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert str(error.value).startswith(message), error.value


def test_every_shipped_config_passes_only_arguments_its_targets_take(tmp_path):
    for overrides in (
        [],
        ["model=conv"],
        ["likelihood=bernoulli"],
        ["logger=many"],
        ["experiment=burda_mnist"],
        ["data=image_folder", "data.root=x"],
        ["trainer=ddp_cpu"],
        ["+trainer.limit_train_batches=3"],
    ):
        check_target_arguments(composed(*overrides, tmp_path=tmp_path))


def test_targets_taking_any_keyword_are_not_checked():
    assert target_arguments("lightning.pytorch.loggers.TensorBoardLogger") is None  # **kwargs
    assert target_arguments("no.such.module.Thing") is None  # Hydra reports it when instantiating
    assert "max_epochs" in target_arguments("lightning.pytorch.Trainer")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "trainer.max_epochs=two",
            "trainer.max_epochs='two' is not an integer: must be an integer >= 1 (or -1 for no limit)",
        ),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5 is not an integer"),
        ("model.optimizer.lr=fast", "model.optimizer.lr='fast' is not a number: must be a number > 0"),
        ("model.optimizer.lr=true", "model.optimizer.lr=True is not a number"),
    ],
)
def test_a_value_of_the_wrong_type_is_called_that_not_out_of_range(override, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        validate(composed(override, tmp_path=tmp_path))
    assert str(error.value) == message or str(error.value).startswith(message), error.value


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_a_gpu_asked_of_a_machine_without_one_is_one_line():
    with pytest.raises(ConfigError) as error:
        check_gpus_exist("gpu", 1, cpu_hint="trainer=cpu")
    assert "trainer.accelerator=gpu asks for a GPU, but torch finds none on this machine" in str(error.value)
    assert str(error.value).endswith("run on the CPU with trainer=cpu")
    check_gpus_exist("cpu", 4)  # nothing to check
    check_gpus_exist("auto", 1)
