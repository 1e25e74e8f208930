"""kmnist_lab: Keras 3 image-classification experiments on MNIST-style data.

The library never parses command lines and never prints; it logs through the
`kmnist_lab` logger. Scripts under `scripts/` are the thin command-line layer.
"""

from kmnist_lab.errors import ConfigError, DataError, KmnistLabError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "KmnistLabError", "__version__"]
