"""Publish ``timm_metalayers`` models to the Hugging Face Hub and load them back, safely.

Publishing reuses timm's own Hub writer (:func:`timm.models.save_for_hf`), so a repository
written here loads with plain timm::

    save_for_hub(model, "out/")                      # model.safetensors + config.json + README.md
    push_to_hub(model, "my-org/my-resnet")            # the same, uploaded with huggingface_hub
    timm.create_model("hf-hub:my-org/my-resnet", pretrained=True)

Loading through this package adds checks around timm's path: weights come only from
safetensors unless pickles are explicitly allowed (and even then ``torch.load(weights_only=True)``),
files are verified, and every key and shape is checked before anything is copied into the model::

    model = create_model_from_hub("my-org/my-resnet")         # or "hf-hub:my-org/my-resnet@<rev>"
    load_weights(model, "path/to/model.safetensors")          # a file, a folder or a Hub repo id

Every failure raises a :class:`HubLoadError` subclass whose message names the file, repository or
keys involved; a model passed to :func:`load_weights` is left untouched when loading fails.

Modules: ``errors`` (the error classes), ``files`` (reading weights files, the pickle policy),
``config`` (checking ``config.json``), ``download`` (Hub downloads and their errors), ``loading``
(checked loading into a model), ``create`` (:func:`create_model_from_hub`), ``complexity`` and
``cards`` (model cards), ``publish`` (:func:`save_for_hub`, :func:`push_to_hub`).
"""
from .cards import pretrained_model_card, render_model_card
from .complexity import count_macs, count_params
from .create import create_model_from_hub
from .download import parse_repo_spec
from .errors import (
    CheckpointMismatchError, CorruptCheckpointError, HubConnectionError, HubLoadError, MissingFileError,
    MissingWeightsError, UnknownArchitectureError, UnsafeCheckpointError)
from .files import ALLOW_PICKLE_ENV, read_state_dict
from .loading import load_weights
from .publish import push_to_hub, save_for_hub

__all__ = [
    'ALLOW_PICKLE_ENV', 'HubLoadError', 'UnsafeCheckpointError', 'CorruptCheckpointError', 'MissingFileError',
    'MissingWeightsError', 'UnknownArchitectureError', 'CheckpointMismatchError', 'HubConnectionError',
    'save_for_hub', 'push_to_hub', 'read_state_dict', 'load_weights', 'create_model_from_hub',
    'count_params', 'count_macs', 'render_model_card', 'pretrained_model_card',
]
