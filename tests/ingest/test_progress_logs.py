"""The long commands off a terminal (a log file, a CI job): a plain progress line every few seconds at
most, never a ``\\r`` frame per file; convert, verify, inspect and split share the one display."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unimed.ingest import cli

N = 300


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(3)
    for i in range(N):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "\r" not in err and "\033[K" not in err
    return err


def test_off_a_terminal_300_files_are_a_few_lines(pngs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["convert", str(pngs), "--out", str(out), "--modality", "other"]) == 0  # progress on
    err = _err(capsys)
    assert len(err.splitlines()) <= 4, err  # the encoder line, and a line per 5 s at most
    assert cli.main(["verify", str(out)]) == 0
    assert len(_err(capsys).splitlines()) <= 3
    assert cli.main(["inspect", str(out), "--sheet", str(tmp_path / "sheet.png")]) == 0
    assert len(_err(capsys).splitlines()) <= 3
    assert cli.main(["split", str(out), "--out", str(tmp_path / "split")]) == 0
    assert len(_err(capsys).splitlines()) <= 3


def test_verify_inspect_split_use_the_convert_display(pngs, tmp_path, capsys, monkeypatch):
    import unimed.ingest.progress as progress

    out = tmp_path / "out"
    assert cli.main(["convert", str(pngs), "--out", str(out), "--modality", "other", "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line per item: shows each loop reports through it
    for what, *args in (("verify",), ("inspect", "--sheet", str(tmp_path / "s.png")), ("split", "--out")):
        for quiet in (False, True):
            extra = [str(tmp_path / f"split{quiet}")] if what == "split" else []
            assert cli.main([what, str(out), *args, *extra, *(["--no-progress"] if quiet else [])]) == 0
            lines = [ln for ln in _err(capsys).splitlines() if ln.startswith(f"{what} ")]
            if quiet:
                assert lines == []
            else:
                assert lines[-1].startswith(f"{what} {N}/{N} samples") and len(lines) >= N


def test_the_rate_and_time_left_are_of_the_samples_not_of_the_start_up(pngs, tmp_path, capsys, monkeypatch):
    """verify's first line once came at the first sample, after streaming's seconds of import: "1/83 samples,
    0.2/s, 6:50 left" for a run that then took a second. The display starts when the samples do."""
    import contextlib
    import time

    import unimed.ingest.progress as progress
    import unimed.ingest.verify as verify

    out = tmp_path / "out"
    assert cli.main(["convert", str(pngs), "--out", str(out), "--modality", "other", "--no-progress"]) == 0
    capsys.readouterr()
    opened = verify.open_dataset

    @contextlib.contextmanager
    def slow_open(folder):
        time.sleep(0.6)  # the import and the index reading
        with opened(folder) as ds:
            yield ds

    monkeypatch.setattr(verify, "open_dataset", slow_open)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.5)
    assert cli.main(["verify", str(out), "--no-decode"]) == 0
    assert not [ln for ln in _err(capsys).splitlines() if ln.startswith(f"verify 1/{N} samples")]
