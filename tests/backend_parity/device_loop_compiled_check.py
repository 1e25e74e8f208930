"""What `device_fit`'s compiled functions hold on to; prints a JSON report.

`KERAS_BACKEND=jax python device_loop_compiled_check.py` (or `=tensorflow`);
`tests/test_device_loop.py` asserts.
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


def recompiled_trains_with_its_new_loss() -> bool:
    """After a recompile with another loss (twice the first; a learning rate of 0, the
    same state structure and call shapes, so nothing forces a new trace), `device_fit`
    trains with the new loss: the epoch's loss is `evaluate`'s."""
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Rescaling(1 / 255), keras.layers.Dense(10)])  # fmt: skip
    model.compile(optimizer="sgd", steps_per_execution=2,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    device_loop.device_fit(model, X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    model.compile(optimizer=keras.optimizers.SGD(0.0), steps_per_execution=2,
                  loss=lambda y, logits: 2 * keras.losses.sparse_categorical_crossentropy(
                      y, logits, from_logits=True))  # fmt: skip
    history = device_loop.device_fit(model, X, Y, batch_size=16, epochs=1, verbose=0,
                                     shuffle=False)  # fmt: skip
    loss = model.evaluate(X, Y, batch_size=16, verbose=0)
    return bool(np.isclose(history.history["loss"][0], loss, rtol=1e-5))


def validation_sees_weights_swapped_in_at_test_begin() -> float:
    """`val_loss` when a callback zeroes the weights at `on_test_begin` (and puts them
    back at `on_test_end`), as ASGD's and EMA's weight swaps do: all-zero logits, a
    loss of ln 10 on every sample."""

    class ZeroForValidation(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            self.kept = self.model.get_weights()
            self.model.set_weights([np.zeros_like(w) for w in self.kept])

        def on_test_end(self, logs=None):
            self.model.set_weights(self.kept)

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Rescaling(1 / 255), keras.layers.Dense(10)])  # fmt: skip
    model.compile(optimizer="sgd", steps_per_execution=2,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    history = device_loop.device_fit(model, X, Y, batch_size=16, epochs=1, verbose=0,
                                     validation_data=(X[:24], Y[:24]),
                                     callbacks=[ZeroForValidation()])  # fmt: skip
    return history.history["val_loss"][0]


def while_loops(length: int) -> int:
    """While loops in the compiled training call of `length` steps: `lax.fori_loop`'s
    on JAX, the `tf.while_loop` of the `tf.function` on TensorFlow."""
    model = build_model("residual_cnn")
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model._symbolic_build(data_batch=(X[:8], Y[:8]))
    order = np.arange(len(Y), dtype=np.int32)
    if keras.backend.backend() == "tensorflow":
        train_chunk, _ = device_loop._tf_compiled(model)
        length = device_loop.tf_call_length(length, looped=length > 1)
        graph = train_chunk.get_concrete_function(X, Y, order, 0, length, 8).graph
        return sum(op.type in ("While", "StatelessWhile") for op in graph.get_operations())
    state = device_loop._read(device_loop._train_variables(model))
    train_chunk, _ = device_loop._compiled(model)
    hlo = train_chunk.lower(state, X, Y, order, 0, length, batch=8, looped=length > 1).as_text()
    return hlo.count("stablehlo.while")


def tf_xla_placement() -> dict:
    """Where XLA runs in a 3-step call of an XLA-compiled model (TensorFlow): calls of
    the XLA-compiled step, in the graph and in the while loop's body, and whether
    the whole call is under XLA."""
    model = build_model("bn_mlp")
    model.compile(optimizer="sgd", jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    model._symbolic_build(data_batch=(X[:8], Y[:8]))
    train_chunk, _ = device_loop._tf_compiled(model)
    order = np.arange(len(Y), dtype=np.int32)
    length = device_loop.tf_call_length(3, looped=True)
    graph = train_chunk.get_concrete_function(X, Y, order, 0, length, 8).graph.as_graph_def()

    def xla_calls(nodes):
        return sum(n.attr["_XlaMustCompile"].b for n in nodes if "_XlaMustCompile" in n.attr)

    return {
        "graph": xla_calls(graph.node),
        "loop_body": sum(
            xla_calls(f.node_def)
            for f in graph.library.function
            if f.signature.name.startswith("while_body")
        ),  # fmt: skip
        "whole_call": bool(train_chunk._jit_compile),
    }


def compiled_calls() -> dict:
    """Compiled training and validation calls (JAX) or traces (TensorFlow) after 2
    epochs: 38 images in batches of 4 at 4 steps per call (calls of 4, 4, 1 full
    batches and the partial batch of 2), validation on 22 (calls of 4 and 1 full
    batches and the partial one); and the epoch losses. On JAX, also with the number
    of steps static (`lax.scan`, as on a GPU): one more call each, the same losses."""

    def train():
        keras.utils.set_random_seed(0)
        model = build_model("relu_mlp")
        model.compile(optimizer="sgd", steps_per_execution=4,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
        history = device_loop.device_fit(model, X[:38], Y[:38], batch_size=4, epochs=2,
                                         verbose=0, validation_data=(X[:22], Y[:22]))  # fmt: skip
        if keras.backend.backend() == "tensorflow":
            chunks = device_loop._tf_compiled(model)
            counts = (f.experimental_get_tracing_count() for f in chunks)
        else:
            counts = (f._cache_size() for f in device_loop._compiled(model))
        return {**dict(zip(("train", "test"), counts)),
                "losses": history.history["loss"] + history.history["val_loss"]}  # fmt: skip

    calls = {"traced": train()}
    if keras.backend.backend() == "jax":
        traced = device_loop._traced_trip_count
        device_loop._traced_trip_count = lambda: False
        try:
            calls["static"] = train()
        finally:
            device_loop._traced_trip_count = traced
    return calls


report = {
    "model_freed": model_freed_after_device_fit(),
    "recompiled_new_loss": recompiled_trains_with_its_new_loss(),
    "val_loss_zeroed": validation_sees_weights_swapped_in_at_test_begin(),
    "while_loops": {str(k): while_loops(k) for k in (1, 3)},
    "compiled_calls": compiled_calls(),
}
if keras.backend.backend() == "tensorflow":
    report["xla"] = tf_xla_placement()
print(json.dumps(report))
