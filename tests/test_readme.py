"""The README's tables are generated from the registries and must be current."""

import functools

import pytest
import update_readme


def test_readme_tables_match_the_registries(capsys):
    assert update_readme.main(["--check"]) == 0, capsys.readouterr().err


def test_unpaired_or_missing_catalog_markers_are_refused_not_swallowed():
    """A README missing one `<!-- /catalog -->` lost the text up to the next block's end
    marker (a heading, a paragraph, a whole table) and --check passed afterwards."""
    from pathlib import Path

    from kmnist_lab.catalog import TABLES, fill
    from kmnist_lab.errors import ConfigError

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    fill = functools.partial(fill, required=TABLES)  # as update_readme.py calls it
    models_end = text.index("<!-- /catalog -->")
    with pytest.raises(ConfigError, match="the catalog markers do not pair up"):
        fill(text[:models_end] + text[models_end + len("<!-- /catalog -->") :])
    start = text.index("<!-- catalog:losses -->")
    end = text.index("<!-- /catalog -->", start) + len("<!-- /catalog -->")
    with pytest.raises(ConfigError, match="0 <!-- catalog:losses --> blocks; it needs one"):
        fill(text[:start] + text[end:])
    assert fill(text) == text


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
    stale = "".join(f"# {name}\n<!-- catalog:{name} -->\n| old |\n<!-- /catalog -->\n"
                    for name in ("models", "losses", "optimizers", "datasets"))  # fmt: skip
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


# Every `python scripts/NAME.py ...` command the README and docs/ show must still parse:
# a renamed or removed flag, or a choice no longer offered, fails here instead of on a
# reader's machine. docs/reliability.md is left out: its commands are wrong on purpose
# (test_reliability.py runs each of them). Placeholders in the docs get a sample value.
PLACEHOLDERS = {  # per script: in train.py's commands NAME is an optimizer, in study.py's a study
    "train": {"NAME": "sgd", "LR": "0.01", "A": "bn_mlp", "DIR": "d"},
    "study": {"NAME": "a_models"},
}
# Inline mentions in prose that quote only the start of a command, verbatim.
FRAGMENTS = {
    ("README.md", "train", "--config"),  # `--config RUN/config.json` follows in the text
    ("backends.md", "train", "..."),
    ("performance.md", "train", "--arch bn_mlp --backend"),  # "--backend torch --jit on"
}


def _documented_commands():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for path in files:
        if path.name == "reliability.md":
            continue
        text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continued lines
        for m in re.finditer(r"python scripts/(\w+)\.py([^`\n|;&>#]*)", text):
            yield path.name, m.group(1), m.group(2).strip()


def test_every_documented_command_parses():
    import importlib
    import shlex

    commands = list(_documented_commands())
    assert len(commands) > 80  # the docs hold about a hundred; the regex still finds them
    checked = 0
    for where, script, args in commands:
        if (where, script, args) in FRAGMENTS or script in ("update_readme", "torch_reference"):
            continue
        argv = [PLACEHOLDERS.get(script, {}).get(a, a) for a in shlex.split(args)]
        if "--help" in argv:
            continue
        parser = importlib.import_module(script).build_parser()
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{where}: `python scripts/{script}.py {args}` does not parse ({e})")
        checked += 1
    assert checked > 80


def test_the_command_check_catches_a_removed_flag():
    import train

    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--arch", "bn_mlp", "--no-such-flag"])
