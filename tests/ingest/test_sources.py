"""The source registry and the task it plans: probe order by priority, typed task fields, and what
``--modality`` / ``--force-modality`` do to a file that states its own modality."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import shutil
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from unimed.ingest.sources import base, registry
from unimed.ingest.sources.base import Options, Source, Task
from unimed.ingest.sources.dicom import DicomSource

ORDER = ["manifest", "slide", "dicom", "image", "nifti"]


def test_probe_order_is_the_priority_order():
    sources = registry()
    assert list(sources) == ORDER
    assert [s.priority for s in sources.values()] == sorted(s.priority for s in sources.values())


def test_probe_order_does_not_depend_on_import_order(monkeypatch):
    """However the sources were registered (here: reversed, and a new one in between), the order is
    the priorities'."""
    reversed_registry = dict(reversed(list(base._REGISTRY.items())))

    class Late(Source):
        name = "late"
        priority = 35

    monkeypatch.setattr(base, "_REGISTRY", {"late": Late(), **reversed_registry})
    assert list(registry()) == ["manifest", "slide", "dicom", "late", "image", "nifti"]


def test_no_source_declares_suffixes():
    """The name of a file is each source's own business inside ``probe``: no unused declaration."""
    for source in registry().values():
        assert not hasattr(source, "suffixes"), source.name


def test_a_task_has_typed_fields_and_pickles(tmp_path):
    """No untyped ``extra`` dict: what planning learns is a field; a planned task survives pickling
    (worker processes and Ray) unchanged."""
    assert "extra" not in {f.name for f in dataclasses.fields(Task)}
    src = DicomSource()
    task = src.plan(_ct(tmp_path), Options())
    assert task.modality == "ct" and task.sop and task.frames == 1 and task.series is not None
    again = pickle.loads(pickle.dumps(task))
    assert again.series == task.series and again.header == task.header
    assert (again.paths, again.sop, again.modality, again.alternates) == (task.paths, task.sop, "ct", [])


def _ct(folder, name: str = "ct.dcm", modality: str | None = None):
    """pydicom's CT_small.dcm (Modality CT) copied into ``folder``, with another Modality if given."""
    path = folder / name
    if modality is None:
        shutil.copy(get_testdata_file("CT_small.dcm"), path)
    else:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.Modality = modality
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(path)
    return path


def _convert_items(path, opts: Options):
    src = DicomSource()
    task = src.plan(path, opts)
    return task, list(src.iter_items(task, opts))


def test_modality_fills_in_but_does_not_override_a_coded_modality(tmp_path):
    path = _ct(tmp_path)
    task, (item,) = _convert_items(path, Options(modality="xray"))
    assert task.modality == item.modality == "ct" and task.overridden is None
    assert item.meta["window"] == [40.0, 400.0]  # a CT window: the file's modality decided the transform
    # A file that states no unimed modality (NM has none) takes --modality.
    nm = get_testdata_file("JPEG2000.dcm")
    task = DicomSource().plan(Path(nm), Options(modality="other", allow_burned_in=True))
    assert task.modality == "other" and task.overridden is None


def test_force_modality_overrides_and_warns_once_per_run(tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        _ct(folder, f"ct{i}.dcm", modality="CT")
    _ct(folder, "mr.dcm", modality="MR")
    _ct(folder, "free.dcm", modality="PLANTEDSCAN")  # not a defined term: no modality stated, never echoed
    opts = Options(modality="xray", force_modality=True)
    task, (item,) = _convert_items(folder / "ct0.dcm", opts)
    assert task.modality == item.modality == "xray" and task.overridden == "CT"
    assert item.meta["window"] != [40.0, 400.0]  # no Hounsfield window on what is now an X-ray

    from unimed.ingest.convert import ConvertConfig, plan

    with caplog.at_level(logging.WARNING, logger="unimed.ingest"):
        tasks, rejects = plan(ConvertConfig(inputs=[str(folder)], out=str(tmp_path / "out")), opts)
    assert rejects == [] and {t.modality for t in tasks} == {"xray"}
    ours = [r.getMessage() for r in caplog.records if r.name == "unimed.ingest"]
    assert ours == ["--force-modality xray: overrides the modality the files state (CT in 3 files, MR in 1 file)"]


def test_without_force_no_warning(tmp_path, caplog):
    from unimed.ingest.convert import ConvertConfig, plan

    folder = tmp_path / "in"
    folder.mkdir()
    _ct(folder)
    with caplog.at_level(logging.WARNING, logger="unimed.ingest"):
        tasks, _ = plan(ConvertConfig(inputs=[str(folder)], out=str(tmp_path / "out")), Options(modality="xray"))
    assert [t.modality for t in tasks] == ["ct"]
    assert not [r for r in caplog.records if r.name == "unimed.ingest"]
