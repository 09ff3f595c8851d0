"""Hydra's submitit SLURM launcher, stopping on jobs the cluster can never start.

``conf/hydra/launcher/slurm.yaml`` names :class:`VaelabSlurmLauncher` as its
``_target_`` (Hydra takes launchers from the ``hydra_plugins`` package only, hence
this module). It launches exactly as the plugin does, in a worker thread, while the
calling thread watches the jobs it submitted (:class:`vaelab.slurm_watch.PendingWatch`):
a job pending for a reason that never clears is cancelled and the sweep stops with
a one-line :class:`vaelab.slurm_requests.SlurmRequestError`; so does a submission that
sbatch refuses. The worker thread, left waiting for results that will never come,
is a daemon and ends with the process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ModuleNotFoundError as error:
    # the slurm extra is not installed: Hydra imports this module at every start-up, which
    # must not fail; hydra/launcher=slurm then says what to install (vaelab.errors)
    if not str(error.name).startswith(("hydra_plugins.hydra_submitit_launcher", "submitit")):
        raise
    from hydra.plugins.launcher import Launcher as SlurmLauncher  # type: ignore[assignment]


class VaelabSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # imported here, not with the module: Hydra imports every plugin at start-up
        from vaelab import slurm_watch

        watch = slurm_watch.PendingWatch(self.params["submitit_folder"])
        outcome: dict[str, Any] = {}

        def submit_and_wait() -> None:
            try:
                outcome["returns"] = super(VaelabSlurmLauncher, self).launch(job_overrides, initial_job_idx)
            except BaseException as error:  # noqa: BLE001 - handed to the calling thread
                outcome["error"] = error

        worker = threading.Thread(target=submit_and_wait, name="submitit-launch", daemon=True)
        worker.start()
        for wait_s in slurm_watch.poll_intervals():
            worker.join(wait_s)
            if not worker.is_alive():
                break
            error = watch.check()
            if error is not None:
                raise error
        if "error" in outcome:
            raise slurm_watch.refusal(outcome["error"], self.params) or outcome["error"]
        return outcome["returns"]
