"""The README's tables are generated from the registries and must be current."""

import update_readme


def test_readme_tables_match_the_registries(capsys):
    assert update_readme.main(["--check"]) == 0, capsys.readouterr().err


def test_quickstart_has_exactly_the_two_commands():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    quick = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in quick.splitlines() if line.startswith("pip install")]
    assert commands == [
        "pip install . && python scripts/train.py --arch bn_mlp",
        'pip install -e ".[dev]" && python -m pytest',
    ]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_docs_state_the_batchnorm_momentum_the_mlps_use():
    """docs/optimizers.md explains --precise-bn by BatchNorm's momentum: it must be the
    momentum `bn_mlp`'s BatchNorm layers have (0.9, not Keras' default 0.99)."""
    from pathlib import Path

    import keras

    from kmnist_lab.models import build_model

    model = build_model("bn_mlp")
    momenta = {
        layer.momentum
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert len(momenta) == 1
    docs = Path(__file__).resolve().parents[1] / "docs"
    for name in ("optimizers.md", "results.md"):
        text = (docs / name).read_text()
        assert f"momentum {next(iter(momenta)):g} " in text, name
        assert "momentum 0.99, about" not in text and "with momentum 0.99 they" not in text
