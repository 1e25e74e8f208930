"""What `device_fit`'s compiled functions hold on to; prints a JSON report.

`KERAS_BACKEND=jax python device_loop_compiled_check.py`; `tests/test_device_loop.py`
asserts.
"""

import gc
import json
import weakref

import keras
import numpy as np

from kmnist_lab import device_loop
from kmnist_lab.models import build_model

X = np.random.default_rng(0).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
Y = np.arange(40) % 10


def model_freed_after_device_fit() -> bool:
    """A model trained through `device_fit` and then dropped is garbage-collected."""
    model = build_model("relu_mlp")
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    device_loop.device_fit(model, X, Y, batch_size=16, epochs=1, verbose=0,
                           validation_data=(X[:8], Y[:8]))  # fmt: skip
    ref = weakref.ref(model)
    del model
    gc.collect()
    return ref() is None


def while_loops(length: int) -> int:
    """`while` ops in the compiled training call of `length` steps (`lax.scan`'s loop)."""
    model = build_model("residual_cnn")
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model._symbolic_build(data_batch=(X[:8], Y[:8]))
    state = device_loop._read(device_loop._train_variables(model))
    train_chunk, _ = device_loop._compiled(model)
    order = np.arange(len(Y), dtype=np.int32)
    hlo = train_chunk.lower(state, X, Y, order, 0, length=length, batch=8).as_text()
    return hlo.count("stablehlo.while")


print(
    json.dumps(
        {
            "model_freed": model_freed_after_device_fit(),
            "while_loops": {str(k): while_loops(k) for k in (1, 3)},
        }
    )
)
