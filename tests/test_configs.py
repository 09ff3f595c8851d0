"""Every config in conf/ composes, and what it names can be built (without training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from vaelab.build import build_model
from vaelab.config import config_dir, instantiate_dict

CONF = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides: str, tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=False)
    # outside a Hydra run, point the run folder somewhere real
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


def test_config_dir_is_the_checkout_or_packaged_conf():
    assert (CONF / "train.yaml").is_file() and (CONF / "eval.yaml").is_file()


@pytest.mark.parametrize("data", ["digits", "mnist", "fashion_mnist", "cifar10", "image_folder"])
@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("likelihood", options("likelihood"))
def test_data_model_likelihood_combinations_build(data, model, likelihood, tmp_path):
    overrides = [f"data={data}", f"model={model}", f"likelihood={likelihood}"]
    if data == "image_folder":
        overrides.append(f"data.root={tmp_path}")
    cfg = composed(*overrides, tmp_path=tmp_path)
    datamodule = instantiate(cfg.data)
    vae = build_model(cfg, datamodule)
    assert vae.image_shape == datamodule.image_shape


@pytest.mark.parametrize("logger", options("logger"))
def test_loggers_build(logger, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = composed(f"logger={logger}", tmp_path=tmp_path)
    loggers = instantiate_dict(cfg.get("logger"))
    expected = {"none": 0, "many": 3}.get(logger, 1)
    assert len(loggers) == expected


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(experiment, tmp_path):
    cfg = composed(f"experiment={experiment}", tmp_path=tmp_path)
    assert OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_compose(trainer, tmp_path):
    cfg = composed(f"trainer={trainer}", tmp_path=tmp_path)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def hydra_node(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra


@pytest.mark.parametrize("launcher", options("hydra/launcher"))
def test_launcher_configs_compose(launcher):
    node = hydra_node(f"hydra/launcher={launcher}")
    assert node.launcher._target_.startswith("hydra_plugins.")


def test_the_slurm_ddp_launcher_asks_for_one_task_per_device():
    launcher = hydra_node(
        "hydra/launcher=slurm_ddp", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"
    ).launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)


def test_the_optuna_search_space_names_real_keys(tmp_path):
    node = hydra_node("hparams_search=optuna")
    assert "optuna" in node.sweeper._target_ and node.sweeper.direction == "minimize"
    cfg = composed("hparams_search=optuna", tmp_path=tmp_path)
    assert cfg.optimized_metric == "-val/elbo"
    for key, space in node.sweeper.params.items():
        if key == "likelihood":  # a config group: every choice must exist
            choices = space[space.index("(") + 1 : space.rindex(")")].split(",")
            assert {c.strip() for c in choices} <= set(options("likelihood"))
        else:
            assert OmegaConf.select(cfg, key) is not None, key


@pytest.mark.parametrize("likelihood", options("likelihood"))
def test_the_scale_floor_a_diverged_run_is_told_to_raise_is_a_setting(likelihood, tmp_path):
    """NonFiniteLossError names the likelihood's scale floor: it must be a key of that
    likelihood's config (a Bernoulli's logits have no scale, so none is named)."""
    cfg = composed(f"likelihood={likelihood}", tmp_path=tmp_path)
    floor = build_model(cfg, instantiate(cfg.data)).likelihood.scale_floor
    if likelihood in ("bernoulli", "continuous_bernoulli"):
        assert floor is None
    else:
        assert floor is not None and OmegaConf.select(cfg, floor) is not None, floor
