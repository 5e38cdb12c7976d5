"""Built-in topic "What the network has learned": views of a model's weights and of its codes over a data set."""

from __future__ import annotations

from convlens import hookimpl
from convlens.methods import Method

from .code_map import CODE_MAP
from .filters import FILTERS
from .neighbours import NEIGHBOURS
from .patches import PATCHES


@hookimpl
def register_methods() -> list[Method]:
    return [FILTERS, NEIGHBOURS, PATCHES, CODE_MAP]
