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

from tuning.hypermodels import SPACES, SpaceHyperModel, TrialSpec, get_hypermodel, list_spaces
from tuning.search import TUNER_NAMES, SearchConfig, SearchError, SearchResult, run_search

__all__ = [
    "SPACES",
    "TUNER_NAMES",
    "SearchConfig",
    "SearchError",
    "SearchResult",
    "SpaceHyperModel",
    "TrialSpec",
    "get_hypermodel",
    "list_spaces",
    "run_search",
]
