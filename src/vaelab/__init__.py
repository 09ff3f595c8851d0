"""vaelab: a Hydra + PyTorch Lightning experiment template for variational autoencoders."""

__version__ = "0.1.0"
