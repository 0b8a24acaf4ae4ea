"""The converter's hot path: no torch in the process, one header parse, cached windows, the JPEG
encoder, chunks and the scheduler, the progress display. Each fast path against its plain one."""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from unimed.ingest import intensity
from unimed.ingest.dicom_header import KEYWORDS, read_header, read_native
from unimed.ingest.progress import Progress
from unimed.ingest.sources.base import Options
from unimed.ingest.sources.dicom import dicom_frame_to_display
from unimed.ingest.synthetic import write_ct_series
from unimed.samples import all_dicom_files

ROOT = Path(__file__).resolve().parents[2]


def _norm(v):
    """A pydicom value and ours in one form (MultiValue -> list, DSfloat/IS -> float, UID -> str)."""
    if v is None or v == "":
        return None
    if isinstance(v, pydicom.sequence.Sequence):
        return bool(len(v))
    if isinstance(v, bool):
        return v
    if isinstance(v, list | tuple | pydicom.multival.MultiValue):
        return [_norm(x) for x in v]
    if isinstance(v, int | float):
        return float(v)
    return str(v)


def test_converter_imports_no_torch_transformers_or_streaming(tmp_path):
    write_ct_series(tmp_path / "in", 12, size=64)
    code = (
        "import sys, json\n"
        "from unimed.ingest import cli\n"
        f"rc = cli.main(['convert', {str(tmp_path / 'in')!r}, '--out', {str(tmp_path / 'out')!r}, '--workers', '2',"
        " '--no-progress'])\n"
        "print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('torch', 'transformers', 'streaming', 'composer')), 'pydicom' in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    rc, heavy, pydicom_loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 0, proc.stderr
    assert heavy == []
    assert not pydicom_loaded  # uncompressed files are read without it
    assert "jpeg encoder: " in proc.stderr and proc.stderr.count("jpeg encoder: ") == 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's own notes on the odd test files
def test_fast_header_reader_matches_pydicom_on_every_test_file():
    """Every value the converter reads, and every native pixel array, equal pydicom's where both read."""
    files = all_dicom_files()
    headers = native = 0
    for f in files:
        ours = read_header(str(f))
        if ours is None:
            continue
        try:
            ref = pydicom.dcmread(f, stop_before_pixels=True)  # what planning read before
        except Exception:
            pytest.fail(f"{f.name}: the fast reader reads a header pydicom refuses")
        headers += 1
        for k in KEYWORDS:
            assert _norm(ours.get(k)) == _norm(ref.get(k)), (f.name, k)
        assert str(ours.file_meta.TransferSyntaxUID) == str(ref.file_meta.TransferSyntaxUID)
        assert ours.file_meta.TransferSyntaxUID.name == ref.file_meta.TransferSyntaxUID.name  # meta's transfer_syntax
        if "SOPClassUID" in ref:
            assert ours.get("SOPClassUID").name == ref.SOPClassUID.name  # said in a reject reason
        if ours.native is not None:
            want = pydicom.dcmread(f).pixel_array
            got = read_native(str(f), ours)
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), f.name
            native += 1
    assert headers > 80 and native > 20, (headers, native)


def test_fast_header_reader_refuses_what_it_does_not_know(tmp_path):
    src = next(f for f in all_dicom_files() if f.name == "CT_small.dcm")
    data = src.read_bytes()
    for name, blob in {
        "cut": data[:2000],
        "no_preamble": data[132:],
        "garbage": os.urandom(4000),
        "pixels_cut": data[:-300],
    }.items():  # the pixels end 138 bytes before the file
        (tmp_path / name).write_bytes(blob)
        assert read_header(str(tmp_path / name)) is None, name
    with pytest.raises(KeyError, match="does not read"):
        read_header(str(src)).get("PatientName")


def _convert(helpers, inputs, out, env=None, **kw):
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return helpers.convert(inputs, out, **kw)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_fast_path_and_pydicom_path_give_the_same_dataset(tmp_path, helpers):
    """All test files through the fast reader and through pydicom alone: the same samples, the same rejects."""
    folder = tmp_path / "in"
    folder.mkdir()
    for f in all_dicom_files():
        if f.stat().st_size < 3_000_000:
            (folder / f"{f.parent.name}_{f.name}").write_bytes(f.read_bytes())
    (folder / "cut.dcm").write_bytes(
        (folder / "pydicom_CT_small.dcm").read_bytes()[:-300] if (folder / "pydicom_CT_small.dcm").exists() else b""
    )
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    _convert(helpers, [folder], fast, codec="png", max_side=0, workers=2)
    _convert(helpers, [folder], slow, {"UNIMED_DICOM_READER": "pydicom"}, codec="png", max_side=0, workers=2)
    a, b = helpers.read(fast), helpers.read(slow)
    assert len(a) > 50
    key = lambda s: s["uid"]  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)
    assert helpers.dataset_rejects(fast) == helpers.dataset_rejects(slow)


def test_windows_come_from_one_cached_table_equal_to_the_per_slice_table():
    rng = np.random.default_rng(0)
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation, ds.RescaleSlope, ds.RescaleIntercept = "MONOCHROME2", 1, -1024
    ds.PixelRepresentation = 0
    opts = Options(window="lung,mediastinum,bone")
    intensity._TABLES.clear()
    for _ in range(3):
        arr = rng.integers(0, 4096, (32, 48)).astype(np.uint16)
        got, meta = dicom_frame_to_display(arr, ds, 0, "ct", opts)
        hu = arr.astype(np.float32) - 1024
        want = np.stack(
            [intensity.to_uint(intensity.apply_window(hu, c, w)) for c, w in intensity.parse_windows(opts.window)],
            axis=-1,
        )
        assert got.shape == (32, 48, 3) and np.array_equal(got, want)
    assert len(intensity._TABLES) == 1  # one table for the three slices


def test_the_window_loop_is_compiled_in_this_install():
    # CI and `make test` build it (a C compiler is at hand): a silent fallback to numpy would cost ~0.15 ms a slice
    assert intensity.LOOKUP == "compiled", "unimed/ingest/_lut.c did not build: reinstall with a C compiler"


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", ">i2"])
@pytest.mark.parametrize("entry", [("uint8", ()), ("uint8", (3,)), ("uint16", ()), ("uint16", (3,))])
def test_the_compiled_lookup_gives_numpy_s_array(dtype, entry):
    rng = np.random.default_rng(1)
    dt = np.dtype(dtype)
    n = 1 << (8 * dt.itemsize)
    table = rng.integers(0, np.iinfo(entry[0]).max + 1, (n, *entry[1]), dtype=entry[0])
    every = np.arange(n, dtype=f"u{dt.itemsize}").view(dt.newbyteorder("=")).astype(dt)  # each bit pattern once
    arrs = [
        rng.permutation(every).reshape(-1, 64),
        rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, (37, 41), endpoint=True).astype(dt)[::2, 1::3],  # strided
        np.zeros((0, 5), dt),
    ]
    for arr in arrs:
        got, want = intensity.lookup(arr, table), intensity.lookup(arr, table, compiled=False)
        assert got.dtype == want.dtype and got.shape == want.shape == arr.shape + entry[1]
        assert np.array_equal(got, want)


def test_a_build_without_the_compiled_loop_writes_the_same_dataset_and_says_so(tmp_path, helpers):
    """Real files (CT by Hounsfield windows, MR and radiographs by their windows or percentiles, 8- and 16-bit)
    and a synthetic series, converted here (compiled loop) and in a process where the extension cannot import."""
    folder = tmp_path / "in"
    folder.mkdir()
    for f in all_dicom_files():
        if f.stat().st_size < 600_000:
            (folder / f"{f.parent.name}_{f.name}").write_bytes(f.read_bytes())
    write_ct_series(folder / "series", 6, size=64)
    compiled, plain = tmp_path / "compiled", tmp_path / "numpy"
    helpers.convert([folder], compiled, codec="png", max_side=0)
    code = (
        "import sys\n"
        "sys.modules['unimed.ingest._lut'] = None  # as if it had not been built\n"
        "from unimed.ingest import cli\n"
        f"sys.exit(cli.main(['convert', {str(folder)!r}, '--out', {str(plain)!r}, '--codec', 'png',"
        " '--max-size', '0', '--no-progress']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr  # rejects (some real files are broken) are reported, not fatal
    assert "window lookup: numpy" in proc.stderr
    a, b = helpers.read(compiled), helpers.read(plain)
    assert len(a) > 20
    key = lambda s: s["uid"]  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)


def test_the_compiled_lookup_refuses_mismatched_buffers():
    lut = pytest.importorskip("unimed.ingest._lut")
    pixels, table = np.zeros(10, np.uint16), np.zeros(1 << 16, np.uint8)
    with pytest.raises(ValueError, match="output holds 9 bytes, 10 pixels need 10"):
        lut.take(pixels, table, np.empty(9, np.uint8), 2)
    with pytest.raises(ValueError, match="a table of 100 bytes"):
        lut.take(pixels, np.zeros(100, np.uint8), np.empty(10, np.uint8), 2)
    with pytest.raises(ValueError, match="pixels of 1 or 2 bytes"):
        lut.take(pixels, table, np.empty(10, np.uint8), 4)


@pytest.mark.parametrize("fast", ["imagecodecs", "simplejpeg"])
@pytest.mark.parametrize("shape", [(96, 128), (96, 128, 3)])
def test_fast_jpeg_encoders_and_pillow_decode_to_close_pixels(shape, fast):
    from PIL import Image

    pytest.importorskip(fast)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    rng = np.random.default_rng(0)
    img = np.clip(x * 1.5 + y + 40 * np.sin(x / 9.0) + rng.normal(0, 4, x.shape), 0, 255).astype(np.uint8)
    if len(shape) == 3:
        img = np.stack([img, 255 - img, (img // 2 + 60).astype(np.uint8)], axis=-1)
    enc, plain = intensity.jpeg_encoder(fast), intensity.jpeg_encoder("pillow")
    assert enc.name == fast and plain.name == "pillow" and "Pillow" in plain.description
    a = np.asarray(Image.open(io.BytesIO(enc.encode(img, 90)))).astype(int)
    b = np.asarray(Image.open(io.BytesIO(plain.encode(img, 90)))).astype(int)
    assert a.shape == b.shape == img.shape
    assert np.abs(a - b).max() <= 16 and np.abs(a - b).mean() < 1.5
    # As faithful as Pillow: the mean error against the source within 10% of Pillow's.
    assert np.abs(a - img).mean() <= 1.1 * np.abs(b - img).mean() < 3.0
    if fast == "imagecodecs":  # the same libjpeg-turbo settings as Pillow's: the same bytes
        assert enc.encode(img, 90) == plain.encode(img, 90)


def test_the_encoder_is_chosen_once_and_said_in_one_line():
    auto = intensity.jpeg_encoder()
    assert auto is intensity.jpeg_encoder() and auto.name in ("imagecodecs", "simplejpeg", "pillow")
    assert "\n" not in auto.description and "UNIMED_JPEG" in auto.description


def test_at_least_four_chunks_per_worker_in_whole_rounds_and_a_resume_keeps_the_first_cut(tmp_path, helpers):
    from unimed.ingest.convert import _chunks
    from unimed.ingest.sources.base import Task

    tasks = [Task("dicom", [f"/x/{i}"], weight=1000) for i in range(200)]
    for workers in (1, 2, 3, 8):
        chunks = _chunks(tasks, "p000", 64.0, workers)
        sizes = [len(c.tasks) for c in chunks]
        assert len(chunks) == 4 * workers and sum(sizes) == 200 and max(sizes) - min(sizes) <= 1
    assert len(_chunks(tasks, "p000", 0.01, 1)) == 20  # at most 0.01 MB a chunk: 10 tasks of 1 kB
    # 9 chunks by size on 2 workers would leave the ninth running alone: a whole round each instead
    nine = [Task("dicom", [f"/x/{i}"], weight=525_000) for i in range(1000)]
    assert len(_chunks(nine, "p000", 64.0, 1)) == 9
    assert len(_chunks(nine, "p000", 64.0, 2)) == 10 and len(_chunks(nine, "p000", 64.0, 3)) == 12
    series = tmp_path / "in"
    write_ct_series(series, 24, size=32)
    out = tmp_path / "out"
    helpers.convert([series], out, workers=1)
    plan = json.loads((out / ".unimed" / "plan-p000.json").read_text())
    assert plan["chunks"] == [6, 6, 6, 6]
    helpers.convert([series], out, workers=3, resume=True)  # nothing to redo, the same cut
    assert json.loads((out / ".unimed" / "plan-p000.json").read_text())["chunks"] == [6, 6, 6, 6]
    assert len(helpers.read(out)) == 24


def test_progress_without_a_terminal_writes_lines_every_few_seconds(monkeypatch):
    import unimed.ingest.progress as progress

    stream = io.StringIO()
    bar = Progress(1000, True, stream)
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    bar.t0 = bar.last = 0.0
    for _ in range(1100):
        clock[0] += 0.01  # 11 s in all
        bar.update(1, 1)
    bar.write("reject abc: reason")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len([ln for ln in lines if ln.startswith("convert ")]) == 2  # at 5 s and 10 s
    assert lines[-1] == "reject abc: reason"


def test_progress_on_a_terminal_redraws_a_few_times_a_second(monkeypatch):
    import unimed.ingest.progress as progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = Progress(1000, True, stream)
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    bar.t0 = bar.last = 0.0
    for _ in range(1000):
        clock[0] += 0.002  # 2 s in all
        bar.update(1, 2)
    bar.close()
    frames = stream.getvalue().count("\r\033[K")
    assert 4 <= frames <= 10  # at most 4 a second, and the last frame
    assert "1000/1000 files, 2000 img" in stream.getvalue()


def test_worker_rejects_reach_the_parent_before_the_run_ends(tmp_path):
    """Two workers, many chunks, a reject in the last one: its line is printed (the queue keeps order)."""
    folder = tmp_path / "in"
    write_ct_series(folder, 30, size=32)
    (folder / "zzz_broken.dcm").write_bytes((folder / "slice00000.dcm").read_bytes()[:-200])
    lines: list[str] = []
    from unimed.ingest.convert import ConvertConfig, convert

    summary = convert(
        ConvertConfig(inputs=[str(folder)], out=str(tmp_path / "out"), workers=2, progress=False), echo=lines.append
    )
    assert summary["images"] == 30 and summary["chunks"] >= 8
    assert len([ln for ln in lines if ln.startswith("reject ")]) == 1


def test_nifti_inflated_in_one_call_reads_as_nibabel_reads_it(tmp_path):
    import nibabel as nib

    from unimed.ingest.sources.nifti import _file_digest, load_volume
    from unimed.ingest.synthetic import write_nifti_volumes
    from unimed.samples import nibabel_dir

    files = sorted(nibabel_dir().glob("*.nii.gz")) + write_nifti_volumes(tmp_path, 1, 12, size=40)
    assert len(files) >= 3
    for f in files:
        fast, digest = load_volume(str(f))
        slow, slow_digest = load_volume(str(f), fast=False)
        assert isinstance(fast.dataobj.file_like, io.BytesIO)  # inflated in one call, not by nibabel
        assert digest == slow_digest == _file_digest(str(f))
        assert type(fast) is type(slow) and fast.header.binaryblock == slow.header.binaryblock, f.name
        a, b = np.asarray(fast.dataobj, dtype=np.float32), np.asarray(slow.dataobj, dtype=np.float32)
        assert np.array_equal(a, b, equal_nan=True), f.name
        assert np.array_equal(nib.as_closest_canonical(fast).affine, nib.as_closest_canonical(slow).affine)


_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from unimed.ingest.lifecycle import keep_freed_memory
    assert keep_freed_memory()
def image():  # an image's temporaries, made together and freed together: 12 MB
    parts = [np.ones(4 << 20, np.uint8) for _ in range(3)]
    return sum(int(p[::4096].sum()) for p in parts)
for _ in range(5):  # warm: the heap grows once
    image()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    image()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_converter_keeps_freed_buffers_instead_of_faulting_them_in_again():
    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        return int(done.stdout)

    if not _GLIBC:
        pytest.skip("not glibc")
    assert faults("default") >= 20 * 500  # of its 3,072 pages, about 1,000 handed back and faulted in again
    assert faults("keep") < 100  # reused: no page faulted in again


def test_a_conversion_sets_the_allocator(tmp_path):
    # In a fresh process: in this one an earlier test's conversion may have set it already.
    write_ct_series(tmp_path / "in", 4, size=32)
    code = (
        "import sys\n"
        "from unimed.ingest import lifecycle\n"
        "from unimed.ingest.convert import ConvertConfig, convert\n"
        "before = lifecycle._HEAP_KEPT\n"
        "cfg = ConvertConfig(inputs=[sys.argv[1]], out=sys.argv[2], workers=2, progress=False)\n"
        "convert(cfg, echo=lambda s: None)\n"
        "print(before, lifecycle._HEAP_KEPT)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "in"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["False", str(_GLIBC)]


def test_planning_pauses_the_collector_and_gives_it_back_as_it_was(tmp_path, helpers, monkeypatch):
    import gc

    from unimed.ingest import convert as conv

    seen = []
    real = conv.plan
    monkeypatch.setattr(conv, "plan", lambda *a, **k: (seen.append(gc.isenabled()), real(*a, **k))[1])
    write_ct_series(tmp_path / "in", 4, size=32)
    helpers.convert([tmp_path / "in"], tmp_path / "out", workers=1)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        helpers.convert([tmp_path / "in"], tmp_path / "out2", workers=1)
        assert not gc.isenabled()  # a caller's own setting is kept
    finally:
        gc.enable()
