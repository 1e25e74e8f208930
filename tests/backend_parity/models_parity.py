"""Forward pass of every registered model on this process's Keras backend.

`KERAS_BACKEND=B python models_parity.py WEIGHTS.npz INPUT.npy OUT.npz`: builds each
model, loads the weights the TensorFlow parent saved (same order of
`model.weights`), predicts on the same images and saves the outputs.
"""

import sys

import numpy as np

from kmnist_lab.models import build_model, list_models

weights = np.load(sys.argv[1])
x = np.load(sys.argv[2])
outputs = {}
for name in list_models():
    model = build_model(name)
    values = [weights[f"{name}/{i}"] for i in range(len(model.weights))]
    for variable, value in zip(model.weights, values):
        variable.assign(value)
    outputs[name] = np.asarray(model.predict(x, verbose=0))
np.savez(sys.argv[3], **outputs)
