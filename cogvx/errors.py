"""The error hierarchy: what went wrong, for whom.

- `InputError` (a ValueError): a request input is wrong; the message names the input and what
  is allowed. Cog reports it as a failed prediction and the server stays READY.
- `SetupError` (a RuntimeError): a model could not be set up; the message names the URL or file.
  `WeightsError`: weights could not be fetched, verified or installed. `MissingWeightsError`: the
  deployment has no weights for a model. `WeightsFileError`: a weights file is unreadable or
  has the wrong layout.
- `CapacityError` (a RuntimeError): a request is valid but too big for this machine's memory.
"""

from __future__ import annotations


class CogvxError(Exception):
    """Base of every error this package raises on purpose."""


class InputError(CogvxError, ValueError):
    """A request input is wrong; the message names the input and the allowed values."""


class SetupError(CogvxError, RuntimeError):
    """A model could not be set up; the message names the URL or file."""


class WeightsError(SetupError):
    """Weights could not be fetched, verified or installed; the message names the source."""


class MissingWeightsError(SetupError):
    """The deployment provides no weights for a model; the message says how to provide them."""


class WeightsFileError(SetupError):
    """A weights file could not be read as tensors, or has the wrong layout; names the file."""


class CapacityError(CogvxError, RuntimeError):
    """A valid request needs more memory than this machine has; the message says how much."""


class LoraError(InputError):
    """A LoRA source, file or shape is not usable; the message names it and says why."""


class StateDictError(WeightsFileError):
    """A weights file could not be read as a state dict of tensors, or has the wrong layout."""


class CaptionSetupError(SetupError):
    """The caption model cannot be set up: misplaced weights, or a GPU too small for it."""


class EnhanceSetupError(SetupError):
    """The enhance model cannot be set up: misplaced weights or a missing package."""


class EnhanceMemoryError(CapacityError):
    """A run would not fit (or did not fit) in the device's memory; names the estimate."""
