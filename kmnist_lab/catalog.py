"""Markdown tables of the registries (models, losses, optimizers, datasets) for the README.

`scripts/update_readme.py` writes them between `<!-- catalog:NAME -->` markers;
a test checks that the README is up to date with the registries.
"""

from __future__ import annotations

import re

from kmnist_lab.config import ARCH_DEFAULTS, FALLBACK_DEFAULTS
from kmnist_lab.errors import ConfigError


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def models_table() -> str:
    """The README's table of registered architectures: what each is, its training defaults
    (`ARCH_DEFAULTS`, else `FALLBACK_DEFAULTS`) and its `--model-param` options."""
    from kmnist_lab.models import MODELS, user_params

    rows = []
    for name in MODELS.names():
        d = ARCH_DEFAULTS.get(name, FALLBACK_DEFAULTS)
        params = ", ".join(user_params(name))
        rows.append([f"`{name}`", MODELS.get(name).summary, f"{d.epochs} ep, bs {d.batch_size}, "
                     f"{d.optimizer} {d.lr:g} {d.lr_schedule}{', augment' if d.augment else ''}", params])  # fmt: skip
    return _table(["arch", "what", "defaults", "options (`--model-param`)"], rows)


def losses_table() -> str:
    """The README's table of registered losses: what each is and the model head it needs."""
    from kmnist_lab.losses import LOSSES, loss_head

    return _table(
        ["loss", "what", "head"],
        [[f"`{n}`", LOSSES.get(n).summary, loss_head(n)] for n in LOSSES.names()],
    )


def optimizers_table() -> str:
    """The README's table of registered optimizers and what each is."""
    from kmnist_lab.optimizers import OPTIMIZERS

    return _table(
        ["optimizer", "what"], [[f"`{n}`", OPTIMIZERS.get(n).summary] for n in OPTIMIZERS.names()]
    )


def datasets_table() -> str:
    """The README's table of registered datasets and what each is."""
    from kmnist_lab.data import DATASETS

    return _table(
        ["dataset", "what"], [[f"`{n}`", DATASETS.get(n).summary] for n in DATASETS.names()]
    )


TABLES = {"models": models_table, "losses": losses_table, "optimizers": optimizers_table,
          "datasets": datasets_table}  # fmt: skip


def fill(text: str, required=()) -> str:
    """Replaces every `<!-- catalog:NAME -->...<!-- /catalog -->` block with a fresh table.

    Args:
        text: the document (the README).
        required: the tables that must have exactly one block (the README: all).

    Raises:
        ConfigError: a block names a table that does not exist (NAME not in `TABLES`),
            a required table has no block or more than one, or the markers do not pair
            up (a missing end marker would make one block swallow the text up to the
            next block's end).
    """
    tokens = re.findall(r"<!-- (catalog:\w+|/catalog) -->", text)
    starts = [t.split(":", 1)[1] for t in tokens if t != "/catalog"]
    if tokens != [t for name in starts for t in (f"catalog:{name}", "/catalog")]:
        raise ConfigError(
            "the catalog markers do not pair up: each <!-- catalog:NAME --> needs its own "
            f"<!-- /catalog --> before the next block starts. Found, in order: {tokens}"
        )
    for name in required:
        if starts.count(name) != 1:
            raise ConfigError(
                f"the text has {starts.count(name)} <!-- catalog:{name} --> blocks; it needs one"
            )

    def sub(match):
        name = match.group(1)
        if name not in TABLES:
            raise ConfigError(
                f"unknown catalog block <!-- catalog:{name} -->; known: {', '.join(TABLES)}"
            )
        return f"<!-- catalog:{name} -->\n{TABLES[name]()}\n<!-- /catalog -->"

    return re.sub(r"<!-- catalog:(\w+) -->.*?<!-- /catalog -->", sub, text, flags=re.S)
