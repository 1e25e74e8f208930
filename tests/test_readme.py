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
