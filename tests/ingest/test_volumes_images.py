"""NIfTI volumes (nibabel's test files and synthetic ones) and plain images (scikit-image's)."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from unimed.samples import nibabel_dir, skimage_dir


def test_nibabel_test_volumes_convert(tmp_path, helpers):
    files = [
        nibabel_dir() / n
        for n in ("anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "standard.nii.gz", "functional.nii")
    ]
    out = tmp_path / "out"
    summary = helpers.convert(files, out, modality="mri", workers=2)
    samples = helpers.read(out)
    assert summary["images"] == len(samples) > 20
    assert helpers.rejects(out) == []
    assert {s["modality"] for s in samples} == {"mri"}
    assert any("volume" in s["meta"] for s in samples)  # the 4D files give several volumes
    for s in samples:
        assert s["meta"]["axis"] in ("axial", "coronal", "sagittal")
        assert helpers.decode(s).std() > 0  # empty slices were skipped


def _volume(tmp_path, data, zooms=(1.0, 1.0, 3.0), name="vol.nii.gz"):
    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms)
    path = tmp_path / name
    nib.save(img, path)
    return path


def test_synthetic_volume_matches_the_documented_transform(tmp_path, helpers):
    rng = np.random.default_rng(0)
    data = np.zeros((64, 48, 10), np.float32)
    data[8:56, 8:40, 2:8] = rng.normal(500, 100, (48, 32, 6))  # slices 0, 1, 8, 9 are empty
    path = _volume(tmp_path, data)
    out = tmp_path / "out"
    helpers.convert([path], out, modality="mri", codec="png")
    samples = sorted(helpers.read(out), key=lambda s: s["meta"]["slice_index"])
    assert [s["meta"]["slice_index"] for s in samples] == [2, 3, 4, 5, 6, 7]
    assert all(s["meta"]["axis"] == "axial" for s in samples)  # thickest spacing: the acquisition plane
    ref = data[data != data.min()]
    lo, hi = np.percentile(ref, [0.5, 99.5])
    for s in samples:
        k = s["meta"]["slice_index"]
        want = np.rint(np.clip((np.rot90(data[:, :, k]) - lo) / (hi - lo), 0, 1) * 255)
        got = helpers.decode(s).astype(int)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1


def test_ct_volume_in_hounsfield_window_and_chosen_axis(tmp_path, helpers):
    data = np.full((40, 30, 20), -1000, np.int16)
    data[10:30, 5:25, 5:15] = 40  # soft tissue at the window center
    path = _volume(tmp_path, data, zooms=(1.0, 1.0, 1.0), name="ct.nii")
    out = tmp_path / "out"
    helpers.convert([path], out, modality="ct", codec="png", axis="coronal")
    samples = helpers.read(out)
    assert len(samples) == 20 and all(s["meta"]["axis"] == "coronal" for s in samples)
    img = helpers.decode(samples[0])
    assert img.shape == (20, 40) and {int(img.min()), int(img.max())} == {0, 128}


def test_nifti_without_modality_is_rejected(tmp_path, helpers):
    path = _volume(tmp_path, np.ones((8, 8, 4), np.float32))
    out = tmp_path / "out"
    helpers.convert([path], out)
    assert "--modality" in helpers.rejects(out)[0]["reason"]


def test_scikit_image_pathology_and_fundus_with_labels(tmp_path, helpers):
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [
        ("ihc.png", "pathology", "immunohistochemistry"),
        ("retina.jpg", "fundus", "normal"),
        ("microaneurysms.png", "fundus", "microaneurysms|mild diabetic retinopathy"),
    ]
    for name, _, _ in rows:
        (folder / name).write_bytes((skimage_dir() / name).read_bytes())
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "modality", "labels"])
        for name, mod, labels in rows:
            w.writerow([f"in/{name}", mod, labels])
    out = tmp_path / "out"
    helpers.convert([folder], out, labels=str(table), max_side=256)
    samples = {s["labels"][0]: s for s in helpers.read(out)}
    assert set(samples) == {"immunohistochemistry", "normal", "microaneurysms"}
    ihc = samples["immunohistochemistry"]
    assert ihc["modality"] == "pathology" and len(ihc["captions"]) >= 5
    assert samples["microaneurysms"]["labels"] == ["microaneurysms", "mild diabetic retinopathy"]
    assert "microaneurysms and mild diabetic retinopathy" in samples["microaneurysms"]["captions"][0]
    # Pixels: the source resized (Lanczos) to a longer side of 256, within JPEG tolerance.
    src = Image.open(skimage_dir() / "retina.jpg").convert("RGB")
    scale = 256 / max(src.size)
    want = np.asarray(src.resize((round(src.width * scale), round(src.height * scale)), Image.Resampling.LANCZOS))
    got = helpers.decode(samples["normal"])
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 3


def test_16_bit_png_kept_16_bit_or_windowed(tmp_path, helpers):
    arr = (np.linspace(0, 4095, 64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    folder = tmp_path / "xr"
    folder.mkdir()
    Image.fromarray(arr, mode="I;16").save(folder / "a.png")
    out16 = tmp_path / "o16"
    helpers.convert([folder], out16, modality="xray", codec="png", bits=16)
    (s,) = helpers.read(out16)
    assert s["meta"]["bit_depth"] == 16 and np.array_equal(helpers.decode(s).astype(np.uint16), arr)
    out8 = tmp_path / "o8"
    helpers.convert([folder], out8, modality="xray")
    (s,) = helpers.read(out8)
    assert s["meta"]["codec"] == "jpeg" and helpers.decode(s).dtype == np.uint8


@pytest.mark.parametrize("layout", ["class-folders"])
def test_folder_per_class_layout(tmp_path, helpers, layout):
    root = tmp_path / "fundus"
    for cls in ("glaucoma", "normal"):
        (root / cls).mkdir(parents=True)
        (root / cls / "img.jpg").write_bytes((skimage_dir() / "retina.jpg").read_bytes())
        Image.open(skimage_dir() / "retina.jpg").rotate(90).save(root / cls / "rot.jpg")
    out = tmp_path / "out"
    helpers.convert([root], out, modality="fundus", class_folders=True)
    samples = helpers.read(out)
    # retina.jpg copied twice is one image: uids come from content, so the copies collide by design.
    labels = sorted(s["labels"][0] for s in samples)
    assert set(labels) == {"glaucoma", "normal"}
    assert all(s["source"] == "local" for s in samples)  # never the folder name
