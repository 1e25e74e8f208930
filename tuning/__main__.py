"""`python -m tuning CONFIG_JSON`: one chief or worker process of a distributed search.

Started by `tuning.distributed.launch_local_cluster` (`scripts/tune.py --workers N`)
with keras-tuner's `KERASTUNER_*` variables set; CONFIG_JSON is the search's
`logs/launch.json`.
"""

import os
import sys
from pathlib import Path

_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if (_SCRIPTS / "_cli.py").is_file():
    # A checkout (where tune.py starts these processes): set up as the scripts do, so
    # the logs hold no TensorFlow start-up lines below TF_CPP_MIN_LOG_LEVEL.
    sys.path.insert(0, str(_SCRIPTS))
    import _cli

    _cli.prepare_process()
else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tuning.distributed import child_main  # noqa: E402

sys.exit(child_main(sys.argv[1:]))
