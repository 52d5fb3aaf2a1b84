"""What goes wrong when weights are loaded: one ``HubLoadError`` subclass per kind of failure.

``HubLoadError`` and ``CheckpointMismatchError`` live in :mod:`timm_metalayers.state_dict` (the model
families' checkpoint filters and fine-tuning raise them too) and are re-exported here.
"""
from ..state_dict import CheckpointMismatchError, HubLoadError

__all__ = [
    'HubLoadError', 'UnsafeCheckpointError', 'CorruptCheckpointError', 'MissingFileError', 'MissingWeightsError',
    'UnknownArchitectureError', 'CheckpointMismatchError', 'HubConnectionError',
]


class UnsafeCheckpointError(HubLoadError):
    """A pickle checkpoint was refused (not opted in, or it holds more than tensors)."""


class CorruptCheckpointError(HubLoadError, ValueError):
    """A weights or config file is truncated, corrupt or not in the format its name says."""


class MissingFileError(HubLoadError, FileNotFoundError):
    """A repository, revision, config or local path does not exist."""


class MissingWeightsError(MissingFileError):
    """A repository or folder has no weights file this module may load."""


class UnknownArchitectureError(HubLoadError, ValueError):
    """A config names an architecture timm does not know."""


class HubConnectionError(HubLoadError, ConnectionError):
    """The Hub could not be reached (or offline mode is on) and the file is not in the local cache."""
