"""Networks, likelihoods and the VAE LightningModule."""
