"""Benchmark: the importance-weighted test bound of the Burda model, vaelab's against the
plain form it replaced, in one run.

The plain form (written out below, as vaelab computed it until 2026-12-02) encodes the
batch again for every chunk of samples and scores K copies of each image; vaelab
encodes once per batch and scores the Bernoulli's x * logits term as one batched
product with the images as they are (``maths.bernoulli_log_prob_repeated``). Both draw
the same eps from the same seed, so their bounds must agree to float rounding; the
script prints the largest difference beside the times, alternating the two forms for
``--rounds`` rounds (images per second over all rounds, and the ratio).

    python bench/iw_bound_speed.py --mnist ../shared/data/mnist --images 1000 --samples 500 --threads 1
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vaelab.build import build_model
from vaelab.config import config_dir
from vaelab.model import maths


def plain_bound(model, x: torch.Tensor, num_samples: int, chunk: int) -> torch.Tensor:
    """log (1/K) sum_k w_k, as it was computed: encode per chunk, K copies of x."""

    def log_weights(k: int) -> torch.Tensor:
        mu, log_var = model.encode(x)
        eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * log_var) * eps
        out = model.decode(z.flatten(0, 1))
        x_rep = x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)
        log_px = maths.bernoulli_log_prob(x_rep, out.float()).view(k, -1)
        return log_px + maths.standard_normal_log_prob(z) - maths.diagonal_normal_log_prob(z, mu, log_var)

    return maths.importance_weighted_bound(log_weights, num_samples, chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default=None, help="MNIST folder; random binary images without it")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    overrides = ["experiment=burda_mnist"]
    if args.mnist:
        overrides.append(f"data.root={args.mnist}")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    if args.mnist:
        datamodule.setup("test")
        images = datamodule.test_images[: args.images]
    else:
        images = (torch.rand(args.images, 1, 28, 28) < 0.15).to(torch.uint8)
        datamodule.setup = lambda stage=None: None  # no data on disk: the model needs only shapes
        datamodule.source.image_shape, datamodule.source.levels = (1, 28, 28), 256
    model = build_model(cfg, datamodule).eval()
    torch.manual_seed(0)
    x = model.likelihood.prepare(images, 256)
    chunk = max(1, min(args.samples, model.iw_chunk_elements // (x.shape[0] * x[0].numel())))

    times = {"plain": 0.0, "vaelab": 0.0}
    largest = 0.0
    with torch.inference_mode():
        for _ in range(args.rounds):
            torch.manual_seed(1)
            started = time.perf_counter()
            plain = plain_bound(model, x, args.samples, chunk)
            times["plain"] += time.perf_counter() - started
            torch.manual_seed(1)
            started = time.perf_counter()
            ours = model.importance_weighted_log_likelihood(x, args.samples)
            times["vaelab"] += time.perf_counter() - started
            largest = max(largest, float((ours - plain).abs().max()))
    per_second = {name: args.rounds * x.shape[0] * args.samples / t for name, t in times.items()}
    print(
        f"{x.shape[0]} images x K={args.samples}, chunks of {chunk} samples, {args.threads} thread(s), "
        f"{args.rounds} rounds: plain {per_second['plain']:,.0f}, vaelab {per_second['vaelab']:,.0f} "
        f"image-samples/s; ratio {per_second['vaelab'] / per_second['plain']:.3f}; "
        f"largest |difference| of the bounds {largest:.2e} nats (mean bound {float(ours.mean()):.3f})"
    )
    hours = 10_000 * 5000 / per_second["vaelab"] / 60
    print(
        f"at this rate the K=5000 bound of 10,000 test images takes {hours:.1f} min (plain: "
        f"{10_000 * 5000 / per_second['plain'] / 60:.1f} min)"
    )
    assert math.isfinite(largest)


if __name__ == "__main__":
    main()
