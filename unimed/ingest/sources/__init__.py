"""Input kinds, one module each; importing this package fills the registry.

The probe order is each source's ``priority``, not the import order (see
:func:`unimed.ingest.sources.base.registry`): manifests, slides, DICOM, plain images, NIfTI.
"""

from __future__ import annotations

from unimed.ingest.sources import dicom, image, manifest, nifti, slide  # noqa: F401
from unimed.ingest.sources.base import Item, Options, Source, Task, get_source, register, registry

__all__ = ["Item", "Options", "Source", "Task", "get_source", "register", "registry"]
