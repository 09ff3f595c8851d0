#!/bin/bash
# Probes of the Burda recipe (experiment=burda_mnist) at equal wall time: each probe is
# a vaelab-train run of MINUTES (default 5) on 1 torch thread, two at a time, scored by
# its own test after training (the test ELBO of the best validation checkpoint on the
# 10,000 test images). The folder base/ holds the unchanged recipe over two seeds, the
# spread the probes are read against, and is what bench/reference_gap.py compares with
# the plain loop:
#
#     bash bench/burda_probes.sh ../shared/data/mnist
#     python bench/reference_gap.py bench/results/burda_probes_<time>/base --workers 2
#
# Results: BENCHMARKS.md, "Probes at equal time" (issue 18).
set -euo pipefail
MNIST=$(realpath "${1:-../shared/data/mnist}")
MINUTES=${MINUTES:-5}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 WANDB_MODE=offline
out=bench/results/burda_probes_$(date +%s)
mkdir -p "$out/base"
common=(experiment=burda_mnist "data.root=$MNIST" "trainer.max_time=00:00:$(printf %02d "$MINUTES"):00" trainer.enable_progress_bar=false)
probe() {  # probe NAME OVERRIDES...
    local name=$1
    shift
    local status=0
    vaelab-train "${common[@]}" "$@" "hydra.run.dir=$out/$name" >"$out/$name.log" 2>&1 || status=$?
    echo "$name: exit $status at $(date +%T)"
}
probe base/seed1 seed=1 & probe base/seed2 seed=2 & wait
probe lr3e-3 seed=1 model.optimizer.lr=3e-3 & probe batch200_lr3e-3 seed=1 data.batch_size=200 model.optimizer.lr=3e-3 & wait
probe adamax seed=1 model.optimizer._target_=torch.optim.Adamax '~model.optimizer.fused' &
probe ema0.999 seed=1 callbacks.ema_weights.decay=0.999 callbacks.ema_weights.update_starting_at_step=1000 & wait
probe adam_eps1e-8 seed=1 model.optimizer.eps=1e-8 &
probe ema0.99_every10 seed=1 callbacks.ema_weights.decay=0.99 callbacks.ema_weights.update_every_n_steps=10 callbacks.ema_weights.update_starting_at_step=1000 & wait
for m in "$out"/*/metrics.json "$out"/base/*/metrics.json; do
    python - "$m" <<'PY'
import json, sys
from pathlib import Path
m = json.loads(Path(sys.argv[1]).read_text())
x = m["metrics"]
print(f"{Path(sys.argv[1]).parent.name:18s} epochs={m['epochs']:4d} steps={m['global_step']:6d} test ELBO={x['test/elbo']:.2f} KL={x['test/kl']:.2f}")
PY
done
