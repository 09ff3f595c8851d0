#!/usr/bin/env bash
# `make check-lowest`: the lowest versions pyproject.toml claims (bench/lowest_versions.txt),
# in a venv of their own:
#   1. the core install alone (`pip install -e .`, what `make setup` installs): it trains
#      (what `make train` runs, with debug=short), and an Optuna search without the optuna
#      extra ends with the one line that names it;
#   2. with the test extra: the fast tests (`pytest`, not the slow end-to-end ones).
# Not in CI (it installs a second environment: minutes); BENCHMARKS.md has its last result.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/vaelab-lowest}
LOWEST=bench/lowest_versions.txt
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$LOWEST")
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pip==26.3
echo "== core install at the lowest versions"
"${PIP[@]}" -e .
"$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -i -E '^(torch|lightning|hydra-core|omegaconf|torchmetrics|wandb|optuna|hydra-submitit-launcher|tensorboard) '
for missing in optuna hydra_plugins.hydra_submitit_launcher submitit tensorboard jupyterlab; do
    if "$VENV/bin/python" -c "import $missing" 2>/dev/null; then echo "the core install has $missing"; exit 1; fi
done
(cd "$SCRATCH" && WANDB_MODE=offline "$VENV/bin/vaelab-train" debug=short trainer.enable_progress_bar=false > train.log 2>&1) \
    || { tail -30 "$SCRATCH/train.log"; exit 1; }
echo "vaelab-train debug=short: trained ($(ls "$SCRATCH"/logs/train/runs/*/metrics.json))"
set +e
(cd "$SCRATCH" && "$VENV/bin/vaelab-train" -m hparams_search=optuna debug=fast > optuna.log 2>&1)
code=$?
set -e
grep "^error:" "$SCRATCH/optuna.log"
[ "$code" = 2 ] && grep -q "pip install 'vaelab\[optuna\]'" "$SCRATCH/optuna.log"
set +e
(cd "$SCRATCH" && "$VENV/bin/vaelab-train" -m hydra/launcher=slurm model.beta=1,2 debug=fast > slurm.log 2>&1)
code=$?
set -e
grep "^error:" "$SCRATCH/slurm.log"
[ "$code" = 2 ] && grep -q "pip install 'vaelab\[slurm\]'" "$SCRATCH/slurm.log"

echo "== the test extra at the lowest versions: the fast tests"
"${PIP[@]}" -e '.[test]'
"$VENV/bin/pytest" -q -p no:cacheprovider "$@"
