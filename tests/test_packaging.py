"""Every install is pinned: each package pyproject.toml names, in the base install and in
every extra, has its version in constraints.txt (the Makefile installs through it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0])


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a pin (name==version)"
            found[normalise(name)] = version.strip()
    return found


def test_every_requirement_and_extra_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    pinned = pins()
    unpinned = {group: [r for r in reqs if requirement_name(r) not in pinned] for group, reqs in groups.items()}
    assert not any(unpinned.values()), f"not in constraints.txt: {unpinned}"
    assert "pip" in pinned  # the Makefile installs this pip before anything else


def test_the_notebook_test_needs_only_the_test_extra_and_the_notebook_extra_has_jupyterlab():
    """CI installs .[test]: what the notebook test imports (nbclient, nbformat, a kernel)
    must be in it, so that the notebook runs in CI; `make notebook` adds JupyterLab."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"nbclient", "nbformat", "ipykernel"} <= {requirement_name(r) for r in extras["test"]}
    assert {"jupyterlab", "nbconvert", "ipykernel"} <= {requirement_name(r) for r in extras["notebook"]}
    assert "jupyterlab" not in {requirement_name(r) for r in extras["test"]}


#: what only an extra installs: the Optuna sweeper's, the SLURM launcher's, TensorBoard, JupyterLab
OPTIONAL = {
    "optuna": {"optuna", "sqlalchemy"},
    "slurm": {"hydra-submitit-launcher", "submitit"},
    "tensorboard": {"tensorboard"},
    "notebook": {"jupyterlab", "nbconvert", "ipykernel"},
}


def test_the_core_install_leaves_the_optional_packages_to_their_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {requirement_name(r) for r in project["dependencies"]}
    extras = {name: {requirement_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    for extra, packages in OPTIONAL.items():
        assert not packages & core, f"{packages & core} should be in the {extra} extra only"
        assert packages <= extras[extra], extra
    # the tests exercise every extra but the notebook's JupyterLab (they run the notebook with nbclient)
    assert set().union(*(OPTIONAL[e] for e in ("optuna", "slurm", "tensorboard"))) <= extras["test"]
    assert "hydra-optuna-sweeper" not in core | set().union(*extras.values())  # vaelab's own sweeper replaces it


def test_code_on_private_lightning_api_caps_lightning_at_the_versions_tested():
    """vaelab.ddp subclasses Lightning's private _SubprocessScriptLauncher: a Lightning release
    past the tested ones may change it, so the requirement has an upper bound that admits the pin."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {requirement_name(r): Requirement(r) for r in project["dependencies"]}
    assert "_SubprocessScriptLauncher" in (ROOT / "src" / "vaelab" / "ddp.py").read_text()
    lightning = requirements["lightning"]
    assert any(spec.operator == "<" for spec in lightning.specifier)
    assert lightning.specifier.contains(pins()["lightning"])
    for name in ("torch", "hydra-core", "omegaconf"):
        assert requirements[name].specifier.contains(pins()[name]), name


def test_a_launcher_config_of_a_missing_extra_says_what_to_install(monkeypatch):
    """Without the slurm extra Hydra cannot load submitit's launcher config: one line names the extra
    (the check of the real core install is bench/lowest_versions.sh)."""
    from hydra.errors import ConfigCompositionException

    from vaelab import errors

    error = ConfigCompositionException("In 'hydra/launcher/slurm': Could not load 'hydra/launcher/submitit_slurm'")
    extra, feature, package, _ = errors.EXTRA_CONFIGS["hydra/launcher/submitit_slurm"]
    monkeypatch.setitem(
        errors.EXTRA_CONFIGS, "hydra/launcher/submitit_slurm", (extra, feature, package, "not_installed")
    )
    assert errors.one_line(error) == (
        "hydra/launcher=slurm needs hydra-submitit-launcher, which the core install leaves out: "
        "pip install 'vaelab[slurm]'"
    )


def test_the_tensorboard_logger_without_its_extra_says_what_to_install(tmp_path):
    """TensorBoard hidden from the interpreter (as in a core install): logger=tensorboard ends with one line."""
    import subprocess

    from conftest import script, without_packages

    env = {**without_packages(tmp_path, "tensorboard", "tensorboardX"), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [script("vaelab-train"), "logger=tensorboard", "debug=short", "trainer.enable_progress_bar=false"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: logger=tensorboard needs tensorboard, which the core install leaves out: pip install 'vaelab[tensorboard]'"
    )
    assert not (tmp_path / "logs" / "train" / "runs").exists() or not any(
        (tmp_path / "logs" / "train" / "runs").iterdir()
    )


def test_lightnings_own_message_for_a_missing_tensorboard_names_the_extra_too():
    """In a core install Lightning finds neither tensorboard nor tensorboardX and raises its own error."""
    from vaelab import errors

    error = ModuleNotFoundError("Neither `tensorboard` nor `tensorboardX` is available. Try `pip install`ing either.")
    assert errors.one_line(error).endswith("pip install 'vaelab[tensorboard]'")
    assert (
        errors.one_line(ModuleNotFoundError("No module named 'scipy'", name="scipy")) is None
    )  # not an extra's: a bug
