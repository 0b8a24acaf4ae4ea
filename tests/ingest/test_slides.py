"""Whole-slide images: synthetic pyramidal JPEG-tiled TIFFs (tifffile) and scikit-image's IHC tissue."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from unimed.ingest.sources.base import Options
from unimed.ingest.sources.slide import SlideSource, TiffSlide, reader_kind
from unimed.ingest.sources.tiles import choose_level, saturation, tissue_threshold
from unimed.ingest.synthetic import write_dicom_slide, write_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("slides") / "s1.tif", 4096, 3072, levels=4, mpp=0.25)


def test_pyramid_levels_resolution_and_tiles_read_back(slide):
    r = TiffSlide(str(slide))
    try:
        assert r.sizes == [(4096, 3072), (2048, 1536), (1024, 768), (512, 384)]
        assert r.mpp == pytest.approx(0.25)
        region = r.read(0, 0, 0, 300, 300)  # corner: background (sparse tiles) is white
        assert region.shape == (300, 300, 3) and region.min() == 255
        x, y = int(0.3 * 4096), int(0.35 * 3072)  # inside the first tissue blob
        assert saturation(r.read(0, x - 64, y - 64, 128, 128)).mean() > 0.2
    finally:
        r.close()
    assert choose_level(r.sizes, 0.25, Options(mpp=0.5))[:2] == (1, 1.0)
    assert choose_level(r.sizes, 0.25, Options(mpp=0.75))[:2] == (1, 1.5)
    assert choose_level(r.sizes, None, Options(level=2))[0] == 2


def test_slide_converts_to_tissue_tiles_with_labels_and_cap(slide, tmp_path, helpers):
    labels = tmp_path / "slides.csv"
    labels.write_text(f"path,labels\n{slide},lung adenocarcinoma\n")
    summary = helpers.convert([slide], tmp_path / "out", labels=str(labels), max_side=0)
    samples = helpers.read(tmp_path / "out")
    assert summary["images"] == len(samples) > 3 and summary["modality"] == {"pathology": len(samples)}
    for s in samples:
        m = s["meta"]
        assert m["level"] == 1 and m["mpp"] == 0.5 and m["tile_size"] == 256 and m["tissue"] >= 0.5
        assert m["tile_x"] % 512 == 0 and m["tile_y"] % 512 == 0
        assert helpers.decode(s).shape == (256, 256, 3)
        assert s["labels"] == ["lung adenocarcinoma"] and "adenocarcinoma" in s["captions"][0]
    assert len({s["uid"] for s in samples}) == len(samples)
    capped = helpers.convert([slide], tmp_path / "capped", max_tiles=3, mpp=0.75, tile_size=128)
    assert capped["images"] <= 3
    (s,) = helpers.read(tmp_path / "capped")[:1]
    assert s["meta"]["scale"] == 1.5 and helpers.decode(s).shape == (128, 128, 3)


def test_real_tissue_ihc_as_a_pyramid(tmp_path, helpers):
    import tifffile
    from skimage import data

    ihc = data.immunohistochemistry()  # 512x512 RGB, tissue over the whole field
    path = tmp_path / "ihc.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(ihc, tile=(128, 128), compression="jpeg", photometric="rgb", subifds=1)
        tif.write(ihc[::2, ::2], tile=(128, 128), compression="jpeg", photometric="rgb", subfiletype=1)
    sat = saturation(ihc)
    assert 0.07 <= tissue_threshold(sat) < 0.9
    summary = helpers.convert([path], tmp_path / "out", level=0, tile_size=128, min_tissue=0.3)
    assert 4 <= summary["images"] <= 16  # no resolution tags: --level 0
    assert all("mpp" not in s["meta"] for s in helpers.read(tmp_path / "out"))


def test_plain_tiff_is_not_a_slide(tmp_path):
    import tifffile

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8))
    assert not SlideSource().probe(path, path.read_bytes()[:256])


_MEASURE = textwrap.dedent("""
    import json, os, sys
    os.environ["UNIMED_UID_KEY"] = "slide-test-key-0123456789abcdef0123"
    from unimed.ingest.convert import ConvertConfig, convert
    import streaming, torch  # imported before the baseline figure
    def hwm():  # peak RSS of this process image (ru_maxrss would count the parent's before exec)
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    base = hwm()
    s = convert(ConvertConfig(inputs=[sys.argv[1]], out=sys.argv[2], progress=False), echo=lambda s: None)
    print(json.dumps({"images": s["images"], "base_kb": base, "peak_kb": hwm()}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_100k_slide_converts_with_bounded_memory(tmp_path):
    blobs = [(0.5, 0.5, 0.01), (0.2, 0.8, 0.005)]
    small = write_slide(tmp_path / "small.tif", 10_000, 10_000, levels=4, mpp=0.25, blobs=[(0.5, 0.5, 0.06)])
    big = write_slide(tmp_path / "big.tif", 100_000, 100_000, levels=7, mpp=0.25, blobs=blobs)
    peaks = {}
    for name, path in (("small", small), ("big", big)):
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(path), str(tmp_path / f"out_{name}")],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[name] = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks["big"]["images"] >= 10
    growth_big = peaks["big"]["peak_kb"] - peaks["big"]["base_kb"]
    growth_small = peaks["small"]["peak_kb"] - peaks["small"]["base_kb"]
    assert growth_big < growth_small + 80 * 1024, peaks  # does not grow with the slide (100x the area)
    assert growth_big < 300 * 1024, peaks
    print(
        f"peak RSS growth while converting: 10k slide {growth_small / 1024:.0f} MB, "
        f"100k slide {growth_big / 1024:.0f} MB"
    )


def test_dicom_whole_slide_tiles(tmp_path, helpers):
    folder = tmp_path / "wsi"
    folder.mkdir()
    full = write_dicom_slide(folder / "level0.dcm")
    write_dicom_slide(folder / "label.dcm", image_type=("ORIGINAL", "PRIMARY", "LABEL"))
    out = tmp_path / "out"
    helpers.convert([folder], out, tile_size=64, mpp=0.5, min_tissue=0.5, codec="png", max_side=0)
    samples = helpers.read(out)
    rejected = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in helpers.rejects(out)}
    assert "label" in rejected["label.dcm"]  # label images show the slide label: never converted
    # Tissue fills the left two tile columns of three rows: 6 tiles; the white half is background.
    assert len(samples) == 6 and {s["modality"] for s in samples} == {"pathology"}
    for s in samples:
        x, y = s["meta"]["tile_x"], s["meta"]["tile_y"]
        assert x < 128
        assert np.array_equal(helpers.decode(s), full[y : y + 64, x : x + 64])
    assert b"Planted" not in b"".join(p.read_bytes() for p in out.rglob("*.json*"))
    # The cap on tiles per slide keeps a stable random subset.
    capped = tmp_path / "capped"
    helpers.convert([folder / "level0.dcm"], capped, tile_size=64, mpp=0.5, max_tiles=4)
    assert len(helpers.read(capped)) == 4


def _small_pyramid(path, *, bigtiff: bool, byteorder: str) -> None:
    """A two-level, JPEG-tiled pyramid of scikit-image's IHC tissue, written by tifffile."""
    import tifffile
    from skimage import data

    ihc = data.immunohistochemistry()
    with tifffile.TiffWriter(path, bigtiff=bigtiff, byteorder=byteorder) as tif:
        tif.write(ihc, tile=(128, 128), compression="jpeg", photometric="rgb", subifds=1)
        tif.write(ihc[::2, ::2], tile=(128, 128), compression="jpeg", photometric="rgb", subfiletype=1)


@pytest.mark.parametrize(
    ("bigtiff", "byteorder", "magic"),
    [(False, "<", b"II*\x00"), (False, ">", b"MM\x00*"), (True, "<", b"II+\x00"), (True, ">", b"MM\x00+")],
)
def test_a_tiled_tiff_without_a_slide_suffix_is_a_slide(tmp_path, bigtiff, byteorder, magic):
    """TIFF and BigTIFF in both byte orders, named ``slide_001`` and ``.dat``: the slide source, by magic bytes."""
    from unimed.ingest.sources import registry

    for name in ("slide_001", "scan.dat"):
        path = tmp_path / name
        _small_pyramid(path, bigtiff=bigtiff, byteorder=byteorder)
        head = path.read_bytes()[:256]
        assert head[:4] == magic and reader_kind(head) == "tiff"
        chosen = next(s for s in registry().values() if s.probe(path, head))
        assert chosen.name == "slide", name
        task = chosen.plan(path, Options())
        assert task.tiling is None  # the TIFF reader, not the DICOM one
        items = list(chosen.iter_items(task, Options(level=0, tile_size=128, min_tissue=0.3)))
        assert len(items) >= 4 and {it.modality for it in items} == {"pathology"}


def test_suffixless_tiled_slide_converts(tmp_path, helpers):
    """The whole run: a pyramid named ``slide_001`` becomes tiles (it used to be rejected as DICOM)."""
    path = write_slide(tmp_path / "in" / "slide_001", 2048, 1536, levels=3, mpp=0.25)
    out = tmp_path / "out"
    summary = helpers.convert([path.parent], out, tile_size=256, mpp=0.5, max_side=0)
    assert summary["images"] == len(helpers.read(out)) > 0 and summary["modality"] == {"pathology": summary["images"]}
    assert helpers.rejects(out) == []


def test_reader_kind_checks_dicom_before_tiff():
    """DICM at 128 decides first (a DICOM preamble may hold a TIFF header); a DICOM file that is no
    whole-slide image is no slide at all."""
    wsi = b"II*\x00" + bytes(124) + b"DICM" + b"\x02\x00\x02\x00UI\x1e\x001.2.840.10008.5.1.4.1.1.77.1.6\x00"
    ct = b"II*\x00" + bytes(124) + b"DICM" + b"\x02\x00\x02\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.2\x00"
    assert reader_kind(wsi.ljust(256, b"\x00")) == "dicom"
    assert reader_kind(ct.ljust(256, b"\x00")) is None
    assert reader_kind(b"\x89PNG\r\n\x1a\n".ljust(256, b"\x00")) is None


def test_suffixless_dicom_whole_slide_goes_to_the_dicom_slide_reader(tmp_path, helpers):
    folder = tmp_path / "wsi"
    folder.mkdir()
    full = write_dicom_slide(folder / "level0")  # no suffix
    head = (folder / "level0").read_bytes()[:256]
    assert reader_kind(head) == "dicom" and SlideSource().probe(folder / "level0", head)
    task = SlideSource().plan(folder / "level0", Options())
    assert task.tiling is not None and task.tiling.size == (256, 192) and task.modality == "pathology"
    out = tmp_path / "out"
    helpers.convert([folder], out, tile_size=64, mpp=0.5, min_tissue=0.5, codec="png", max_side=0)
    samples = helpers.read(out)
    assert len(samples) == 6 and {s["modality"] for s in samples} == {"pathology"}
    for s in samples:
        x, y = s["meta"]["tile_x"], s["meta"]["tile_y"]
        assert np.array_equal(helpers.decode(s), full[y : y + 64, x : x + 64])


def test_slide_modules_do_not_import_each_other():
    """The tiling is shared through .tiles; the DICOM slide reader does not import the TIFF one."""
    import ast
    from pathlib import Path

    import unimed.ingest.sources.dicom_slide as dicom_slide
    import unimed.ingest.sources.tiles as tiles

    for mod in (dicom_slide, tiles):
        tree = ast.parse(Path(mod.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "unimed.ingest.sources.slide" not in imported, mod.__name__


@pytest.mark.parametrize("forced", [False, True])
def test_dicom_slide_keeps_its_modality_unless_forced(tmp_path, forced):
    """Modality SM is pathology; ``--modality`` does not replace it, ``--force-modality`` does."""
    write_dicom_slide(tmp_path / "level0.dcm")
    opts = Options(modality="other", force_modality=forced, tile_size=64, mpp=0.5)
    task = SlideSource().plan(tmp_path / "level0.dcm", opts)
    assert task.modality == ("other" if forced else "pathology")
    assert task.overridden == ("SM" if forced else None)
    assert {it.modality for it in SlideSource().iter_items(task, opts)} == {task.modality}
