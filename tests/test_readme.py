"""The README's tables are generated from the registries and must be current."""

import pytest
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


def test_fill_replaces_every_catalog_block_and_nothing_else():
    """Each `<!-- catalog:NAME -->...<!-- /catalog -->` block, over several lines, gets
    its own fresh table; the text around and between blocks stays; a second fill is a no-op."""
    from kmnist_lab.catalog import fill, losses_table, optimizers_table

    stale = ("# Title\n<!-- catalog:losses -->\n| old | table |\n|---|---|\n<!-- /catalog -->\n"
             "between\n<!-- catalog:optimizers --><!-- /catalog -->\nend\n")  # fmt: skip
    assert fill(stale) == (
        f"# Title\n<!-- catalog:losses -->\n{losses_table()}\n<!-- /catalog -->\n"
        f"between\n<!-- catalog:optimizers -->\n{optimizers_table()}\n<!-- /catalog -->\nend\n"
    )
    assert fill(fill(stale)) == fill(stale)
    assert fill("no markers\n") == "no markers\n"


def test_check_fails_on_a_stale_readme_and_leaves_it_as_it_is(tmp_path, monkeypatch, capsys):
    """--check exits 1 with one line on stderr and writes nothing; without it the README
    is rewritten, after which --check passes."""
    from kmnist_lab.catalog import fill

    (tmp_path / "scripts").mkdir()
    readme = tmp_path / "README.md"
    stale = "# x\n<!-- catalog:datasets -->\n| old |\n<!-- /catalog -->\n"
    readme.write_text(stale)
    monkeypatch.setattr(update_readme, "__file__", str(tmp_path / "scripts" / "update_readme.py"))
    assert update_readme.main(["--check"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().splitlines() == [
        "README.md tables are stale: run python scripts/update_readme.py"
    ]
    assert readme.read_text() == stale
    assert update_readme.main([]) == 0
    assert readme.read_text() == fill(stale) != stale
    assert update_readme.main(["--check"]) == 0


def test_fill_refuses_an_unknown_catalog_block_and_names_the_known_ones():
    from kmnist_lab.catalog import fill
    from kmnist_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"catalog:widgets.*known: models, losses"):
        fill("<!-- catalog:widgets -->\n| old |\n<!-- /catalog -->\n")
