"""When a posterior counts as collapsed: one definition for training's warning, the
test metrics and vaelab-compare (no torch here, so the comparison imports it cheaply).

Posterior collapse: the decoder ignores z and every q(z|x) equals the prior. Burda et
al. (2016) call a latent dimension *active* when its posterior mean moves with the
data, Cov_x(E_q[z_i|x]) > 0.01; a run has collapsed when none is, or when its whole
test KL is under half a nat (then no dimension carries information worth a bit).
"""

from __future__ import annotations

#: Burda et al. (2016): a dimension with Cov_x(E_q[z|x]) above this is active
ACTIVE_UNIT_THRESHOLD = 0.01
#: below this test KL (nats per image) the posterior has collapsed, whatever AU says
COLLAPSED_KL_NATS = 0.5


def is_collapsed(active_units: float | None, kl: float | None) -> bool:
    """Whether a run's posterior collapsed: no active unit, or a KL of almost nothing."""
    return (active_units is not None and active_units < 1) or (kl is not None and kl < COLLAPSED_KL_NATS)
