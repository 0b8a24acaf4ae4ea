"""Leakage: planted re-encoded, resized and shifted copies of real images are found between a training
and an evaluation set converted by ``ingest``; distinct real images are not paired; ``drop`` cleans."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unimed.leakage import find_pairs, fingerprint, leakage, markdown

KEY = "leakage-test-key-0123456789abcdef0123"


def _real_images() -> list[Path]:
    import skimage

    d = Path(skimage.__file__).parent / "data"
    return [
        p
        for p in sorted(d.iterdir())
        if p.suffix in (".png", ".jpg") and "chessboard" not in p.name and p.name != "motorcycle_right.png"
    ]  # the right view of the stereo pair is a near-copy of the left


def _variants(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    q = io.BytesIO()
    im.save(q, "JPEG", quality=55)
    return {
        "reencoded": Image.open(io.BytesIO(q.getvalue())),
        "resized": im.resize((w * 3 // 4, h * 3 // 4)),
        "shifted": Image.fromarray(np.roll(np.asarray(im), 1, axis=1)),
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # the key is this module's, not the rest of the suite's
        mp.setenv("UNIMED_UID_KEY", KEY)
        yield _planted(tmp_path_factory)


def _planted(tmp_path_factory):
    from unimed.ingest.convert import ConvertConfig, convert

    root = tmp_path_factory.mktemp("leak")
    images = _real_images()
    train_imgs, held_out = images[:-5], images[-5:]
    (root / "train_in").mkdir()
    (root / "eval_in").mkdir()
    for p in train_imgs:
        Image.open(p).convert("RGB").save(root / "train_in" / f"{p.stem}.png")
    Image.open(train_imgs[0]).convert("RGB").save(root / "train_in" / "again_copy.jpg", quality=95)  # within train
    planted = 0
    for p in train_imgs[:6]:
        for kind, v in _variants(Image.open(p).convert("RGB")).items():
            v.save(root / "eval_in" / f"{p.stem}_{kind}.png")
            planted += 1
    for p in held_out:
        Image.open(p).convert("RGB").save(root / "eval_in" / f"{p.stem}.png")
    for name in ("train", "eval"):
        convert(
            ConvertConfig(inputs=[str(root / f"{name}_in")], out=str(root / name), modality="other", progress=False),
            echo=lambda s: None,
        )
    return root, planted, len(train_imgs) + 1


def test_planted_copies_are_found_and_distinct_images_are_not(planted):
    root, n_planted, n_train = planted
    report = leakage(str(root / "train"), [str(root / "eval")], sheet=str(root / "pairs.png"), drop=str(root / "clean"))
    ev = report["sets"]["eval"]
    assert ev["samples"] == n_planted + 5
    assert ev["eval_samples_in_train"] == n_planted  # every planted copy, no held-out image
    # and no false pair: each copy pairs with its original, the 3 copies of image 0 with its re-saved copy too
    assert ev["exact_pairs"] + ev["near_pairs"] == n_planted + 3
    assert report["train"]["exact_pairs"] + report["train"]["near_pairs"] == 1  # the re-saved copy
    assert report["train"]["to_drop"] == 6 + 1 and report["train"]["kept"] == n_train - 7
    again = leakage(str(root / "clean"), [str(root / "eval")])
    assert again["sets"]["eval"]["eval_samples_in_train"] == 0 and again["train"]["near_pairs"] == 0
    with Image.open(report["sheet"]) as im:
        assert im.height >= 160 * n_planted
    table = markdown(report)
    assert "| eval |" in table and "near" in table


def test_exact_pairs_need_identical_pixels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    a, b = io.BytesIO(), io.BytesIO()
    Image.fromarray(img).save(a, "PNG")
    Image.fromarray(img).save(b, "PNG", compress_level=9)  # other bytes, same pixels
    img[0, 0] ^= 1
    c = io.BytesIO()
    Image.fromarray(img).save(c, "PNG")
    ea, eb, ec = (fingerprint(x.getvalue())[0] for x in (a, b, c))
    assert ea == eb != ec


def test_distances_match_a_brute_force_count():
    from unimed.leakage import Prints

    rng = np.random.default_rng(1)
    a = Prints("a", exact=[f"a{i}" for i in range(300)], phash=rng.integers(0, 2**63, 300, dtype=np.uint64))
    b = Prints("b", exact=[f"b{i}" for i in range(200)], phash=a.phash[:200] ^ np.uint64(0b1011))  # 3 bits off
    got = {(p.i, p.j, p.distance) for p in find_pairs(a, b, max_distance=3)}
    want = {
        (i, j, bin(int(a.phash[i]) ^ int(b.phash[j])).count("1"))
        for i in range(300)
        for j in range(200)
        if bin(int(a.phash[i]) ^ int(b.phash[j])).count("1") <= 3
    }
    assert got == want and len(want) >= 200


def test_a_folder_without_shards_is_one_user_error(tmp_path):
    from unimed.errors import UserError

    with pytest.raises(UserError, match="No MDS index.json"):
        leakage(str(tmp_path), [str(tmp_path)])


def test_the_leakage_command(planted, capsys):
    from unimed import cli

    root, n_planted, _ = planted
    assert cli.main(["leakage", str(root / "train"), str(root / "eval"), "--json", str(root / "r.json")]) == 0
    out = capsys.readouterr().out
    assert f"| eval | {n_planted + 5} |" in out
    assert cli.main(["leakage", str(root / "train"), str(root / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
