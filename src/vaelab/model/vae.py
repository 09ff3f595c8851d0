"""The VAE LightningModule: wires encoder, decoder, likelihood and prior together.

The maths lives in :mod:`vaelab.model.maths` and :mod:`vaelab.model.likelihoods`;
this class only decides what is computed at each step and what is logged.
Logged ELBO numbers are the true ELBO (beta = 1, no free bits, no warm-up), in
nats per image; the training loss is what the optimiser sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MinMetric

from vaelab.exceptions import NonFiniteLossError
from vaelab.model import importance, maths
from vaelab.model.latents import LatentUsage
from vaelab.model.likelihoods import GaussianLikelihood, Likelihood
from vaelab.model.training_sigma import measure_train_mse
from vaelab.model.training_sums import TrainingSums
from vaelab.settings import IWGradient, ModelSchema, check_choice, check_iw_training, check_range

EVAL_STAGES = ("val", "test")
#: how an evaluation metric is reduced over the set: extremes are the set's, not a mean
#: of per-batch extremes (which would change with the evaluation batch size)
EVAL_REDUCTIONS = {"sigma_min": MinMetric, "sigma_max": MaxMetric}


class VAE(pl.LightningModule):
    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        likelihood: Likelihood,
        image_shape: Sequence[int],
        levels: int,
        latent_dim: int = ModelSchema.latent_dim,
        beta: float = ModelSchema.beta,
        kl_warmup_steps: int = ModelSchema.kl_warmup_steps,
        free_bits: float = ModelSchema.free_bits,
        optimizer: Callable[..., torch.optim.Optimizer] | None = ModelSchema.optimizer,
        scheduler: Callable[..., Any] | None = ModelSchema.scheduler,
        test_iw_samples: int = ModelSchema.test_iw_samples,
        train_iw_samples: int = ModelSchema.train_iw_samples,
        iw_gradient: IWGradient | str = ModelSchema.iw_gradient,
        iw_chunk_elements: int = ModelSchema.iw_chunk_elements,
        init_output_bias: bool | None = ModelSchema.init_output_bias,
        compile: bool = ModelSchema.compile,
        channels_last: bool = ModelSchema.channels_last,
    ):
        """Defaults (and the ranges validate checks) are vaelab.settings.ModelSchema's."""
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.levels = int(levels)
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.free_bits = float(free_bits)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.test_iw_samples = int(test_iw_samples)
        check_range("model.train_iw_samples", train_iw_samples)
        check_iw_training(train_iw_samples, beta, free_bits, kl_warmup_steps)
        #: samples of the training objective: 1 the ELBO, k > 1 the IWAE bound
        self.train_iw_samples = int(train_iw_samples)
        self.iw_gradient = check_choice("model.iw_gradient", iw_gradient, IWGradient)
        self.iw_chunk_elements = int(iw_chunk_elements)
        #: None: the likelihood's default (Likelihood.init_output_bias_by_default)
        self.init_output_bias = (
            likelihood.init_output_bias_by_default if init_output_bias is None else bool(init_output_bias)
        )
        #: the composed Hydra config, stored in every checkpoint so evaluation needs nothing else
        self.run_config: dict | None = None

        self.likelihood = likelihood
        self.encoder = encoder(image_shape=self.image_shape, latent_dim=self.latent_dim)
        self.decoder = decoder(
            image_shape=self.image_shape,
            latent_dim=self.latent_dim,
            out_channels=self.image_shape[0] * likelihood.params_per_channel,
        )
        self.num_dims = math.prod(self.image_shape)
        #: convolutions in NHWC (channels-last) memory layout, inputs and weights
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.encoder.to(memory_format=torch.channels_last)
            self.decoder.to(memory_format=torch.channels_last)
        #: encoder and decoder run through torch.compile (compiled at their first call;
        #: nn.Module.compile keeps the parameter names, so checkpoints load either way)
        self.compile_networks = bool(compile)
        if self.compile_networks:
            self.encoder.compile()
            self.decoder.compile()
        self._train_sums = TrainingSums()
        #: sigma statistics of the latest logged (or epoch's last) training batch
        self._train_sampled: dict[str, Tensor] = {}
        self.eval_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {name: EVAL_REDUCTIONS.get(name, MeanMetric)() for name in self.metric_names(stage)}
                )
                for stage in EVAL_STAGES
            }
        )
        self.latent_usage = nn.ModuleDict({stage: LatentUsage(self.latent_dim) for stage in EVAL_STAGES})
        #: the test set's KL per latent dimension and variance of the posterior mean, as
        #: lists (filled by the test; written to metrics.json and images/latents.png)
        self.latent_report: dict[str, list[float]] | None = None
        self.validated_at_step: int | None = None  # global step of the last validation during fit

    def __setattr__(self, name: str, value: Any) -> None:
        """Lightning records the running hook in ``_current_fx_name`` before and after
        every hook it calls, dozens of times a training step. nn.Module.__setattr__ first
        checks every value against parameters, buffers and submodules, which is several
        times slower for that plain string than this fast path, which stores it as
        nn.Module would (BENCHMARKS.md, "Throughput": ``_current_fx_name``)."""
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # -- names -------------------------------------------------------------------------
    @property
    def is_gaussian(self) -> bool:
        return isinstance(self.likelihood, GaussianLikelihood)

    def metric_names(self, stage: str) -> list[str]:
        names = ["elbo", "recon", "kl", "bpd"]
        if self.is_gaussian:
            names += ["sigma_mean", "sigma_min", "sigma_max", "beta_eff"]
        if stage == "test" and self.test_iw_samples > 0:
            names += ["nll_iw", "bpd_iw"]
        return names

    # -- the model ---------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """uint8 images on the device -> the likelihood's float inputs (scaled,
        dequantised or binarised), once per batch and on the device."""
        images, labels = batch
        return self.likelihood.prepare(images, self.levels), labels

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        mu, log_var = self.encoder(x).float().chunk(2, dim=1)
        return mu, log_var

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's output in float32, whatever precision the decoder ran in."""
        return self.decoder(z).float()

    def full_precision(self, x: Tensor) -> AbstractContextManager:
        """Autocast off on ``x``'s device: the likelihood and KL in float32 (maths.full_precision)."""
        return maths.full_precision(x)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """One-sample ELBO terms per example."""
        mu, log_var = self.encode(x)
        z = maths.reparameterize(mu, log_var)
        decoder_out = self.decode(z)
        with self.full_precision(x):
            log_px = self.likelihood.log_prob(decoder_out, x)
            kl_per_dim = maths.kl_standard_normal(mu, log_var)
        return {"log_px": log_px, "kl_per_dim": kl_per_dim, "decoder_out": decoder_out, "mu": mu}

    def kl_weight(self) -> float:
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * maths.linear_warmup(self.global_step, self.kl_warmup_steps)

    def bits_per_dim(self, nll: Tensor) -> Tensor:
        """Per-image NLL in nats -> bits per dimension (README: conventions); the
        dequantisation correction only where the data were dequantised."""
        return maths.bits_per_dim(nll, self.num_dims, self.likelihood.dequantization_levels(self.levels))

    def elbo_metrics(self, recon: Tensor, kl: Tensor, sigma_stats: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """The ELBO, its two terms and bits/dim from per-image means of the terms; with a
        Gaussian decoder's ``sigma_stats``, sigma's mean, min and max and beta_eff."""
        elbo = recon - kl
        metrics = {"elbo": elbo, "recon": recon, "kl": kl, "bpd": self.bits_per_dim(-elbo)}
        if sigma_stats:
            metrics.update({k: sigma_stats[k] for k in ("sigma_mean", "sigma_min", "sigma_max")})
            # beta and sigma trade off: loss * 2 sigma^2 = SSE + 2 sigma^2 beta KL.
            metrics["beta_eff"] = 2.0 * sigma_stats["sigma_sq_mean"] * self.beta
        return metrics

    def step_metrics(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch-mean metrics of one step (the same names in every stage)."""
        recon = out["log_px"].mean()
        kl = out["kl_per_dim"].sum(dim=1).mean()
        stats = self.likelihood.sigma_stats(out["decoder_out"]) if self.is_gaussian else None
        return self.elbo_metrics(recon, kl, stats)

    # -- initialisation -------------------------------------------------------------------
    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        images = getattr(datamodule, "train_images", None)
        # Only a fresh model. A resumed run's weights are already restored here, but its
        # global_step not yet, so the checkpoint path is what tells a resume apart.
        resuming = getattr(self.trainer, "ckpt_path", None) is not None
        if self.init_output_bias and not resuming and images is not None and len(images):
            self.set_output_bias(self.mean_input(images))

    @torch.no_grad()
    def mean_input(self, images: Tensor, chunk: int = 8192) -> Tensor:
        """Mean of the model's inputs (after scaling, dequantisation, binarisation)."""
        total = torch.zeros(self.image_shape, device=images.device)
        for start in range(0, images.shape[0], chunk):
            total += self.likelihood.prepare(images[start : start + chunk], self.levels).sum(dim=0)
        return total / images.shape[0]

    @torch.no_grad()
    def set_output_bias(self, data_mean: Tensor) -> None:
        """Start the decoder at the mean image (see Likelihood.output_bias)."""
        last = [
            m for m in self.decoder.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d)) and m.bias is not None
        ][-1]
        bias = self.likelihood.output_bias(data_mean.to(last.bias.device))
        if isinstance(last, nn.Linear):
            last.bias.copy_(bias.flatten())
        else:  # one bias per output channel
            last.bias.copy_(bias.mean(dim=(1, 2)))

    # -- steps ---------------------------------------------------------------------------
    def importance_weighted_step(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The IWAE objective of a training batch (``train_iw_samples`` > 1): the loss to
        differentiate, the per-image mean of the bound, and the terms logged as the
        ELBO's (E_q log p(x|z) over the K draws, the analytic KL)."""
        loss, bound, samples = importance.importance_weighted_objective(
            self, x, self.train_iw_samples, self.iw_gradient
        )
        with self.full_precision(x):
            kl_per_dim = maths.kl_standard_normal(samples.mu.detach(), samples.log_var.detach())
        out = {
            "log_px": samples.log_px.detach().mean(dim=0),
            "kl_per_dim": kl_per_dim,
            "decoder_out": samples.decoder_out,
            "mu": samples.mu,
        }
        return loss, -bound.mean(), out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        kl_weight = self.kl_weight()
        if self.train_iw_samples > 1:
            # the loss logged is the negative bound, not DReG's surrogate
            objective, loss, out = self.importance_weighted_step(x)
            recon = out["log_px"].mean()
            kl = out["kl_per_dim"].sum(dim=1).mean()
        else:
            out = self(x)
            recon = out["log_px"].mean()
            kl = out["kl_per_dim"].sum(dim=1).mean()
            kl_term = maths.free_bits_kl(out["kl_per_dim"], self.free_bits) if self.free_bits > 0 else kl
            objective = loss = kl_weight * kl_term - recon
        value = loss.item()  # one scalar to the host (torch.isfinite would be an op more)
        if not math.isfinite(value):
            # stop before the optimiser spreads NaN into the weights (and a checkpoint)
            raise NonFiniteLossError(
                value, self.global_step, self.current_epoch, self.last_checkpoint(), self.likelihood.scale_floor
            )
        # Everything else a step logs is either summed on the device here (one add) or
        # read from the batch only when it is written: self.log and per-metric
        # bookkeeping on every step would cost more than a small model's step.
        self._train_sums.add(torch.stack([loss, recon, kl]).detach(), x.shape[0])
        log_now = (self.global_step + 1) % self.trainer.log_every_n_steps == 0
        if log_now or batch_idx + 1 == self.trainer.num_training_batches:
            self._train_sampled = self.sampled_metrics(out)
        if log_now:
            window = self._train_sums.take_window()
            if window is not None:
                self.log_train_step(self.reduced_train_metrics(*window, self._train_sampled), kl_weight)
        return objective

    def log_train_step(self, metrics: dict[str, Tensor], kl_weight: float) -> None:
        """The window's metrics, written straight to the loggers in one call, at the step
        Lightning would use, instead of through ``self.log``: that cost ~1 ms a call on
        the 2-core CPU and made the progress bar re-read every logged key on every later
        step, together ~5% of a small MLP's step (bench/throughput.py). The epoch means go
        through ``self.log`` (the progress bar shows ``train/elbo_epoch``)."""
        if not self.loggers:
            return
        values = torch.stack(list(metrics.values())).tolist()  # one transfer to the host
        row = {f"train/{name}": value for name, value in zip(metrics, values)}
        row["train/kl_weight"] = float(kl_weight)
        row["epoch"] = self.current_epoch  # as Lightning adds to the metrics it logs
        for logger in self.loggers:
            logger.log_metrics(row, step=self.global_step)

    def sampled_metrics(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """Metrics of one training batch that are not averaged over steps: sigma's statistics."""
        if not self.is_gaussian:
            return {}
        stats = self.likelihood.sigma_stats(out["decoder_out"])
        return {k: stats[k] for k in ("sigma_mean", "sigma_min", "sigma_max", "sigma_sq_mean")}

    def reduced_train_metrics(self, sums: Tensor, images: int, sampled: dict[str, Tensor]) -> dict[str, Tensor]:
        """Means over images (and over DDP processes: one all-reduce) of the summed
        terms, the ELBO and bits/dim from them, and the sampled sigma statistics
        averaged over processes."""
        packed = torch.cat(
            [sums, sums.new_tensor([images]), *(v.detach().float().reshape(1) for v in sampled.values())]
        )
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        loss, recon, kl = (packed[: len(TrainingSums.NAMES)] / packed[len(TrainingSums.NAMES)]).unbind()
        stats = dict(zip(sampled, (packed[len(TrainingSums.NAMES) + 1 :] / world).unbind()))
        return {"loss": loss, **self.elbo_metrics(recon, kl, stats)}

    def on_train_epoch_start(self) -> None:
        self._train_sums.reset()

    def on_train_epoch_end(self) -> None:
        epoch = self._train_sums.take_epoch()
        if epoch is not None:
            metrics = self.reduced_train_metrics(*epoch, self._train_sampled)
            # already global means; sync_dist tells Lightning so (it averages equal numbers)
            self.log("train/elbo_epoch", metrics.pop("elbo"), prog_bar=True, sync_dist=True)
            self.log_dict({f"train/{k}_epoch": v for k, v in metrics.items()}, sync_dist=True)

    def _eval_step(self, stage: str, x: Tensor) -> None:
        out = self(x)
        metrics = self.step_metrics(out)
        self.latent_usage[stage].update(out["mu"], out["kl_per_dim"])
        if stage == "test" and self.test_iw_samples > 0:
            nll_iw = -self.importance_weighted_log_likelihood(x, self.test_iw_samples).mean()
            metrics["nll_iw"] = nll_iw
            metrics["bpd_iw"] = self.bits_per_dim(nll_iw)
        for name, value in metrics.items():
            metric = self.eval_metrics[stage][name]
            if isinstance(metric, MeanMetric):
                metric.update(value, weight=x.shape[0])
            else:  # an extreme of the set
                metric.update(value)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "elbo", batch_size=x.shape[0])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch[0])

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch[0])

    def on_validation_epoch_start(self) -> None:
        self.measure_sigma_on_training_data()

    def on_test_epoch_start(self) -> None:
        self.measure_sigma_on_training_data()

    def on_validation_epoch_end(self) -> None:
        self.log_latent_usage("val")
        if not self.trainer.sanity_checking:
            # which weights the latest val/ numbers are of (see vaelab.checkpoints)
            self.validated_at_step = self.global_step

    def on_test_epoch_end(self) -> None:
        usage = self.log_latent_usage("test")
        self.latent_report = {k: v.tolist() for k, v in usage.items() if k != "active_units"}

    def log_latent_usage(self, stage: str) -> dict[str, Tensor]:
        """``<stage>/active_units`` logged; the metric's per-dimension results returned."""
        metric = self.latent_usage[stage]
        usage = metric.compute()
        metric.reset()
        self.log(f"{stage}/active_units", usage["active_units"].float(), sync_dist=False)
        return usage

    # -- sigma=optimal: eval-mode sigma from the training data ---------------------------
    def measure_sigma_on_training_data(self) -> None:
        """For a likelihood whose eval-mode sigma is a statistic of training data
        (sigma=optimal), measure it with the current weights on the trainer's training
        images (vaelab.model.training_sigma); without them the saved value stays."""
        likelihood = self.likelihood
        if not getattr(likelihood, "measures_sigma_on_training_data", False) or self._trainer is None:
            return
        images = getattr(getattr(self.trainer, "datamodule", None), "train_images", None)
        if images is None or not len(images):
            return  # keeps the value saved with the weights
        trainer = self.trainer
        reduce_sum = partial(trainer.strategy.reduce, reduce_op="sum")
        measure_train_mse(self, images, self.levels, self.device, trainer.global_rank, trainer.world_size, reduce_sum)

    # -- the importance-weighted bound (vaelab.model.importance) ------------------------
    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        """log p(x, z_k) - log q(z_k|x) for ``num_samples`` draws: shape (num_samples, B)."""
        return importance.log_importance_weights(self, x, num_samples)

    def importance_weighted_log_likelihood(self, x: Tensor, num_samples: int) -> Tensor:
        """The IWAE bound per example, ``iw_chunk_elements`` decoder outputs at a time."""
        return importance.importance_weighted_log_likelihood(self, x, num_samples, self.iw_chunk_elements)

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        mu, _ = self.encode(x)
        return self.likelihood.mean(self.decode(mu))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn((num_samples, self.latent_dim), generator=generator, device="cpu").to(self.device)
        return self.likelihood.mean(self.decode(z))

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or torch.optim.Adam
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- checkpoints ------------------------------------------------------------------------
    def last_checkpoint(self) -> str | None:
        from vaelab.checkpoints import last_state_path

        return last_state_path(self.trainer) if self._trainer is not None else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["vaelab_config"] = self.run_config
        # The random streams (dequantisation, binarisation, z samples) go with the
        # weights, so a resumed run continues exactly as an uninterrupted one would.
        checkpoint["vaelab_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["vaelab_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resume_rng = checkpoint.get("vaelab_rng")

    def on_train_start(self) -> None:
        # restored here, after the sanity-check validation that a resumed fit runs first
        rng = getattr(self, "_resume_rng", None)
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._resume_rng = None
