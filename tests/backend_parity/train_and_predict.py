"""Train 1 epoch with scripts/train.py on this backend, then save the test-set classes.

`KERAS_BACKEND=B python train_and_predict.py DATA_DIR OUT_DIR`
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import _cli  # noqa: E402
import train  # noqa: E402

data_dir, out = sys.argv[1], Path(sys.argv[2])
argv = ["--arch", "bn_mlp", "--dataset", "kmnist", "--data-dir", data_dir, "--epochs", "2",
        "--batch-size", "16", "--output-dir", str(out), "--run-name", "run", "-q"]  # fmt: skip
code = _cli.run(train.main, argv)
if code:
    sys.exit(code)
from kmnist_lab.data import load_dataset  # noqa: E402
from kmnist_lab.models import load_keras_model  # noqa: E402

x = load_dataset("kmnist", data_dir=data_dir).test[0]
model = load_keras_model(out / "run" / "model.keras")
np.save(out / "classes.npy", np.argmax(model.predict(x, verbose=0), axis=1))
