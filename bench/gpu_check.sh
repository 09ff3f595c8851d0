#!/usr/bin/env bash
# Issue 5's GPU measurements in one command, for a lent GPU machine (the device tool):
# vaelab / hand-written loop (and the other methods of bench/throughput.py) on the GPU,
# and the MNIST epoch time of the MLP VAE (goal: under 0.5 s on an H100).
#
# That machine has torch, lightning, torchmetrics, scikit-learn, rich and PyYAML but not
# Hydra, and nothing can be fetched there. Prepare here, once (.gpu_check/ is git-ignored):
#
#   mkdir -p .gpu_check/mnist && cp ../shared/data/mnist/*.gz .gpu_check/mnist/
#   .venv/bin/pip wheel --no-deps -w .gpu_check/wheels hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
#
# then run it there with carry=[".gpu_check"], command "bash bench/gpu_check.sh", timeout_s 540.
# Results land in $OUT (five small files: the device tool brings back at most 8):
# throughput_*.json, epochs_*.json (per-epoch training seconds) and gpu_check.log; the
# training runs' own folders (checkpoints, images) stay in $RUNS on that machine. A dry run here, on the CPU, checks the script itself:
#
#   ACCELERATOR=cpu CONFIGS=mlp:128 STEPS_SCALE=0.1 EPOCHS=1 PYTHON=.venv/bin/python OUT=/tmp/gpu_check bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ACCELERATOR=${ACCELERATOR:-gpu}
CONFIGS=${CONFIGS:-mlp:128,mlp:512,conv:128,conv:512}
STEPS_SCALE=${STEPS_SCALE:-1}
EPOCHS=${EPOCHS:-5}
PYTHON=${PYTHON:-python3}
OUT=${OUT:?set OUT to a folder for the results}
RUNS=${RUNS:-/tmp/gpu_check_runs}
mkdir -p "$OUT" "$RUNS"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 WANDB_MODE=offline

if [ -d .gpu_check/wheels ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu_check/wheels/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
MNIST=${MNIST:-.gpu_check/mnist}
[ -e "$MNIST/train-images-idx3-ubyte.gz" ] || MNIST=../shared/data/mnist
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch, lightning, hydra; print('torch', torch.__version__, 'lightning', lightning.__version__, 'hydra', hydra.__version__, 'cuda', torch.cuda.is_available())"

# 1. images/s against the hand-written loop, every method, one round each
"$PYTHON" bench/throughput.py --accelerator "$ACCELERATOR" --mnist "$MNIST" --threads 1 --rounds 1 \
  --configs "$CONFIGS" --steps-scale "$STEPS_SCALE" --out "$OUT"

# 2. MNIST epoch time of the default MLP VAE through vaelab-train's own entry point,
#    at batch 128 and 512, and compiled at 512 (per-epoch seconds from the Timings callback)
trainer=$([ "$ACCELERATOR" = gpu ] && echo trainer=gpu || echo trainer=cpu)
for run in "b128:data.batch_size=128" "b512:data.batch_size=512" "b512_compiled:data.batch_size=512 model.compile=true"; do
  name=${run%%:*}
  # shellcheck disable=SC2086
  "$PYTHON" -m vaelab.train data=mnist "data.root=$MNIST" data.download=false "$trainer" ${run#*:} \
    "trainer.max_epochs=$EPOCHS" trainer.enable_progress_bar=false test=false \
    "callbacks.image_grids.every_n_epochs=0" \
    '+callbacks.timings._target_=vaelab.timings.Timings' "+callbacks.timings.dirpath=$RUNS/$name" \
    "hydra.run.dir=$RUNS/$name" > "$RUNS/$name.log" 2>&1 || { tail -40 "$RUNS/$name.log"; exit 1; }
  "$PYTHON" - "$RUNS/$name/timings.json" "$OUT/epochs_$name.json" "$name" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
epochs = t["epoch_train_s"]
json.dump({"run": sys.argv[3], "epoch_train_s": epochs, "fit_s": t["fit_s"], "validation_s": t["validation_s"]}, open(sys.argv[2], "w"), indent=2)
print(f"{sys.argv[3]}: MNIST epoch training seconds {', '.join(f'{s:.3f}' for s in epochs)} (first includes warm-up)")
EOF
done
