"""The names the command lines offer, importable without Keras.

`scripts/train.py` and `scripts/tune.py` build their `--help` and check their
choices (`--arch`, `--loss`, `--optimizer`, `--space`, ...) before any backend is
chosen. Reading those names from the registries imports Keras and its backend, which
made `train.py --help` take 4 s and `tune.py --help`, or a mistyped `--arch`, about
7 s on 2 CPU cores; from here they take a fraction of a second.

Each is a snapshot of a registry, in its order. `tests/test_names.py` checks
that each equals its registry, so adding a model, loss, optimizer, activation,
search space or tuner without adding it here fails the tests (with the tuple to
paste).
"""

from __future__ import annotations

# kmnist_lab.models.list_models()
ARCHS = ("plain_mlp", "relu_mlp", "bn_mlp", "mlp", "resnet18", "residual_cnn")
# kmnist_lab.losses.list_losses(), without the regression losses (train.py trains classifiers)
CLASSIFICATION_LOSSES = ("ce", "focal", "am_softmax", "arm_softmax", "hinge", "kld")
# kmnist_lab.optimizers.list_optimizers()
OPTIMIZERS = (
    "sgd", "sgdm", "nesterov", "adam", "adamw", "adagrad", "adamax", "rmsprop", "nadam",
    "adadelta", "lion", "rprop", "asgd",
)  # fmt: skip
# kmnist_lab.models.blocks.ACTIVATIONS (arch mlp) and kmnist_lab.models.resnet.RESNET_ACTIVATIONS
ACTIVATIONS = ("relu", "sigmoid", "tanh", "selu", "gelu", "elu", "silu", "hard_swish", "linear")
RESNET_ACTIVATIONS = ("relu", "sigmoid", "tanh")
# tuning.hypermodels.SPACES: name -> summary (tune.py's --help lists them)
SEARCH_SPACES = {
    "a_grid": "report A's grid on plain_mlp (SGD): batch x lr x epochs = 60 cells",
    "mlp": "arch plain/relu/bn MLP, log-uniform lr, batch size, optimizer",
    "depth_width": "report E: depth x width, activation, BatchNorm, lr, L2, batch (SGD+momentum)",
    "losses": "bn_mlp: loss choice and its parameters (margin/scale, gamma, delta, smoothing)",
    "resnet18": "report B: ResNet-18 activation, optimizer, lr, batch, augmentation",
    "residual_cnn": "report C: residual CNN optimizer (+momentum), lr, batch, augmentation",
}
# tuning.search.TUNER_NAMES
TUNERS = ("hyperband", "grid", "random", "bayesian")
