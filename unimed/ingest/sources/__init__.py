"""Input kinds, one module each; importing this package fills the registry in probe order."""

from __future__ import annotations

from unimed.ingest.sources import dicom, image, nifti  # noqa: F401,I001  (order = probe order)
from unimed.ingest.sources.base import Item, Options, Source, Task, get_source, register, registry

__all__ = ["Item", "Options", "Source", "Task", "get_source", "register", "registry"]
