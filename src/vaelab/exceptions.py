"""The errors vaelab raises on purpose, for a person to act on.

Every one of them derives from :class:`UserError`: the command line reports it as
one line (``error: <message>``, exit code 2), because its message already says what
to change. Anything else that escapes is a bug and keeps its traceback. This module
imports nothing heavy, so the model and data code can raise these without pulling
in Hydra or the command-line reporting (:mod:`vaelab.errors`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

DOWNLOAD_HINT = "set data.download=true to fetch them, or put the files there"


def _rebuilt(kind: type[BaseException], args: tuple, state: dict) -> BaseException:
    """An error of ``kind`` with its message ``args`` and attributes, not through its
    ``__init__`` (whose arguments are not the message): how :class:`UserError`s unpickle."""
    error = kind.__new__(kind)
    BaseException.__init__(error, *args)
    error.__dict__.update(state)
    return error


class UserError(Exception):
    """An error whose message tells the user what to change (reported in one line).

    Picklable whatever its subclass's ``__init__`` takes: a parallel sweep's worker
    process sends its job's error back pickled, and an error that could not be
    rebuilt there (Python re-calls ``__init__`` with the message alone) stopped the
    whole sweep instead of failing its one job."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return _rebuilt, (type(self), self.args, dict(self.__dict__))


class ConfigError(UserError, ValueError):
    """A config value outside its allowed range, or values that do not fit together."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: the loss became NaN or infinite."""

    def __init__(self, value: float, step: int, epoch: int, checkpoint: str | None, scale_floor: str | None = None):
        """``scale_floor``: the likelihood's setting that keeps its scale from 0
        (:attr:`vaelab.model.likelihoods.Likelihood.scale_floor`), named among the remedies."""
        kept = (
            f"the last good checkpoint, {checkpoint}, is kept as it was"
            if checkpoint
            else "no checkpoint had been saved yet"
        )
        floor = f", raise {scale_floor}" if scale_floor else ""
        super().__init__(
            f"training stopped: the loss became {value} at step {step} (epoch {epoch}); {kept}. "
            f"Lower model.optimizer.lr{floor} or set trainer.gradient_clip_val."
        )
        self.step, self.epoch, self.checkpoint = step, epoch, checkpoint


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset's files are not where the source was told to look.

    The message lists what was expected where and how to get it, because the
    person reading it is usually running a fresh checkout with no data yet.
    """

    @classmethod
    def missing_files(cls, dataset: str, root: Path, paths: Iterable[str | Path]) -> DatasetNotFoundError:
        listed = "\n".join(f"  {p}" for p in paths)
        return cls(f"{dataset} not found in {root}; missing:\n{listed}\n{DOWNLOAD_HINT}.")


class BadFileError(UserError, ValueError):
    """A file the user handed over exists but is not what it should be: empty,
    truncated, of another format, or written by another program."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DatasetFormatError(BadFileError):
    """A dataset file exists but is corrupt, truncated or not in the expected format."""


class CheckpointError(BadFileError):
    """A checkpoint file is missing, unreadable, or not a vaelab-train checkpoint of this model."""


class ChecksumError(UserError, ValueError):
    """A downloaded file's checksum differs from the expected one."""

    def __init__(self, url: str, algorithm: str, expected: str, actual: str) -> None:
        self.url = url
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__(f"{algorithm} mismatch for {url}: expected {expected}, got {actual}")


class JobBusyError(UserError):
    """Another process is training this job of a sweep into the same folder."""


class MissingExtraError(UserError):
    """A feature whose packages are an optional extra of vaelab that is not installed."""

    def __init__(self, extra: str, feature: str, module: str) -> None:
        self.extra = extra
        super().__init__(f"{feature} needs {module}, which the core install leaves out: pip install 'vaelab[{extra}]'")


def require_extra(module: str, extra: str, feature: str) -> None:
    """Import ``module`` (an optional extra's package) or raise :class:`MissingExtraError`."""
    import importlib

    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] != module.split(".")[0]:
            raise  # the extra is there but something it imports is not: not the user's missing extra
        raise MissingExtraError(extra, feature, module) from None
