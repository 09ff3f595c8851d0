"""Shared helpers: run the console scripts in a subprocess, in a scratch folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"console script {name} is not installed; run `make setup` (pip install -e .)")
    return found


def run_cli(name: str, *args: str, cwd: Path, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([script(name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{name} {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def without_packages(tmp_path: Path, *packages: str) -> dict[str, str]:
    """An environment whose interpreters cannot import ``packages`` (as in a core install
    without their extra): a sitecustomize on PYTHONPATH refuses them at import."""
    blocker = tmp_path / ("without_" + "_".join(packages))
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        f"HIDDEN = {packages!r}\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in HIDDEN:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    return {**os.environ, "PYTHONPATH": str(blocker)}


def quiet_trainer(**options):
    """A Lightning Trainer that writes and prints nothing of its own: no logger, progress
    bar or model summary, and checkpoints only when a checkpoint callback is among
    ``options["callbacks"]``. Everything else a test needs goes in ``options``."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Checkpoint

    checkpointing = any(isinstance(c, Checkpoint) for c in options.get("callbacks") or [])
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    return pl.Trainer(**{**quiet, "enable_checkpointing": checkpointing, **options})


def run_folders(root: Path, task: str = "train") -> list[Path]:
    return sorted(p.parent for p in (root / "logs" / task).rglob("metrics.json"))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session", autouse=True)
def shared_cache_dir(tmp_path_factory):
    """One cache of the FID's classifiers for the whole session (paths.cache_dir), so
    that each data set's classifier is trained once, not in every test's folder."""
    if "VAELAB_CACHE_DIR" not in os.environ:
        os.environ["VAELAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("vaelab-cache"))
    return Path(os.environ["VAELAB_CACHE_DIR"])


@pytest.fixture
def train(tmp_path):
    """``train(*overrides)`` runs vaelab-train in tmp_path and returns the CompletedProcess."""

    def _train(*overrides: str, **kwargs):
        return run_cli("vaelab-train", *overrides, cwd=tmp_path, **kwargs)

    return _train
