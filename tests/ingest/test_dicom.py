"""DICOM ingest on the real files of pydicom and pydicom-data.

Shards are read back with a stock StreamingDataset and compared with the source pixels after the
documented intensity transform (unimed.ingest.intensity's module docstring), written here again
from the DICOM standard so the test does not reuse the code it checks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from unimed.ingest.deid import keyed_uid
from unimed.ingest.sources.base import Options
from unimed.ingest.sources.dicom import DicomSource
from unimed.samples import BROKEN_DICOM, all_dicom_files, pydicom_data_dir, pydicom_dir


def reference(ds: pydicom.Dataset, arr: np.ndarray, modality: str) -> np.ndarray:
    """The documented transform: rescale, window (CT 40/400, else the file's, else percentiles),
    MONOCHROME1 inverted, uint8."""
    pi = ds.PhotometricInterpretation
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return np.rint(arr / float(2**ds.BitsStored - 1) * 255).astype(np.uint8)
    x = arr.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    if modality == "ct":
        c, w = 40.0, 400.0
    elif wc is not None and ww is not None and "VOILUTSequence" not in ds:
        c = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
        w = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
    else:
        c = w = None
    if c is not None:
        y = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    else:
        lo, hi = np.percentile(x, [0.5, 99.5])
        y = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)
    if pi == "MONOCHROME1":
        y = 1 - y
    return np.rint(y * 255).astype(np.uint8)


def _items(path: Path, **opts):
    src = DicomSource()
    o = Options(**opts)
    task = src.plan(path, o)
    return list(src.iter_items(task, o))


@pytest.mark.slow
def test_every_dicom_file_is_converted_or_rejected_and_matches_reference(tmp_path, helpers):
    files = all_dicom_files()
    assert len(files) > 150, "pydicom and pydicom-data test files are installed"
    out = tmp_path / "out"
    summary = helpers.convert(
        [pydicom_dir(), pydicom_data_dir()], out, codec="png", max_side=0, allow_burned_in=True, workers=2
    )
    samples = helpers.read(out)
    assert summary["images"] == len(samples) > 40
    by_uid = {s["uid"]: s for s in samples}
    assert len(by_uid) == len(samples), "uids are unique"
    rejected = {r["path"]: r["reason"] for r in helpers.rejects(out)}
    # Nothing lost: every DICOM file either produced samples or has a reject line.
    compared = 0
    for f in files:
        if str(f) in rejected:
            continue
        ds = pydicom.dcmread(f)
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
        uids = [keyed_uid(helpers.key, f"dicom:{ds.SOPInstanceUID}:{i}") for i in range(nframes)]
        found = [u for u in uids if u in by_uid]
        assert found, f"{f.name}: neither converted nor rejected"
        if nframes == 1 and "ModalityLUTSequence" not in ds and ds.PhotometricInterpretation != "PALETTE COLOR":
            s = by_uid[uids[0]]
            got = helpers.decode(s)
            want = reference(ds, ds.pixel_array, s["modality"])
            assert got.shape == want.shape, f.name
            diff = np.abs(got.astype(int) - want.astype(int))
            assert diff.max() <= 1, f"{f.name}: max difference {diff.max()}"
            compared += 1
    assert compared >= 20
    # Each deliberately broken file is rejected for what is wrong with it (bad_sequence.dcm's pixels and
    # modality read fine: it converts, and the loop above saw it).
    why = {
        "no_meta.dcm": "not a valid DICOM file",
        "MR_truncated.dcm": "cannot decode pixel data",
        "rtplan_truncated.dcm": "holds no image",
        "badVR.dcm": "RTDOSE has no unimed modality",
        "emri_small_jpeg_2k_lossless_too_short.dcm": "cannot decode pixel data",
    }
    assert set(why) | {"bad_sequence.dcm"} == set(BROKEN_DICOM)
    for name, fragment in why.items():
        hits = [str(f) for f in files if f.name == name]
        assert hits, f"{name}: not among the test files"
        for h in hits:
            assert h in rejected, f"{name}: converted, yet it is broken ({BROKEN_DICOM[name]})"
            assert fragment in rejected[h] or "duplicate" in rejected[h], f"{name}: {rejected[h]}"
    # Non-image DICOM (structured reports, RT plans) are rejected with that reason.
    assert "holds no image" in rejected[str(pydicom_dir() / "rtplan.dcm")]


LOSSLESS = [
    (
        "MR_small.dcm",
        [
            "MR_small_RLE.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
            "MR_small_jp2klossless.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_implicit.dcm",
        ],
    ),
    (
        "emri_small.dcm",
        [
            "emri_small_RLE.dcm",
            "emri_small_jpeg_2k_lossless.dcm",
            "emri_small_jpeg_ls_lossless.dcm",
            "emri_small_big_endian.dcm",
        ],
    ),
    ("MR2_UNCR.dcm", ["MR2_J2KR.dcm"]),
    ("RG3_UNCR.dcm", ["RG3_J2KR.dcm"]),
    ("US1_UNCR.dcm", ["US1_J2KR.dcm"]),
    ("SC_rgb.dcm", ["SC_rgb_rle.dcm", "SC_rgb_expb.dcm"]),
    ("OBXXXX1A.dcm", ["OBXXXX1A_rle.dcm", "OBXXXX1A_expb.dcm"]),
]


def _find(name: str) -> Path:
    for d in (pydicom_dir(), pydicom_data_dir()):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(name)


@pytest.mark.parametrize("base,variants", LOSSLESS, ids=[b for b, _ in LOSSLESS])
def test_lossless_transfer_syntaxes_decode_identically(base, variants):
    want = _items(_find(base), modality="other", allow_burned_in=True)
    assert want
    for v in variants:
        got = _items(_find(v), modality="other", allow_burned_in=True)
        assert len(got) == len(want), v
        for a, b in zip(got, want):
            assert np.array_equal(a.pixels, b.pixels), v


@pytest.mark.parametrize(
    "base,lossy",
    [("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm"), ("MR2_UNCI.dcm", "MR2_J2KI.dcm"), ("SC_rgb.dcm", "SC_rgb_jpeg_gdcm.dcm")],
)
def test_lossy_transfer_syntaxes_decode_close(base, lossy):
    (a,) = _items(_find(base), modality="other", allow_burned_in=True)[:1]
    (b,) = _items(_find(lossy), modality="other", allow_burned_in=True)[:1]
    assert a.pixels.shape == b.pixels.shape
    assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).mean() < 6


def test_ybr_is_converted_to_rgb():
    (rgb,) = _items(_find("SC_rgb.dcm"), modality="other", allow_burned_in=True)[:1]
    (ybr,) = _items(_find("SC_ybr_full_uncompressed.dcm"), modality="other", allow_burned_in=True)[:1]
    assert ybr.pixels.shape == rgb.pixels.shape and ybr.pixels.shape[-1] == 3
    diff = np.abs(ybr.pixels.astype(int) - rgb.pixels.astype(int))
    assert diff.mean() < 1 and diff.max() <= 8  # YCbCr -> RGB rounding


def test_palette_color_becomes_rgb():
    (item,) = _items(_find("OT-PAL-8-face.dcm"), modality="other", allow_burned_in=True)
    assert item.pixels.ndim == 3 and item.pixels.shape[-1] == 3 and item.meta["window"] == "palette"
    assert item.pixels.std() > 10


def test_monochrome1_is_inverted_after_windowing(tmp_path):
    src = pydicom_dir() / "CT_small.dcm"
    ds = pydicom.dcmread(src)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    mono1 = tmp_path / "mono1.dcm"
    ds.save_as(mono1)
    (a,) = _items(src)
    (b,) = _items(mono1)
    assert np.array_equal(b.pixels.astype(int), 255 - a.pixels.astype(int))
    # A real MONOCHROME1 radiograph: bone (high stored values) comes out bright after inversion.
    ds = pydicom.dcmread(_find("RG1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    (x,) = _items(_find("RG1_UNCR.dcm"))
    raw = ds.pixel_array
    assert np.corrcoef(raw.ravel()[::97], x.pixels.ravel()[::97])[0, 1] < -0.5


def test_ct_uses_hounsfield_window_and_several_windows_become_channels():
    ds = pydicom.dcmread(pydicom_dir() / "CT_small.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    (one,) = _items(pydicom_dir() / "CT_small.dcm")
    assert one.meta["window"] == [40.0, 400.0]
    assert np.array_equal(one.pixels, reference(ds, ds.pixel_array, "ct"))
    (three,) = _items(pydicom_dir() / "CT_small.dcm", window="lung,mediastinum,bone")
    assert three.pixels.shape == hu.shape + (3,)
    lung = np.rint(np.clip((hu - (-600 - 0.5)) / (1500 - 1) + 0.5, 0, 1) * 255)
    assert np.abs(three.pixels[..., 0].astype(int) - lung.astype(int)).max() <= 1


def test_multiframe_file_gives_one_sample_per_frame():
    ds = pydicom.dcmread(_find("emri_small.dcm"))
    items = _items(_find("emri_small.dcm"))
    assert len(items) == int(ds.NumberOfFrames) > 1
    assert [it.meta["frame"] for it in items] == list(range(len(items)))
    assert all(it.modality == "mri" for it in items)


def test_series_is_ordered_along_the_slice_normal(tmp_path, helpers):
    src = pydicom.dcmread(pydicom_dir() / "CT_small.dcm")
    series = pydicom.uid.generate_uid()
    positions = [30.0, -10.0, 50.0, 10.0, -30.0]
    folder = tmp_path / "series"
    folder.mkdir()
    for i, z in enumerate(positions):
        ds = src.copy()
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.InstanceNumber = 5 - i  # instance numbers disagree with positions: position wins
        arr = ds.pixel_array.copy()
        arr[:8, :8] = int(z) + 100  # a marker of the position in the pixels
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"img{i}.dcm")
    out = tmp_path / "out"
    helpers.convert([folder], out, codec="png", window="-1000:4000")
    samples = sorted(helpers.read(out), key=lambda s: s["meta"]["slice_index"])
    assert [s["meta"]["slice_index"] for s in samples] == [0, 1, 2, 3, 4]
    assert all(s["meta"]["n_slices"] == 5 for s in samples)
    markers = [int(helpers.decode(s)[0, 0]) for s in samples]
    assert markers == sorted(markers)


def test_unknown_modality_is_rejected_not_guessed(tmp_path, helpers):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(pydicom_dir() / "JPEG2000.dcm", folder)  # Modality NM
    out = tmp_path / "out"
    summary = helpers.convert([folder], out)
    assert summary["images"] == 0
    (r,) = helpers.rejects(out)
    assert "NM" in r["reason"] and "--modality" in r["reason"]
    # With a modality set, the next gate shows: this NM file is a secondary capture.
    summary = helpers.convert([folder], tmp_path / "out2", modality="other")
    assert summary["images"] == 0 and "secondary capture" in helpers.rejects(tmp_path / "out2")[0]["reason"]
    summary = helpers.convert([folder], tmp_path / "out3", modality="other", allow_burned_in=True)
    assert summary["images"] >= 1
