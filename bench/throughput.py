"""Benchmark: training images/s of vaelab against a hand-written loop and a DataLoader template.

For each configuration (model x batch size), these ways of training the same model on
the same data, with the same thread count and optimiser, in one process:

  vaelab      the real thing: the config composed by Hydra from conf/ (as `vaelab-train`
              composes it), built with vaelab.train's own helpers, trained by the
              Lightning Trainer that config describes (CSV logger, checkpoint and image
              callbacks, progress bar, metrics logged every log_every_n_steps).
  hand        a minimal PyTorch loop: the same encoder, decoder and likelihood objects
              (built from the same config), the same loss maths, the same uint8 tensor
              batched by index slices with a fresh permutation per epoch, the same fused
              Adam.
  dataloader  a Lightning module as a typical template writes it: the data as a float
              TensorDataset behind a DataLoader (shuffle, num_workers=0), the same
              networks, likelihood and loss, self.log of four metrics every step, a CSV
              logger and Lightning's default callbacks.
  floor       a LightningModule whose training_step is the hand loop's loss and nothing
              else, trained by vaelab's trainer config and data module (callbacks,
              logger, progress bar): what Lightning costs with vaelab's set-up.
  barebones   the same module under Trainer(barebones=True), Lightning's mode for
              measuring its own overhead (no logger, checkpoints, progress bar).

The machine this was written on is shared, so the load changes from second to second.
The hand-written loop is therefore timed *interleaved* with each Lightning run, at fine
grain: the Lightning run trains ``block`` steps (timed), then a callback trains the
hand-written loop ``block`` steps (timed separately, excluded from the Lightning time),
and so on, so each Lightning segment has a hand segment run under the same load next
to it. Every model starts from the same initial weights and warms up first; Lightning
segments lie inside an epoch (the first batch of each epoch, and validation, fall
outside them), so what is compared is the training step with its data fetching and
logging. Each configuration is measured ``--rounds`` times (fresh trainers and models);
a method's images/s is total images over total time of its segments.

    python bench/throughput.py --mnist ../shared/data/mnist --threads 1
    python bench/throughput.py --configs mlp:128 --rounds 2     # one configuration

One line per configuration ends in ``ratio=<vaelab / hand>``; the JSON record of all
measurements goes to bench/results/throughput_<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from vaelab.build import build_model, load_data_now
from vaelab.config import config_dir, instantiate_dict
from vaelab.model import maths

# steps per timed segment, segments per round (per Lightning run)
PLAN = {
    ("mlp", 128): (40, 12),
    ("mlp", 512): (12, 12),
    ("conv", 128): (6, 10),
    ("conv", 512): (3, 8),
}
WARMUP = 10  # steps of each before anything is timed


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts it
    (CUDA runs kernels asynchronously; on the CPU there is nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the hand-written loop -----------------------------------------------------------------------
def hand_loss(model: Any, images: torch.Tensor) -> torch.Tensor:
    """The loss of one batch, written out: the maths of VAE.forward and training_step
    (beta = model.beta, no warm-up, no free bits: the defaults)."""
    x = model.likelihood.prepare(images, model.levels)
    mu, log_var = model.encoder(x).chunk(2, dim=1)
    z = maths.reparameterize(mu, log_var)
    log_px = model.likelihood.log_prob(model.decoder(z), x)
    kl = maths.kl_standard_normal(mu, log_var).sum(dim=1).mean()
    return -log_px.mean() + model.beta * kl


class HandLoop:
    """A minimal training loop over the data module's uint8 training tensor."""

    def __init__(self, cfg: Any, datamodule: Any, init_state: dict, seed: int, device: torch.device):
        self.device = device
        self.model = build_model(cfg, datamodule).to(device)
        self.model.load_state_dict(init_state)
        self.model.train()
        self.optimizer = instantiate(cfg.model.optimizer)(params=self.model.parameters())
        self.images = datamodule.train_images.to(device)  # its own copy on the device, as vaelab holds one
        self.batch_size = int(cfg.data.batch_size)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.order = torch.randperm(self.images.shape[0], generator=self.generator, device=device)
        self.position = 0

    def run(self, steps: int) -> float:
        """Train ``steps`` full batches; returns the seconds they took."""
        synchronize(self.device)
        start = time.perf_counter()
        with torch.enable_grad():
            for _ in range(steps):
                if self.position + self.batch_size > self.images.shape[0]:  # a new epoch
                    self.order = torch.randperm(self.images.shape[0], generator=self.generator, device=self.device)
                    self.position = 0
                index = self.order[self.position : self.position + self.batch_size]
                self.position += self.batch_size
                loss = hand_loss(self.model, self.images.index_select(0, index))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        synchronize(self.device)
        return time.perf_counter() - start


# -- timing inside a Lightning run -----------------------------------------------------------------
class Interleave(pl.Callback):
    """Times segments of ``block`` Lightning training steps and, after each, runs the
    hand-written loop for ``block`` steps (timed on its own, not counted in the
    Lightning segment). A segment runs from the end of one training batch to the end of
    the batch ``block`` later, within one epoch and over full batches only."""

    def __init__(self, hand: HandLoop, block: int, segments: int, full_batches: int):
        self.hand, self.block, self.segments, self.full_batches = hand, block, segments, full_batches
        self.lightning_s: list[float] = []
        self.hand_s: list[float] = []
        self.start: float | None = None
        self.start_batch = -1
        self.threads: set[int] = set()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = None  # no segment spans an epoch's end, validation, or its first batch

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        synchronize(pl_module.device)
        now = time.perf_counter()
        action = self.action(
            trainer.current_epoch, batch_idx, self.start is not None, self.start_batch, len(self.lightning_s)
        )
        if action == "warmup":
            self.hand.run(WARMUP)
        elif action == "end":
            self.lightning_s.append(now - self.start)
            self.threads.add(torch.get_num_threads())
            self.hand_s.append(self.hand.run(self.block))
            self.start = None
        if action in ("warmup", "end", "idle") and self.may_start(batch_idx, len(self.lightning_s)):
            self.start, self.start_batch = time.perf_counter(), batch_idx

    def action(self, epoch: int, batch_idx: int, running: bool, start_batch: int, done: int) -> str:
        if epoch == 0 and batch_idx < WARMUP - 1:
            return "skip"
        if epoch == 0 and batch_idx == WARMUP - 1:
            return "warmup"
        if not running:
            return "idle"
        return "end" if batch_idx == start_batch + self.block else "inside"

    def may_start(self, batch_idx: int, done: int) -> bool:
        """A new segment starts only if it will end on a full batch of this epoch."""
        return done < self.segments and batch_idx + self.block < self.full_batches

    def steps_needed(self, batches_per_epoch: int) -> int:
        """The max_steps at which the last segment has just ended (the same decisions as
        on_train_batch_end, replayed)."""
        step = epoch = batch = done = 0
        running, start_batch = False, -1
        while done < self.segments:
            action = self.action(epoch, batch, running, start_batch, done)
            if action == "end":
                done, running = done + 1, False
            if action in ("warmup", "end", "idle") and self.may_start(batch, done):
                running, start_batch = True, batch
            step, batch = step + 1, batch + 1
            if batch == batches_per_epoch:
                epoch, batch, running = epoch + 1, 0, False
        return step


@contextlib.contextmanager
def quiet(log_file: io.TextIOBase):
    """Lightning's banners and progress bar go to a log file, not the bench's output
    (the progress bar still runs, as it does for `vaelab-train` in a sweep job)."""
    with contextlib.redirect_stderr(log_file), contextlib.redirect_stdout(log_file), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- the two Lightning runs ------------------------------------------------------------------------
def run_vaelab(
    cfg: Any, datamodule: Any, init_state: dict, timer: Interleave, max_steps: int, log_file: io.TextIOBase
) -> None:
    """vaelab's training as vaelab.train.train builds it (without the final test)."""
    with quiet(log_file):
        model = build_model(cfg, datamodule)
        model.load_state_dict(init_state)
        model.run_config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        callbacks = [*instantiate_dict(cfg.get("callbacks")), timer]
        loggers = instantiate_dict(cfg.get("logger"))
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, max_steps=max_steps)
        for logger in trainer.loggers:
            logger.log_hyperparams(model.run_config)
        trainer.fit(model, datamodule=datamodule)


class BareVAE(pl.LightningModule):
    """The least a LightningModule can do: the hand-written loop's loss as training_step,
    nothing logged, no hooks. Trained by vaelab's trainer on vaelab's data module, it
    measures what Lightning itself costs per step with vaelab's trainer config."""

    def __init__(self, model: Any, optimizer_factory: Any):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer_factory

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return hand_loss(self.model, batch[0])

    # outside the timed segments: what vaelab's callbacks need (val/elbo, image panels)
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        out = self.model(self.model.likelihood.prepare(batch[0], self.model.levels))
        self.log("val/elbo", (out["log_px"] - out["kl_per_dim"].sum(dim=1)).mean())

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(params=self.parameters())


def run_floor(
    cfg: Any, datamodule: Any, init_state: dict, timer: Interleave, max_steps: int, log_file: io.TextIOBase
) -> None:
    """BareVAE through the Trainer that vaelab's config builds (callbacks, logger, progress bar)."""
    with quiet(log_file):
        model = build_model(cfg, datamodule)
        model.load_state_dict(init_state)
        module = BareVAE(model, instantiate(cfg.model.optimizer))
        callbacks = [*instantiate_dict(cfg.get("callbacks")), timer]
        trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=instantiate_dict(cfg.get("logger")) or False, max_steps=max_steps
        )
        trainer.fit(module, datamodule=datamodule)


def run_barebones(
    cfg: Any, datamodule: Any, init_state: dict, timer: Interleave, max_steps: int, log_file: io.TextIOBase
) -> None:
    """BareVAE through ``Trainer(barebones=True)``: Lightning's own mode for measuring its
    overhead (no logger, checkpoints, progress bar or model summary, and Lightning's
    default pass-through profiler, which that mode insists on), with only the timing
    callback."""
    with quiet(log_file):
        model = build_model(cfg, datamodule)
        model.load_state_dict(init_state)
        module = BareVAE(model, instantiate(cfg.model.optimizer))
        trainer = pl.Trainer(
            barebones=True,
            accelerator=cfg.trainer.accelerator,
            devices=1,
            max_steps=max_steps,
            callbacks=[timer],
            limit_val_batches=0,
            default_root_dir=cfg.paths.output_dir,
        )
        trainer.fit(module, datamodule=datamodule)


class TemplateVAE(pl.LightningModule):
    """How a typical Lightning template writes the same model: float batches from a
    DataLoader, the loss in training_step, self.log per metric per step."""

    def __init__(self, model: Any, optimizer_factory: Any):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = model.encoder, model.decoder, model.likelihood
        self.levels, self.beta = model.levels, model.beta
        self.optimizer_factory = optimizer_factory

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, _ = batch
        x = self.likelihood.prepare(images, self.levels)  # float input: the same scaling and noise
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        z = maths.reparameterize(mu, log_var)
        recon = self.likelihood.log_prob(self.decoder(z), x).mean()
        kl = maths.kl_standard_normal(mu, log_var).sum(dim=1).mean()
        loss = -recon + self.beta * kl
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/elbo", recon - kl)
        self.log("train/recon", recon)
        self.log("train/kl", kl)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(params=self.parameters())


def run_dataloader(
    cfg: Any, datamodule: Any, init_state: dict, timer: Interleave, max_steps: int, log_file: io.TextIOBase
) -> None:
    with quiet(log_file):
        model = build_model(cfg, datamodule)
        model.load_state_dict(init_state)
        module = TemplateVAE(model, instantiate(cfg.model.optimizer))
        # host tensors, as a template holds them (vaelab may have moved the shared data module to the GPU)
        dataset = TensorDataset(datamodule.train_images.float().cpu(), datamodule.train_labels.cpu())
        loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, num_workers=0)
        out = Path(cfg.paths.output_dir)
        trainer = pl.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=1,
            max_steps=max_steps,
            logger=CSVLogger(out, name="csv"),
            callbacks=[timer],
            default_root_dir=out,
        )
        trainer.fit(module, train_dataloaders=loader)


# -- set-up and report --------------------------------------------------------------------------------
def mnist_present(root: Path) -> bool:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return all((root / n).exists() or (root / f"{n}.gz").exists() for n in names)


def compose_config(
    model: str, batch_size: int, mnist: Path | None, out: Path, extra: list[str], accelerator: str = "cpu"
) -> Any:
    data = ["data=digits"] if mnist is None else ["data=mnist", f"data.root={mnist}", "data.download=false"]
    trainer = ["trainer=gpu"] if accelerator == "gpu" else []
    overrides = [*data, *trainer, f"model={model}", f"data.batch_size={batch_size}", f"paths.output_dir={out}", *extra]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def rate(images_per_step: int, seconds: list[float], steps_each: int) -> float:
    return images_per_step * steps_each * len(seconds) / sum(seconds)


def measure(spec: str, args: argparse.Namespace, mnist: Path | None, scratch: Path, log_file: io.TextIOBase) -> dict:
    model_name, batch = spec.split(":")
    batch_size = int(batch)
    block, segments = PLAN.get((model_name, batch_size), (10, 8))
    block = max(1, round(block * args.steps_scale))
    cfg = compose_config(
        model_name, batch_size, mnist, scratch / spec.replace(":", ""), args.overrides, args.accelerator
    )
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    load_data_now(datamodule)
    n = datamodule.train_images.shape[0]
    full_batches, batches_per_epoch = n // batch_size, -(-n // batch_size)
    if full_batches < block + 2:
        raise SystemExit(f"{spec}: an epoch has {full_batches} full batches, too few for segments of {block}")
    # every run starts from these weights: as vaelab's on_fit_start leaves them (output bias at the mean image)
    first = build_model(cfg, datamodule)
    if first.init_output_bias:
        first.set_output_bias(first.mean_input(datamodule.train_images))
    init_state = copy.deepcopy(first.state_dict())

    methods = ("vaelab", "dataloader", "floor", "barebones")
    times: dict[str, list[float]] = {k: [] for m in methods for k in (m, f"hand_vs_{m}")}
    for r in range(args.rounds):
        runners = {"vaelab": run_vaelab, "dataloader": run_dataloader, "floor": run_floor, "barebones": run_barebones}
        runs = [(m, runners[m]) for m in args.methods.split(",")]
        for name, run in runs if r % 2 == 0 else runs[::-1]:
            run_cfg = copy.deepcopy(cfg)
            run_cfg.paths.output_dir = str(scratch / f"{spec.replace(':', '')}_{name}_{r}")
            hand_cfg = copy.deepcopy(run_cfg)
            if args.plain_hand:  # the hand loop stays eager float32 in the default layout
                hand_cfg.model.compile, hand_cfg.model.channels_last = False, False
            hand = HandLoop(hand_cfg, datamodule, init_state, seed=cfg.seed + r, device=device)
            timer = Interleave(hand, block, segments, full_batches)
            run(run_cfg, datamodule, init_state, timer, timer.steps_needed(batches_per_epoch), log_file)
            if len(timer.lightning_s) != segments or timer.threads != {args.threads}:
                raise RuntimeError(f"{spec} {name}: {len(timer.lightning_s)} segments on threads {timer.threads}")
            times[name] += timer.lightning_s
            times[f"hand_vs_{name}"] += timer.hand_s
    times = {k: v if v else [float("nan")] for k, v in times.items()}
    ips = {k: rate(batch_size, v, block) for k, v in times.items()}
    pair = {m: [h / s for s, h in zip(times[m], times[f"hand_vs_{m}"])] for m in methods}
    result = {
        "model": model_name,
        "batch_size": batch_size,
        "block_steps": block,
        "segments": len(times["vaelab"]),
        "images_per_s": ips,
        "ratio": ips["vaelab"] / ips["hand_vs_vaelab"],
        "dataloader_ratio": ips["dataloader"] / ips["hand_vs_dataloader"],
        "floor_ratio": ips["floor"] / ips["hand_vs_floor"],
        "barebones_ratio": ips["barebones"] / ips["hand_vs_barebones"],
        "ratio_median_of_pairs": statistics.median(pair["vaelab"]),
        "dataloader_ratio_median_of_pairs": statistics.median(pair["dataloader"]),
        "floor_ratio_median_of_pairs": statistics.median(pair["floor"]),
        "barebones_ratio_median_of_pairs": statistics.median(pair["barebones"]),
        "seconds": times,
    }
    hand = statistics.mean(ips[f"hand_vs_{m}"] for m in args.methods.split(","))
    print(
        f"{model_name:4s} batch={batch_size:<4d} threads={args.threads} steps={block}x{len(times['vaelab'])} "
        f"img/s: vaelab={ips['vaelab']:.0f} dataloader={ips['dataloader']:.0f} hand={hand:.0f} "
        + (f"lightning_floor_ratio={result['floor_ratio']:.3f} " if "floor" in args.methods else "")
        + (f"barebones_ratio={result['barebones_ratio']:.3f} " if "barebones" in args.methods else "")
        + f"(pair medians: vaelab {result['ratio_median_of_pairs']:.3f}, dataloader {result['dataloader_ratio_median_of_pairs']:.3f}) "
        f"dataloader_ratio={result['dataloader_ratio']:.3f} ratio={result['ratio']:.3f}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mnist", default="../shared/data/mnist", help="folder with the MNIST IDX files (digits if absent)"
    )
    parser.add_argument("--configs", default="mlp:128,mlp:512,conv:128,conv:512", help="model:batch_size,...")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for all three")
    parser.add_argument(
        "--methods",
        default="vaelab,dataloader,floor,barebones",
        help="the Lightning runs to pair with the hand loop: vaelab, dataloader, floor (a module that "
        "only computes the hand loop's loss, trained by vaelab's trainer config: what Lightning costs with "
        "vaelab's callbacks and logger) and barebones (the same module under Trainer(barebones=True), Lightning's "
        "mode for measuring its own overhead)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="repetitions per configuration (fresh runs)")
    parser.add_argument(
        "--accelerator",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: every method trains on the first CUDA device (vaelab with trainer=gpu, its data on the GPU; "
        "the hand loop's model and uint8 tensor there too), clocks read after a synchronize",
    )
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply the steps per segment")
    parser.add_argument(
        "--plain-hand",
        action="store_true",
        help="the hand loop without model.compile/channels_last (it never uses trainer.precision): "
        "ratios then measure an option's speed-up over the plain loop",
    )
    parser.add_argument("--out", default="bench/results", help="folder for the JSON record")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every configuration")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*srun.*")
    mnist: Path | None = Path(args.mnist).resolve()
    if not mnist_present(mnist):
        print(f"MNIST files not found in {mnist}: using the bundled 8x8 digits instead", flush=True)
        mnist = None
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="vaelab-throughput-"))
    log_path = scratch / "lightning.log"
    load = os.getloadavg()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--accelerator gpu: torch sees no CUDA device")
    gpu = torch.cuda.get_device_name(0) if args.accelerator == "gpu" else None
    print(
        f"# {date.today()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load[0]:.2f}, "
        + (f"GPU {gpu}, " if gpu else "")
        + f"torch {torch.__version__}, lightning {pl.__version__}, {args.threads} thread(s), "
        f"data={'mnist' if mnist else 'digits'}, {args.rounds} round(s); Lightning output in {log_path}",
        flush=True,
    )
    with open(log_path, "w") as log_file:
        records = [measure(spec, args, mnist, scratch, log_file) for spec in args.configs.split(",")]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_before": load,
        "load_after": os.getloadavg(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "threads": args.threads,
        "accelerator": args.accelerator,
        "gpu": gpu,
        "data": "mnist" if mnist else "digits",
        "rounds": args.rounds,
        "overrides": args.overrides,
        "plain_hand": args.plain_hand,
        "peak_rss_mb": round(peak_mb),
        "configs": records,
        "command": " ".join(sys.argv),
    }
    path = out / f"throughput_{int(time.time())}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"# load after: {os.getloadavg()[0]:.2f}; peak RSS of the bench process {peak_mb:.0f} MB; record: {path}",
        flush=True,
    )


if __name__ == "__main__":
    main()
