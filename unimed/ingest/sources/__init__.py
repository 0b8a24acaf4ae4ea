"""Input kinds, one module each; importing this package fills the registry in probe order.

The import order is the probe order: manifests and slides first (they claim CSV and TIFF/DICOM files
the plain image and DICOM sources would otherwise take), then DICOM, plain images and NIfTI.
"""

from __future__ import annotations

# isort: off
from unimed.ingest.sources import manifest, slide, dicom, image, nifti  # noqa: F401
# isort: on
from unimed.ingest.sources.base import Item, Options, Source, Task, get_source, register, registry

__all__ = ["Item", "Options", "Source", "Task", "get_source", "register", "registry"]
