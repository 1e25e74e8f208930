"""Data-parallel vs single-device training on a CPU split into 2 logical devices.

Run as `KERAS_BACKEND=B python distribute_check.py ARCH JIT`; prints one JSON line:
the number of devices and the largest absolute weight difference after a few SGD steps
with the same global batch, from the same initial weights.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from kmnist_lab.distribute import device_count, distribution_scope, split_cpu  # noqa: E402

split_cpu(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kmnist_lab.models import build_model  # noqa: E402

arch = sys.argv[1] if len(sys.argv) > 1 else "relu_mlp"
jit = (sys.argv[2] == "on") if len(sys.argv) > 2 else False
rng = np.random.default_rng(0)
x = rng.integers(0, 256, size=(128, 28, 28), dtype=np.uint8)
y = rng.integers(0, 10, size=(128,))


def train(mode, initial=None):
    with distribution_scope(mode):
        keras.utils.set_random_seed(0)
        model = build_model(arch)
        if initial is not None:
            model.set_weights(initial)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
        start = [w.copy() for w in model.get_weights()]
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return start, model.get_weights()


initial, single = train("none")
_, parallel = train("data-parallel", initial)
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single, parallel))
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(initial, single))
print(json.dumps({"devices": device_count(), "max_abs_diff": diff, "moved": moved}))
