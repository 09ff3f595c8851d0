"""Benchmark: microseconds that the training loop adds to each step, with a model so
small (784-8-2 MLP, batch 8) that the loop is nearly all there is.

vaelab's trainer, as configured by conf/ plus the Hydra overrides given, trains on MNIST;
every ``--block`` steps a callback runs the hand-written loop of bench/throughput.py for
as many steps, timed on its own. The overhead of a segment is (Lightning's time - the hand
loop's time) / steps; the median over ``--segments`` segments is printed. Compare
configurations by running this once per set of overrides, alternating:

    python bench/loop_overhead.py                                       # vaelab's defaults
    python bench/loop_overhead.py '~callbacks.progress_bar'             # Lightning's default progress bar
    python bench/loop_overhead.py trainer.enable_progress_bar=false     # no progress bar
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from throughput import HandLoop, compose_config, mnist_present

from vaelab.config import instantiate_dict
from vaelab.train import build_model, load_data_now

TINY = ["model.encoder.hidden=[8]", "model.latent_dim=2", "model.test_iw_samples=0"]
WARMUP = 50


class Segments(pl.Callback):
    """Times ``block`` Lightning steps, then ``block`` hand-loop steps, ``segments`` times."""

    def __init__(self, hand: HandLoop, block: int, segments: int):
        self.hand, self.block, self.segments = hand, block, segments
        self.lightning_s: list[float] = []
        self.hand_s: list[float] = []
        self.start: float | None = None
        self.start_batch = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if batch_idx < WARMUP:
            return
        if self.start is None and len(self.lightning_s) < self.segments:
            if batch_idx == WARMUP:
                self.hand.run(WARMUP)
            self.start, self.start_batch = time.perf_counter(), batch_idx
        elif batch_idx == self.start_batch + self.block:
            self.lightning_s.append(now - self.start)
            self.hand_s.append(self.hand.run(self.block))
            self.start = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default="../shared/data/mnist")
    parser.add_argument("--block", type=int, default=200, help="steps per timed segment")
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of vaelab's config")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    mnist = Path(args.mnist).resolve()
    if not mnist_present(mnist):
        raise SystemExit(f"MNIST files not found in {mnist} (digits has too few batches of 8 per epoch)")
    batches = WARMUP + (args.block + 1) * args.segments  # each segment starts the batch after the last ends
    if batches > 55_000 // 8:
        raise SystemExit(f"--block x --segments needs {batches} batches, more than an MNIST epoch of batch 8 has")
    out = Path("bench/results/loop_overhead").resolve()
    cfg = compose_config("mlp", 8, mnist, out, [*TINY, *args.overrides])
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    load_data_now(datamodule)
    model = build_model(cfg, datamodule)
    timer = Segments(HandLoop(cfg, datamodule, model.state_dict(), seed=cfg.seed), args.block, args.segments)
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_dict(cfg.get("callbacks")), timer], logger=instantiate_dict(cfg.get("logger")) or False, max_steps=batches)
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=datamodule)
    if len(timer.lightning_s) != args.segments:
        raise SystemExit(f"only {len(timer.lightning_s)} of {args.segments} segments were timed")
    overhead = [(lightning - hand) / args.block * 1e6 for lightning, hand in zip(timer.lightning_s, timer.hand_s)]
    print(
        f"overrides={' '.join(args.overrides) or '(none)'}: loop overhead median {statistics.median(overhead):.0f} us/step "
        f"(min {min(overhead):.0f}, max {max(overhead):.0f}); hand loop {statistics.median(timer.hand_s) / args.block * 1e6:.0f} us/step, "
        f"Lightning {statistics.median(timer.lightning_s) / args.block * 1e6:.0f} us/step",
        flush=True,
    )


if __name__ == "__main__":
    main()
