"""`python -m tuning CONFIG_JSON`: one chief or worker process of a distributed search.

Started by `tuning.distributed.launch_local_cluster` (`scripts/tune.py --workers N`)
with keras-tuner's `KERASTUNER_*` variables set; CONFIG_JSON is the search's
`logs/launch.json`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tuning.distributed import child_main  # noqa: E402

sys.exit(child_main(sys.argv[1:]))
