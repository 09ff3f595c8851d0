"""Every command of the README's cookbook runs, each with a tiny budget, so that the
README cannot drift from the code.

The commands are read from the README itself (the ``bash`` block under
"## Cookbook"); placeholders become what the test made: ``<run>`` the run of the
cookbook's first command, ``<sweep>`` the folder of its sweep, a ``data.root`` a
small MNIST written here. The budget is appended as overrides (``debug=fast``: one
batch of each stage; the sweep and the first run ``debug=short``, so they leave the
checkpoints and metrics the later commands read; the resume one epoch more). ``data.download=true`` is dropped:
nothing can be downloaded here, and downloading is tested against a local server in
test_data.py. ``trainer=gpu`` on a machine without a GPU must fail in one line.
"""

from __future__ import annotations

import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_folders
from test_data import write_mnist

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ("vaelab-train", "vaelab-eval", "vaelab-compare")


def cookbook() -> list[list[str]]:
    """The cookbook's commands, as argument lists (comments dropped)."""
    text = README.read_text()
    start = text.index("## Cookbook")
    begin = text.index("```bash\n", start) + len("```bash\n")
    block = text[begin : text.index("\n```", begin)]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def budgeted(args: list[str], *, mnist: Path, run: Path | None, sweep: Path | None) -> list[str]:
    """``args`` with placeholders filled in and the tiny budget appended."""
    command, overrides = args[0], []
    for arg in args[1:]:
        if arg == "data.download=true":
            continue
        if arg.startswith("data.root="):
            arg = f"data.root={mnist}"
        if "<run>" in arg:
            assert run is not None
            arg = arg.replace("logs/train/runs/<run>", str(run))
        if "<sweep>" in arg:
            assert sweep is not None
            arg = arg.replace("logs/train/multiruns/<sweep>", str(sweep))
        overrides.append(arg)
    if command == "vaelab-eval":
        overrides += ["iw_samples=2"]
    elif command == "vaelab-train" and "--cfg" not in overrides and not any(o.startswith("debug=") for o in overrides):
        if any(o.startswith("ckpt_path=") for o in overrides):  # a resume: one epoch past the first run's two
            overrides += ["debug=short", "trainer.max_epochs=3"]
        else:
            overrides += ["debug=short"] if "-m" in overrides else ["debug=fast"]
    if command == "vaelab-train":
        overrides += ["trainer.enable_progress_bar=false"]
    return [command, *overrides]


def test_every_cookbook_command_runs(tmp_path):
    commands = cookbook()
    assert len(commands) >= 15 and all(args[0] in COMMANDS for args in commands), commands
    write_mnist(tmp_path / "mnist", n_train=200, n_test=40)
    mnist = tmp_path / "mnist"

    def run(args: list[str]):
        return run_cli(args[0], *args[1:], cwd=tmp_path, check=False)

    # first what later commands read: the first command's run (<run>) and the sweep (<sweep>)
    first, sweep_command = commands[0], next(args for args in commands if "-m" in args)
    assert first == ["vaelab-train"]
    made = run(["vaelab-train", "debug=short", "trainer.enable_progress_bar=false"])
    assert made.returncode == 0, made.stderr[-3000:]
    (run_dir,) = run_folders(tmp_path)
    swept = run(budgeted(sweep_command, mnist=mnist, run=None, sweep=None))
    assert swept.returncode == 0, swept.stderr[-3000:]
    (sweep_dir,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())

    rest = [
        budgeted(args, mnist=mnist, run=run_dir, sweep=sweep_dir) for args in commands[1:] if args is not sweep_command
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        results = list(pool.map(run, rest))

    failures = []
    for args, proc in zip(rest, results):
        if "trainer=gpu" in args and not torch.cuda.is_available():
            last = [line for line in proc.stderr.splitlines() if line.strip()][-1:]
            if proc.returncode != 2 or not last or "asks for a GPU, but torch finds none" not in last[0]:
                failures.append(
                    f"{shlex.join(args)}: exit {proc.returncode}, expected the one-line no-GPU error\n{proc.stderr[-2000:]}"
                )
        elif proc.returncode != 0:
            failures.append(f"{shlex.join(args)}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
    # what the commands say they do, where a later command reads it
    assert (sweep_dir / "compare").is_dir()
    assert list((tmp_path / "logs" / "eval").rglob("eval_metrics.json"))
