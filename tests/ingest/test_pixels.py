"""Pixels that were wrong (issue 9 §3): Hounsfield windows on non-CT images, VOI LUT output range,
per-frame percentiles in multi-frame files, saturated slices taken for empty ones.

Expected pixels are computed here again from the DICOM standard (PS3.3 C.11.2.1.1 for the VOI LUT),
never by the code under test nor by pydicom's ``apply_voi_lut``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.uid import generate_uid

from unimed.ingest import intensity
from unimed.ingest.sources.base import Options
from unimed.ingest.sources.dicom import DicomSource
from unimed.ingest.sources.nifti import NiftiSource
from unimed.ingest.synthetic import write_ct_slice
from unimed.samples import all_dicom_files, pydicom_data_dir, pydicom_dir


def _items(path: Path, source=DicomSource, **opts):
    src = source()
    o = Options(**opts)
    return list(src.iter_items(src.plan(Path(path), o), o))


def _find(name: str) -> Path:
    return Path(pydicom.data.get_testdata_file(name))


# --- 1. Hounsfield windows apply to CT only -------------------------------------------------------


def test_window_spec_helpers():
    assert not intensity.is_hounsfield_window("auto") and not intensity.is_hounsfield_window("file")
    assert intensity.is_hounsfield_window("lung") and intensity.is_hounsfield_window("40:400")
    assert intensity.ct_windows("lung,mediastinum,bone", "ct")[0] == (-600.0, 1500.0)
    assert intensity.ct_windows("auto", "ct") == [(40.0, 400.0)]
    assert intensity.ct_windows("file", "ct") is None
    for modality in ("xray", "mri", "ultrasound", "other"):
        assert intensity.ct_windows("lung,mediastinum,bone", modality) is None
        assert intensity.ct_windows("40:400", modality) is None


@pytest.mark.parametrize("window", ["lung,mediastinum,bone", "40:400"])
@pytest.mark.parametrize(
    "name,modality,file_window", [("MR_small.dcm", "mri", [600.0, 1600.0]), ("RG3_UNCR.dcm", "xray", [550.0, 1024.0])]
)
def test_hounsfield_window_is_ignored_for_non_ct(window, name, modality, file_window):
    path = pydicom_dir() / name if (pydicom_dir() / name).is_file() else pydicom_data_dir() / name
    (auto,) = _items(path, allow_burned_in=True)
    (named,) = _items(path, window=window, allow_burned_in=True)
    assert named.modality == modality
    assert named.pixels.ndim == 2, "no false colour from three Hounsfield windows"
    assert named.meta["window"] == auto.meta["window"] == file_window
    assert np.array_equal(named.pixels, auto.pixels)
    # The file's own window, by the DICOM linear formula (PS3.3 C.11.2.1.2), MONOCHROME1 inverted.
    ds = pydicom.dcmread(path)
    c, w = file_window
    y = np.clip((ds.pixel_array.astype(np.float64) - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    y = 1 - y if ds.PhotometricInterpretation == "MONOCHROME1" else y
    assert np.abs(named.pixels.astype(int) - np.rint(y * 255).astype(int)).max() <= 1


def test_hounsfield_window_on_a_run_prints_that_it_applies_to_ct_only(tmp_path, capsys):
    from unimed.ingest import cli

    src = tmp_path / "in"
    src.mkdir()
    (src / "mr.dcm").write_bytes((pydicom_dir() / "MR_small.dcm").read_bytes())
    rc = cli.main(["convert", str(src), "--out", str(tmp_path / "out"), "--window", "lung", "--no-progress"])
    assert rc == 0 and "--window lung applies to CT images only" in capsys.readouterr().err


def test_window_file_on_ct_uses_the_file_path_and_names_still_apply_to_ct():
    path = pydicom_dir() / "CT_small.dcm"  # carries no window: --window file falls back to percentiles
    (f,) = _items(path, window="file")
    assert f.meta["window"] == "percentile 0.5-99.5"
    (three,) = _items(path, window="lung,mediastinum,bone")
    assert three.pixels.shape[-1] == 3


def test_hounsfield_window_is_ignored_for_mri_volumes(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(600, 150, (24, 20, 6)).astype(np.float32)
    path = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    auto = _items(path, NiftiSource, modality="mri")
    named = _items(path, NiftiSource, modality="mri", window="lung,mediastinum,bone")
    assert len(named) == len(auto) == 6
    for a, b in zip(auto, named):
        assert b.pixels.ndim == 2 and np.array_equal(a.pixels, b.pixels)
        assert b.meta["window"] == "percentile 0.5-99.5"


# --- 2. VOI LUT: the LUT's output range, not min-to-max -------------------------------------------


def voi_reference(ds: pydicom.Dataset, arr: np.ndarray) -> np.ndarray:
    """PS3.3 C.11.2.1.1, written from the standard: rescale, clamp into the LUT, divide by 2**n - 1."""
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    lut = np.frombuffer(data, "<u2") if isinstance(data, bytes) else np.asarray(data, np.float64)
    x = arr.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    index = np.clip(np.rint(x) - first, 0, entries - 1).astype(np.int64)
    y = lut[index].astype(np.float64) / (2**bits - 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 1 - y
    return np.rint(np.clip(y, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def voi_lut_files() -> list[Path]:
    """Every test file of pydicom and pydicom-data with a VOI LUT Sequence."""
    files = {Path(f).resolve() for f in pydicom.data.get_testdata_files()} | {p.resolve() for p in all_dicom_files()}
    found = []
    for f in sorted(files):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue
        if "VOILUTSequence" in ds:
            found.append(f)
    return found


def test_real_voi_lut_files_match_the_standard(voi_lut_files):
    # pydicom-data's vlut_04.dcm is the one such file here: 8-bit pixels, 256 entries, 16 bits per
    # entry, whose data do fill 0..65535 (it declares 16 bits and stores 16-bit values).
    assert any(f.name == "vlut_04.dcm" for f in voi_lut_files)
    for f in voi_lut_files:
        ds = pydicom.dcmread(f)
        (item,) = _items(f, modality="xray", allow_burned_in=True)
        assert item.meta["window"] == "voi_lut"
        assert np.abs(item.pixels.astype(int) - voi_reference(ds, ds.pixel_array).astype(int)).max() <= 1, f.name


def _vlut_variant(tmp_path: Path, name: str, descriptor: list[int], data: np.ndarray, **attrs) -> Path:
    """vlut_04.dcm with another VOI LUT (and attributes), saved in ``tmp_path``."""
    ds = pydicom.dcmread(pydicom_data_dir() / "vlut_04.dcm")
    item = ds.VOILUTSequence[0]
    item.LUTDescriptor = descriptor
    item["LUTData"].value = [int(v) for v in data]
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.SOPInstanceUID = generate_uid()
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path)
    return path


def test_voi_lut_output_range_is_kept_not_stretched(tmp_path, helpers):
    # A LUT whose output spans 96..160 of 255 (in 16-bit entries): the image shows 96..160, not 0..255.
    narrow = np.rint(np.linspace(96, 160, 256) * 257).astype(int)
    variants = {
        "narrow": ([256, 0, 16], narrow, {}),
        "inverted": ([256, 0, 16], narrow, {"PhotometricInterpretation": "MONOCHROME1"}),
        # 128 entries from 64: inputs below take the first entry, inputs from 191 up the last.
        "offset": ([128, 64, 16], np.linspace(0, 65535, 128).astype(int), {}),
        # 8 bits per entry, one entry a word: the output range is 0..255.
        "8bit": ([256, 0, 8], np.rint(np.linspace(30, 200, 256)).astype(int), {}),
        # The VOI LUT takes the modality LUT's output: rescaled values.
        "rescaled": ([256, 0, 16], narrow, {"RescaleSlope": 1, "RescaleIntercept": 40}),
    }
    for name, (desc, data, attrs) in variants.items():
        path = _vlut_variant(tmp_path, name, desc, data, **attrs)
        ds = pydicom.dcmread(path)
        want = voi_reference(ds, ds.pixel_array)
        (item,) = _items(path, modality="xray", allow_burned_in=True)
        assert np.abs(item.pixels.astype(int) - want.astype(int)).max() <= 1, name
    (item,) = _items(tmp_path / "narrow.dcm", modality="xray", allow_burned_in=True)
    assert (int(item.pixels.min()), int(item.pixels.max())) == (96, 160)
    # And through a whole conversion, read back from the shards.
    out = tmp_path / "out"
    helpers.convert([tmp_path / "narrow.dcm"], out, modality="xray", codec="png", max_side=0, allow_burned_in=True)
    (s,) = helpers.read(out)
    ds = pydicom.dcmread(tmp_path / "narrow.dcm")
    assert np.abs(helpers.decode(s).astype(int) - voi_reference(ds, ds.pixel_array).astype(int)).max() <= 1


def test_voi_lut_table_reads_the_descriptor():
    first, table = intensity.voi_lut_table([0, 0, 16], np.arange(65536, dtype=np.uint16))
    assert first == 0 and table.size == 65536 and table[-1] == 1.0  # 0 entries means 65536
    first, _ = intensity.voi_lut_table([4096, 64536, 12], np.zeros(4096), signed=True)
    assert first == -1000  # the second value read as US for a signed input
    y = intensity.apply_voi_lut(np.array([-5000, -1000, 0, 3095, 9000]), -1000, np.linspace(0, 1, 4096))
    assert y[0] == 0 and y[1] == 0 and y[3] == 1 and y[4] == 1 and 0 < y[2] < 1


# --- 3. Enhanced MR: one percentile scale for the whole multi-frame object ------------------------


def test_enhanced_mr_frames_share_one_percentile_scale():
    path = _find("emri_small.dcm")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID.name == "Enhanced MR Image Storage"
    found: list[str] = []
    ds.walk(lambda _, el: found.append(el.keyword) if el.keyword in ("WindowCenter", "RescaleSlope") else None)
    assert not found, "no window and no rescale, in the functional groups or at the top level"
    stack = ds.pixel_array.astype(np.float64)
    per_frame = {tuple(np.percentile(f, [0.5, 99.5])) for f in stack}
    assert len(per_frame) > 1, "frames differ, so per-frame scaling would give each its own contrast"
    lo, hi = np.percentile(stack, [0.5, 99.5])
    items = _items(path)
    assert [it.meta["frame"] for it in items] == list(range(stack.shape[0]))
    for it in items:
        assert it.meta["window"] == "percentile 0.5-99.5"
        want = np.rint(np.clip((stack[it.meta["frame"]] - lo) / (hi - lo), 0, 1) * 255)
        assert np.abs(it.pixels.astype(int) - want.astype(int)).max() <= 1
    # One scale: each stored value is shown the same in every frame.
    pairs = np.unique(np.stack([stack.ravel(), np.concatenate([it.pixels.ravel() for it in items])]), axis=1)
    assert pairs.shape[1] == np.unique(stack).size


# --- 4. Emptiness is judged before windowing ------------------------------------------------------


def test_saturated_ct_slice_is_kept_and_constant_slice_skipped(tmp_path, helpers):
    rng = np.random.default_rng(0)
    bone = rng.integers(400, 2000, (64, 64))  # all above the soft-tissue window's top (240 HU)
    write_ct_slice(tmp_path / "sat" / "bone.dcm", bone)
    out = tmp_path / "out"
    summary = helpers.convert([tmp_path / "sat"], out, codec="png")
    assert summary["images"] == 1
    (s,) = helpers.read(out)
    assert s["meta"]["window"] == [40.0, 400.0] and int(helpers.decode(s).min()) == 255
    write_ct_slice(tmp_path / "flat" / "flat.dcm", np.full((64, 64), 1500))
    summary = helpers.convert([tmp_path / "flat"], tmp_path / "out2", codec="png")
    assert summary["images"] == 0  # a truly constant slice is still skipped


def test_saturated_ct_volume_slices_are_kept(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(400, 2000, (32, 24, 5)).astype(np.int16)
    data[..., 0] = 1500  # one constant slice
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    items = _items(path, NiftiSource, modality="ct")
    assert [it.meta["slice_index"] for it in items] == [1, 2, 3, 4]
    assert all(int(it.pixels.min()) == 255 for it in items)
