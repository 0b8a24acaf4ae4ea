"""``ingest inspect``: counts per modality and source, a contact sheet and a balance bar chart to look at."""

from __future__ import annotations

import io
import os
import random
import textwrap
from collections import Counter, defaultdict
from typing import Any

from unimed.ingest.progress import Progress
from unimed.ingest.reader import open_dataset

__all__ = ["inspect", "contact_sheet", "balance_chart", "pictures_dir"]

TILE = 192
TEXT_H = 60
COLS = 6  # tiles per row; a modality with more picks wraps onto further rows


def _font(size: int = 12):  # noqa: ANN202 - a PIL font
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1): spaces keep their width
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def contact_sheet(rows: dict[str, list[dict]], path: str) -> str:
    """Draw each modality's (image, first caption) tiles in rows of at most ``COLS``; save a PNG.

    Images are scaled to fill their tile both ways (small images are enlarged), captions wrapped.
    """
    import math

    from PIL import Image, ImageDraw, ImageOps

    font = _font()
    cols = max(1, min(COLS, max((len(v) for v in rows.values()), default=1)))
    lines = {m: max(1, math.ceil(len(v) / cols)) for m, v in rows.items()}
    label_w = 110
    height = max(1, sum(lines.values())) * (TILE + TEXT_H)
    sheet = Image.new("RGB", (label_w + cols * TILE, height), "white")
    draw = ImageDraw.Draw(sheet)
    y0 = 0
    for modality, samples in sorted(rows.items()):
        draw.text((6, y0 + TILE // 2), modality, fill="black", font=font)
        for k, s in enumerate(samples):
            x0, y = label_w + (k % cols) * TILE, y0 + (k // cols) * (TILE + TEXT_H)
            with Image.open(io.BytesIO(s["image"])) as im:
                if im.mode in ("I;16", "I", "I;16B"):
                    im = im.point(lambda v: v / 256).convert("L")
                im = ImageOps.contain(im.convert("RGB"), (TILE - 8, TILE - 8), Image.Resampling.LANCZOS)
                sheet.paste(im, (x0 + (TILE - im.width) // 2, y + (TILE - im.height) // 2))
            caption = s["captions"][0] if s["captions"] else ""
            for j, line in enumerate(textwrap.wrap(caption, 30)[:4]):
                draw.text((x0 + 4, y + TILE + j * 14), line, fill="black", font=font)
        y0 += lines[modality] * (TILE + TEXT_H)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path


def pictures_dir(folder: str) -> str:
    """Where ``inspect`` writes its pictures by default: beside the dataset folder, never inside it
    (a picture inside would be converted again if the dataset lay under an input folder)."""
    return os.path.abspath(folder).rstrip(os.sep) + ".inspect"


def balance_chart(groups: dict[str, dict[str, int]], path: str, width: int = 720) -> str:
    """Draw horizontal bars of counts, one panel per grouping (modality, source), with shares; save a PNG."""
    from PIL import Image, ImageDraw

    font = _font()
    row, label_w, pad = 18, 170, 10
    rows = sum(len(v) + 2 for v in groups.values())
    img = Image.new("RGB", (width, pad * 2 + rows * row), "white")
    draw = ImageDraw.Draw(img)
    colors = [
        (66, 133, 244),
        (219, 68, 55),
        (244, 180, 0),
        (15, 157, 88),
        (171, 71, 188),
        (0, 172, 193),
        (255, 112, 67),
    ]
    y = pad
    for title, counts in groups.items():
        total = sum(counts.values()) or 1
        draw.text((pad, y), f"{title} ({total} samples)", fill="black", font=font)
        y += row
        top = max(counts.values(), default=1)
        bar_w = width - label_w - 2 * pad - 110
        for i, (name, n) in enumerate(sorted(counts.items(), key=lambda kv: -kv[1])):
            draw.text((pad, y + 3), name[:26], fill="black", font=font)
            w = max(1, round(bar_w * n / top))
            draw.rectangle((label_w, y + 2, label_w + w, y + row - 3), fill=colors[i % len(colors)])
            draw.text((label_w + w + 6, y + 3), f"{n} ({100 * n / total:.1f}%)", fill="black", font=font)
            y += row
        y += row
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path


def inspect(
    folder: str,
    sheet: str | None = None,
    per_modality: int = 6,
    seed: int = 0,
    max_scan: int = 20000,
    progress: bool = True,
) -> dict[str, Any]:
    """Counts per modality and source (over up to ``max_scan`` samples) and the contact sheet path
    (``progress``: a progress line on stderr, as ``ingest convert`` shows it)."""
    rng = random.Random(seed)
    modality: Counter = Counter()
    source: Counter = Counter()
    picks: dict[str, list[dict]] = defaultdict(list)
    seen: Counter = Counter()
    with open_dataset(folder) as ds:
        n = len(ds)
        order = list(range(n)) if n <= max_scan else sorted(rng.sample(range(n), max_scan))
        bar = Progress(len(order), progress, what="inspect", unit="samples", count=None)
        for idx in order:
            s = ds[idx]
            bar.update(1)
            m = s["modality"]
            modality[m] += 1
            source[s["source"]] += 1
            seen[m] += 1
            # Reservoir sampling: a uniform pick of per_modality samples per modality.
            if len(picks[m]) < per_modality:
                picks[m].append(s)
            else:
                j = rng.randrange(seen[m])
                if j < per_modality:
                    picks[m][j] = s
        bar.close()
    path = sheet or os.path.join(pictures_dir(folder), "contact_sheet.png")
    contact_sheet(dict(picks), path)
    chart = balance_chart(
        {"modality": dict(modality), "source": dict(source)}, os.path.join(os.path.dirname(path), "balance.png")
    )  # beside the sheet
    return {
        "samples": n,
        "scanned": len(order),
        "modality": dict(sorted(modality.items())),
        "source": dict(sorted(source.items())),
        "sheet": path,
        "chart": chart,
    }
