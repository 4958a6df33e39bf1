"""Built-in problems: the paper's catalogue (`_paper.py`), beyond it (`_ml.py`,
`_networks.py`), and model losses at realistic sizes (`_models.py`).

`names()` lists them, `get(name, **params)` builds a `jaxflow.Problem`, `info(name)`
gives the docstring (which cites the paper's equation).
"""

from __future__ import annotations

# Importing the families (`_ml`, `_models`, `_networks`, `_paper`) registers their problems.
from . import _ml as _ml
from . import _models as _models
from . import _networks as _networks
from . import _paper as _paper
from ._registry import get as get
from ._registry import info as info
from ._registry import names as names
from ._registry import register as register

__all__ = ["get", "info", "names", "register"]
