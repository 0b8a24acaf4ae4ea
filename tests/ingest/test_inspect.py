"""``ingest inspect``: pictures beside the dataset (never inside), a readable grid, small images enlarged."""

from __future__ import annotations

import numpy as np
from PIL import Image

from unimed.ingest import cli
from unimed.ingest.inspect import COLS, TILE, _font, inspect


def test_pictures_go_beside_the_dataset_in_a_grid(tmp_path, helpers, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for k in range(14):  # 14 small images of one modality: three rows of at most COLS tiles
        Image.fromarray(rng.integers(0, 255, (40, 56), dtype=np.uint8)).save(src / f"{k}.png")
    out = tmp_path / "out"
    helpers.convert([src], out, modality="xray", source_name="grid")
    before = sorted(p.name for p in out.rglob("*"))
    info = inspect(str(out), per_modality=14)
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written into the dataset
    assert info["sheet"] == str(tmp_path / "out.inspect" / "contact_sheet.png")
    with Image.open(info["sheet"]) as im:
        assert im.width <= 110 + COLS * TILE  # never one long strip
        assert im.height >= 3 * TILE
        tile = np.asarray(im.convert("L"))[:TILE, 110 : 110 + TILE]
    filled = (tile != 255).any(axis=0).sum()
    assert filled >= TILE - 16  # a 56-px-wide image fills its tile's width, not 56 px of it
    assert cli.main(["inspect", str(out)]) == 0 and "out.inspect" in capsys.readouterr().out


def test_captions_on_the_sheet_keep_their_spaces():
    """The sheet's font gives a space its width ("A CT scan.", never "ACTscan.")."""
    font = _font()
    assert font.getlength("A CT scan.") - font.getlength("ACTscan.") >= 4  # two spaces, 2 px or more each
