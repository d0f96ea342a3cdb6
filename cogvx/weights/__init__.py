"""Model weights: install a tarball or folder into the cache (`install`; `pget`, `space` and the
versioned folders with their locks in `folders`), pack one (`pack`), check a tar stream while it
arrives (`tarcheck`, `extract`), read tensor files (`tensors`).

`install_weights` and `pack_folder` are the public entry points (scripts outside the package use
them); `install_model` installs a model's weights under its cache folder and finds its root.
"""

from cogvx.errors import MissingWeightsError, WeightsError
from cogvx.settings import weights_cache_root
from cogvx.weights.install import find_weights_root, install_model, install_weights
from cogvx.weights.pack import pack_folder
from cogvx.weights.tarcheck import MANIFEST_NAME, MARKER_NAME
from cogvx.weights.tensors import read_tensor_file

__all__ = [
    "MANIFEST_NAME",
    "MARKER_NAME",
    "MissingWeightsError",
    "WeightsError",
    "find_weights_root",
    "install_model",
    "install_weights",
    "pack_folder",
    "read_tensor_file",
    "weights_cache_root",
]
