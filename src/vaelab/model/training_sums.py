"""The training loss and the ELBO's two terms, summed on the device between logs."""

from __future__ import annotations

from torch import Tensor


class TrainingSums:
    """The training loss and the ELBO's two terms, summed over images on the device.

    One in-place add per step and no host sync: the step costs what the maths costs.
    The window (since the last log) is read every ``log_every_n_steps`` and folded into
    the epoch's sums, which are read at the end of the epoch.
    """

    NAMES = ("loss", "recon", "kl")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.window: Tensor | None = None
        self.window_images = 0
        self.epoch: Tensor | None = None
        self.epoch_images = 0

    def add(self, values: Tensor, images: int) -> None:
        """``values``: the step's batch means of NAMES, detached."""
        if self.window is None:
            self.window = values * images
        else:
            self.window.add_(values, alpha=images)
        self.window_images += images

    def take_window(self) -> tuple[Tensor, int] | None:
        """The window's sums and image count (None if empty), folded into the epoch's."""
        if self.window is None:
            return None
        taken = (self.window, self.window_images)
        self.epoch = self.window if self.epoch is None else self.epoch + self.window
        self.epoch_images += self.window_images
        self.window, self.window_images = None, 0
        return taken

    def take_epoch(self) -> tuple[Tensor, int] | None:
        self.take_window()
        taken = None if self.epoch is None else (self.epoch, self.epoch_images)
        self.reset()
        return taken
