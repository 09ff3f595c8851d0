"""Every default, choice and range has one home (vaelab.settings), so copies cannot drift.

A constructor's default is its schema field's, a config in conf/ states only what it
changes, each choice list is its enum, and a constructor's range check says what
``validate`` says for the same value.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object
from omegaconf import OmegaConf, open_dict

from vaelab import schema, settings
from vaelab.config import config_dir
from vaelab.data import ImageDataModule, binarize
from vaelab.exceptions import ConfigError
from vaelab.model import likelihoods
from vaelab.model.likelihoods import GaussianLikelihood
from vaelab.model.vae import VAE

CONF = Path(config_dir())
SCHEMAS = [
    settings.ModelSchema,
    settings.GaussianLikelihoodSchema,
    settings.BernoulliLikelihoodSchema,
    settings.GaussianLowRankLikelihoodSchema,
    settings.DiscretizedLogisticLikelihoodSchema,
    settings.ContinuousBernoulliLikelihoodSchema,
    settings.DataSchema,
]
#: every likelihood's schema, by the class it builds
LIKELIHOOD_SCHEMAS = {node._target_: node for node in SCHEMAS if "likelihoods" in node._target_}
#: schema fields whose constructor argument is required: a config must set them
REQUIRED = {"encoder", "decoder", "source"}
#: values a config states although they are the default: the config is named for them
PINNED = {("likelihood/gaussian_learned_shared.yaml", "sigma")}


def plain(value):
    return getattr(value, "value", value)


def composed(config: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config, overrides=list(overrides))


@pytest.mark.parametrize("node", SCHEMAS, ids=lambda node: node.__name__)
def test_constructor_defaults_are_the_schema_defaults(node):
    parameters = inspect.signature(get_object(node._target_)).parameters
    for field in dataclasses.fields(node):
        if field.name == "_target_":
            continue
        assert field.name in parameters, f"{node.__name__}.{field.name} is not an argument of {node._target_}"
        default = parameters[field.name].default
        if default is inspect.Parameter.empty:
            assert field.name in REQUIRED and field.default is None, field.name
        else:
            assert plain(default) == plain(field.default), f"{node._target_}({field.name}=...) has its own default"
    names = {field.name for field in dataclasses.fields(node)}
    for name, parameter in parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            assert name in names, f"{node._target_}'s default of {name} has no schema field"


def test_the_targets_are_the_classes():
    assert get_object(settings.ModelSchema._target_) is VAE
    assert get_object(settings.GaussianLikelihoodSchema._target_) is GaussianLikelihood
    assert get_object(settings.BernoulliLikelihoodSchema._target_) is likelihoods.BernoulliLikelihood
    assert get_object(settings.GaussianLowRankLikelihoodSchema._target_) is likelihoods.GaussianLowRankLikelihood
    assert (
        get_object(settings.DiscretizedLogisticLikelihoodSchema._target_) is likelihoods.DiscretizedLogisticLikelihood
    )
    assert (
        get_object(settings.ContinuousBernoulliLikelihoodSchema._target_) is likelihoods.ContinuousBernoulliLikelihood
    )
    # every likelihood class has its schema, every schema its config file and ConfigStore entry
    classes = {
        f"vaelab.model.likelihoods.{name}"
        for name, obj in vars(likelihoods).items()
        if isinstance(obj, type)
        and issubclass(obj, likelihoods.Likelihood)
        and obj not in (likelihoods.Likelihood, likelihoods.DequantizedDensity)  # the bases
    }
    assert classes == set(LIKELIHOOD_SCHEMAS)
    assert {
        composed("train", f"likelihood={Path(p).stem}").likelihood._target_
        for p in (CONF / "likelihood").glob("*.yaml")
    } == classes
    assert get_object(settings.DataSchema._target_) is ImageDataModule


def config_files() -> list[str]:
    return sorted(
        str(p.relative_to(CONF)) for group in ("model", "likelihood", "data") for p in (CONF / group).glob("*.yaml")
    )


@pytest.mark.parametrize("name", config_files())
def test_configs_state_only_what_they_change(name):
    """A value a config restates beside its schema's default is a second home that
    drifts; the composed config (schema underneath) has it anyway."""
    group = name.split("/")[0]
    cfg = composed(
        "train", f"{group}={Path(name).stem}", *(["data.root=/tmp"] if name == "data/image_folder.yaml" else [])
    )
    node = {"model": settings.ModelSchema, "data": settings.DataSchema}.get(group)
    if node is None:
        node = LIKELIHOOD_SCHEMAS[cfg.likelihood._target_]
    raw = OmegaConf.load(CONF / name)
    for key in raw:
        if key == "defaults":
            continue
        assert key in {f.name for f in dataclasses.fields(node)}, f"{name}: {key} is not a key of {node.__name__}"
        value = OmegaConf.to_container(raw)[key]
        if (name, key) not in PINNED:
            assert value != plain(getattr(node, key)), (
                f"{name} restates the default {key}: {value!r} (vaelab.settings.{node.__name__})"
            )


def test_pinned_values_are_what_their_config_is_named_for():
    for name, key in PINNED:
        assert Path(name).stem.endswith(str(OmegaConf.load(CONF / name)[key]))


def test_values_repeated_across_configs_agree():
    """What each model config or each data config must state alike (no shared base file
    holds it): the same everywhere, so an edit to one cannot leave the others behind."""
    models = [OmegaConf.load(CONF / "model" / f"{m}.yaml") for m in ("mlp", "conv")]
    for key in ("test_iw_samples", "optimizer"):
        assert len({OmegaConf.to_yaml(OmegaConf.create({key: m[key]})) for m in models}) == 1, key
    datas = [OmegaConf.load(p) for p in sorted((CONF / "data").glob("*.yaml"))]
    for key in ("seed", "binarize"):
        assert len({str(d._get_node(key)._value()) for d in datas}) == 1, key


def test_eval_splits_the_bound_into_the_training_default_chunks():
    cfg = composed("eval", "ckpt_path=x")
    default = inspect.signature(VAE).parameters["iw_chunk_elements"].default
    assert cfg.iw_chunk_elements == settings.ModelSchema.iw_chunk_elements == default == 2**22
    assert composed("eval", "ckpt_path=x", "iw_chunk_elements=4096").iw_chunk_elements == 4096


def test_each_choice_list_is_its_enum():
    assert likelihoods.SIGMA_MODES == settings.choices(settings.SigmaMode)
    assert likelihoods.OPTIMAL_SHAPES == settings.choices(settings.OptimalShape)
    assert likelihoods.BINARIZE_MODES == settings.choices(settings.Binarize)
    assert binarize.BINARIZE_MODES == (None, *settings.choices(settings.Binarize))
    hints = typing.get_type_hints(settings.GaussianLikelihoodSchema)
    assert hints["sigma"] is settings.SigmaMode and hints["optimal_shape"] is settings.OptimalShape
    assert typing.get_type_hints(settings.BernoulliLikelihoodSchema)["binarize"] is settings.Binarize
    # the configs' comments that list the choices list them all
    gaussian = (CONF / "likelihood" / "gaussian.yaml").read_text()
    listed = re.search(r"#\s+sigma\s+([\w |]+)\n", gaussian).group(1)
    assert tuple(c.strip() for c in listed.split("|")) == settings.choices(settings.SigmaMode)
    bernoulli = (CONF / "likelihood" / "bernoulli.yaml").read_text()
    assert all(f"{mode}:" in bernoulli for mode in settings.choices(settings.Binarize))


@pytest.mark.parametrize(
    ("override", "build"),
    [
        ("likelihood.sigma_value=0", lambda: GaussianLikelihood((1, 4, 4), sigma_value=0.0)),
        ("likelihood.sigma_init=-1", lambda: GaussianLikelihood((1, 4, 4), sigma_init=-1.0)),
        ("likelihood.log_sigma_min=3", lambda: GaussianLikelihood((1, 4, 4), log_sigma_min=3.0)),
        (
            "likelihood=gaussian_low_rank likelihood.rank=0",
            lambda: likelihoods.GaussianLowRankLikelihood((1, 4, 4), rank=0),
        ),
        (
            "likelihood=gaussian_low_rank likelihood.log_sigma_min=3",
            lambda: likelihoods.GaussianLowRankLikelihood((1, 4, 4), log_sigma_min=3.0),
        ),
        (
            "likelihood=discretized_logistic likelihood.components=0",
            lambda: likelihoods.DiscretizedLogisticLikelihood((1, 4, 4), levels=256, components=0),
        ),
        ("data.batch_size=0", lambda: ImageDataModule(SimpleNamespace(load=None), batch_size=0)),
        ("data.eval_batch_size=0", lambda: ImageDataModule(SimpleNamespace(load=None), eval_batch_size=0)),
        ("data.val_fraction=1.5", lambda: ImageDataModule(SimpleNamespace(load=None), val_fraction=1.5)),
    ],
)
def test_constructors_check_the_ranges_validate_checks(override, build):
    cfg = composed("train", *override.split())
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/unused"
    with pytest.raises(ConfigError) as at_start_up:
        schema.validate(cfg)
    with pytest.raises(ConfigError) as in_constructor:
        build()
    assert str(in_constructor.value) == str(at_start_up.value)
    assert override.split()[-1].split("=")[0] in str(at_start_up.value)


def test_choices_are_checked_against_the_enums():
    with pytest.raises(ConfigError, match="choose one of fixed, learned_shared, learned_pixel, predicted, optimal"):
        GaussianLikelihood((1, 4, 4), sigma="gaussian")
    with pytest.raises(ConfigError, match="choose one of dynamic, static, threshold, none"):
        likelihoods.BernoulliLikelihood((1, 4, 4), binarize="sometimes")
    assert GaussianLikelihood((1, 4, 4), sigma=settings.SigmaMode.optimal).sigma_mode == "optimal"
