"""Benchmark: the low-rank plus diagonal Gaussian's log-density, vaelab's Woodbury form
(vaelab.model.maths.low_rank_gaussian_log_prob) against
torch.distributions.LowRankMultivariateNormal, forward and forward + backward, at MNIST
size by default (B = 128 images of D = 784 numbers) for several ranks.

Both are given what the decoder gives: the mean, log-sigma and the factor as U^T
(B, r, D), the layout the decoder's channels have; torch's distribution takes U
(B, D, r) and the variance, so its timing includes the transpose and exp it needs
(validate_args off). Times are medians of ``--repeats`` timed blocks of ``--steps``
calls each, after a warm-up, in milliseconds per call, float32 on the CPU:

    python bench/low_rank.py                 # B=128, D=784, ranks 1 5 10 25
    python bench/low_rank.py --threads 1

Measured on the 2-core CPU (torch 2.13, 2 threads), ms per call, vaelab / torch:
rank 1 forward 0.28 / 0.58, forward+backward 1.5 / 2.7; rank 5 0.43 / 1.06, 3.1 / 9.9;
rank 10 0.78 / 1.71, 4.0 / 13.9 (a second run: 0.89 / 1.52, 5.6 / 17.5); rank 25
2.8 / 4.6, 19 / 49. The Woodbury form written out is 1.7-3.5x faster, so the likelihood
uses it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.distributions import LowRankMultivariateNormal

from vaelab.model import maths


def torch_log_prob(x: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor, factor_t: torch.Tensor):
    dist = LowRankMultivariateNormal(mean, factor_t.mT, torch.exp(2 * log_sigma), validate_args=False)
    return dist.log_prob(x)


def timed(fn, steps: int, repeats: int, backward: bool, inputs: list[torch.Tensor]) -> float:
    def once() -> None:
        out = fn(*inputs).sum()
        if backward:
            out.backward()

    for _ in range(3):
        once()
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            once()
        blocks.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dims", type=int, default=784)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 5, 10, 25])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"B={args.batch} D={args.dims} float32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'rank':>4}  {'pass':<16}{'vaelab ms':>10}{'torch ms':>10}{'torch/vaelab':>14}")
    for rank in args.ranks:
        g = torch.Generator().manual_seed(rank)
        x = torch.rand(args.batch, args.dims, generator=g)
        mean = torch.rand(args.batch, args.dims, generator=g).requires_grad_()
        log_sigma = (-2 + 0.3 * torch.randn(args.batch, args.dims, generator=g)).requires_grad_()
        factor_t = (0.1 * torch.randn(args.batch, rank, args.dims, generator=g)).requires_grad_()
        inputs = [x, mean, log_sigma, factor_t]
        torch.testing.assert_close(
            maths.low_rank_gaussian_log_prob(*inputs), torch_log_prob(*inputs), rtol=1e-4, atol=0.05
        )
        for backward in (False, True):
            ours = timed(maths.low_rank_gaussian_log_prob, args.steps, args.repeats, backward, inputs)
            theirs = timed(torch_log_prob, args.steps, args.repeats, backward, inputs)
            label = "forward+backward" if backward else "forward"
            print(f"{rank:>4}  {label:<16}{ours:>10.3f}{theirs:>10.3f}{theirs / ours:>14.2f}")


if __name__ == "__main__":
    main()
