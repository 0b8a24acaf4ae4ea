"""Import mosaicml-streaming with its bundled example datasets deferred to first use.

``import streaming`` runs ``streaming/__init__.py``, which imports ``streaming.text`` (C4, the Pile,
EnWiki: each imports ``transformers``' ``AutoTokenizer``, and with it scikit-learn), ``streaming.vision``
and ``streaming.multimodal``: 270 MB of the loader's main process and a second of start-up, for
datasets unimed never uses. :func:`import_streaming` registers those three subpackages as deferred
packages before the first import: each has its real spec and ``__path__`` (so ``import
streaming.text.c4`` works as usual) and runs its own ``__init__`` on the first attribute it is asked
for. (``importlib.util.LazyLoader`` does not fit: the import system reads ``__spec__`` of a module it
finds in ``sys.modules``, which makes a lazy module load at once.)
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from types import ModuleType

__all__ = ["import_streaming"]

_DEFERRED = ("text", "vision", "multimodal")


class _DeferredPackage(ModuleType):
    """A package whose ``__init__`` runs on the first missing attribute asked of it."""

    def __getattr__(self, name: str):
        loader = self.__dict__.pop("_deferred_loader", None)
        if loader is None or name.startswith("__"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        loader.exec_module(self)
        return getattr(self, name)


def import_streaming() -> ModuleType:
    """``streaming``, imported with ``streaming.text``, ``.vision`` and ``.multimodal`` lazy."""
    if "streaming" in sys.modules:
        return sys.modules["streaming"]
    import torch  # noqa: F401  (first: torch's own import walks sys.modules, which would load the lazy ones)

    spec = importlib.util.find_spec("streaming")  # a top-level spec: imports nothing
    if spec is not None and spec.submodule_search_locations:
        for name in _DEFERRED:
            full = f"streaming.{name}"
            sub = importlib.machinery.PathFinder.find_spec(full, list(spec.submodule_search_locations))
            if full in sys.modules or sub is None or sub.loader is None:
                continue
            module = _DeferredPackage(full)
            module.__spec__, module.__loader__, module.__file__ = sub, sub.loader, sub.origin
            module.__path__, module.__package__ = list(sub.submodule_search_locations or []), full
            module._deferred_loader = sub.loader
            sys.modules[full] = module
    import streaming

    return streaming
