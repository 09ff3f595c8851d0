"""The package's shape: no import circles between vaelab's modules, and entry points
that do not load torch before the config has composed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "vaelab").rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The vaelab modules ``path`` imports, at the top or inside a function alike."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            # `import vaelab.a.b` imports vaelab.a.b (and its packages, which import nothing of ours here)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "vaelab":
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_vaelab_module_imports_itself_through_others():
    found = modules()
    graph = {name: imported(path, set(found)) for name, path in found.items()}
    assert graph["vaelab.training"] >= {"vaelab.ddp", "vaelab.build"}  # the walker sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


@pytest.mark.parametrize(
    "entry", ["vaelab.train", "vaelab.evaluate", "vaelab.compare", "vaelab.errors", "vaelab.exceptions"]
)
def test_entry_points_and_errors_import_without_torch(entry):
    """A command whose config does not compose fails in a second, not after torch and
    Lightning load (~3-9 s on the 2-core machine)."""
    code = f"import sys, {entry}; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {entry} loads {out.strip()}"


def test_a_config_that_does_not_compose_fails_before_torch_loads(tmp_path):
    code = (
        "import sys\n"
        "sys.argv = ['vaelab-train', 'likelihood.sigma=gaussian']\n"
        "from vaelab.train import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout.split("\n")[:2] == ["exit 2", "[]"], run.stdout + run.stderr
    assert "likelihood.sigma" in run.stderr and "fixed" in run.stderr


@pytest.mark.parametrize("module", ["vaelab.model.vae", "vaelab.data", "vaelab.settings", "vaelab.exceptions"])
def test_the_model_and_data_code_import_without_hydra(module):
    """The maths, the model and the data read their defaults, choices and ranges from
    vaelab.settings and raise vaelab.exceptions' errors: none of the command line's
    machinery (Hydra, OmegaConf, sweeps) comes with them."""
    code = (
        f"import sys, {module}; print(sorted(m for m in ('hydra', 'omegaconf', 'vaelab.sweeps') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} loads {out.strip()}"
