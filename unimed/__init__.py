"""unimed: medical images -> MDS shards -> CLIP training -> evaluation, export and a Python API.

``model = unimed.load(path)`` loads a trained checkpoint or an exported folder (:mod:`unimed.api`);
the package imports nothing heavy until then.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load", "Model", "UserError"]


def __getattr__(name: str) -> Any:
    if name in ("load", "Model"):
        from unimed import api

        return getattr(api, name)
    if name == "UserError":
        from unimed.errors import UserError

        return UserError
    raise AttributeError(f"module 'unimed' has no attribute {name!r}")
