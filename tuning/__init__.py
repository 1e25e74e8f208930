"""Hyper-parameter searches with keras-tuner, built on `kmnist_lab.models.build_model`.

- `tuning.hypermodels`: the search spaces (`a_grid`, `mlp`, `depth_width`, `losses`,
  `resnet18`, `residual_cnn`) as `keras_tuner.HyperModel`s.
- `tuning.tuners`: keras-tuner tuners/oracles with per-trial bookkeeping (epochs,
  wall time, memory, worker) and resumable, parallel grid search.
- `tuning.search`: `run_search(SearchConfig(...))`, local, resumed or distributed.
- `tuning.distributed`: keras-tuner's chief/worker mode (`--workers N`).
- `tuning.results`, `tuning.figures`, `tuning.finalize`: what a search writes.

See `docs/tuning.md`.
"""

import importlib

# Imported on first use (PEP 562), so that `import tuning` loads no Keras: `python -m
# tuning` sets up TensorFlow's logging (tuning/__main__.py) before Keras loads it.
_EXPORTS = {
    "SPACES": "tuning.hypermodels",
    "SpaceHyperModel": "tuning.hypermodels",
    "TrialSpec": "tuning.hypermodels",
    "get_hypermodel": "tuning.hypermodels",
    "list_spaces": "tuning.hypermodels",
    "TUNER_NAMES": "tuning.search",
    "SearchConfig": "tuning.search",
    "SearchError": "tuning.search",
    "SearchResult": "tuning.search",
    "run_search": "tuning.search",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tuning' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})
