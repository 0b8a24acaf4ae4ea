"""The training tests' fixtures live in ``tests/conftest.py`` (``demo_sets``, ``tiny_overrides``, ``tiny_config``,
``tiny_cfg``, ``trained_checkpoint``, ...), where every test folder sees them.

Two names stay importable from here for modules outside ``tests/train`` that still import them
(``tests/test_object_storage.py``: ``tiny_overrides(demo_sets, **extra)``;
``tests/streaming/test_streaming_decode.py``: the ``demo_sets`` fixture). They are served by
``__getattr__``, so pytest does not register a second copy of the session fixtures for this folder.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("tiny_overrides", "demo_sets"):
        import importlib

        root = importlib.import_module("tests.conftest")
        return root.tiny_overrides_for if name == "tiny_overrides" else root.demo_sets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
