"""Benchmark: microseconds that the training loop adds to each step, with a model so
small (784-8-2 MLP, batch 8) that the loop is nearly all there is.

vaelab's trainer, as configured by conf/ plus the Hydra overrides given, trains on MNIST;
bench/throughput.py's Interleave callback times every ``--block`` steps and then runs its
hand-written loop for as many steps, timed on its own. The overhead of a segment is (Lightning's time - the hand
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
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from throughput import HandLoop, Interleave, compose_config, mnist_present

from vaelab.build import build_model, load_data_now
from vaelab.config import instantiate_dict

TINY = ["model.encoder.hidden=[8]", "model.latent_dim=2", "model.test_iw_samples=0"]


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
    out = Path("bench/results/loop_overhead").resolve()
    cfg = compose_config("mlp", 8, mnist, out, [*TINY, *args.overrides])
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    load_data_now(datamodule)
    model = build_model(cfg, datamodule)
    batches = -(-datamodule.train_images.shape[0] // 8)
    hand = HandLoop(cfg, datamodule, model.state_dict(), seed=cfg.seed, device=torch.device("cpu"))
    timer = Interleave(hand, args.block, args.segments, full_batches=datamodule.train_images.shape[0] // 8)
    callbacks = [*instantiate_dict(cfg.get("callbacks")), timer]
    loggers = instantiate_dict(cfg.get("logger")) or False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, max_steps=timer.steps_needed(batches))
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
