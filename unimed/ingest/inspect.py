"""``ingest inspect``: counts per modality and source, a contact sheet and a balance bar chart to look at."""

from __future__ import annotations

import io
import os
import random
import textwrap
from collections import Counter, defaultdict
from typing import Any

from unimed.ingest.reader import open_dataset

__all__ = ["inspect", "contact_sheet", "balance_chart"]

TILE = 192
TEXT_H = 56


def contact_sheet(rows: dict[str, list[dict]], path: str) -> str:
    """Draw one row per modality of (image, first caption) tiles and save a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    cols = max((len(v) for v in rows.values()), default=1)
    label_w = 110
    sheet = Image.new("RGB", (label_w + cols * TILE, max(1, len(rows)) * (TILE + TEXT_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (modality, samples) in enumerate(sorted(rows.items())):
        y0 = r * (TILE + TEXT_H)
        draw.text((6, y0 + TILE // 2), f"{modality}", fill="black", font=font)
        for c, s in enumerate(samples):
            x0 = label_w + c * TILE
            with Image.open(io.BytesIO(s["image"])) as im:
                if im.mode in ("I;16", "I", "I;16B"):
                    im = im.point(lambda v: v / 256).convert("L")
                im = im.convert("RGB")
                im.thumbnail((TILE - 8, TILE - 8))
                sheet.paste(im, (x0 + (TILE - im.width) // 2, y0 + (TILE - im.height) // 2))
            caption = s["captions"][0] if s["captions"] else ""
            for k, line in enumerate(textwrap.wrap(caption, 30)[:4]):
                draw.text((x0 + 4, y0 + TILE + k * 13), line, fill="black", font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path


def balance_chart(groups: dict[str, dict[str, int]], path: str, width: int = 720) -> str:
    """Draw horizontal bars of counts, one panel per grouping (modality, source), with shares; save a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    row, label_w, pad = 18, 170, 10
    rows = sum(len(v) + 2 for v in groups.values())
    img = Image.new("RGB", (width, pad * 2 + rows * row), "white")
    draw = ImageDraw.Draw(img)
    colors = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193),
              (255, 112, 67)]
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


def inspect(folder: str, sheet: str | None = None, per_modality: int = 6, seed: int = 0,
            max_scan: int = 20000) -> dict[str, Any]:
    """Counts per modality and source (over up to ``max_scan`` samples) and the contact sheet path."""
    rng = random.Random(seed)
    modality: Counter = Counter()
    source: Counter = Counter()
    picks: dict[str, list[dict]] = defaultdict(list)
    seen: Counter = Counter()
    with open_dataset(folder) as ds:
        n = len(ds)
        order = list(range(n)) if n <= max_scan else sorted(rng.sample(range(n), max_scan))
        for idx in order:
            s = ds[idx]
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
    path = sheet or os.path.join(folder, "contact_sheet.png")
    contact_sheet(dict(picks), path)
    chart = balance_chart({"modality": dict(modality), "source": dict(source)},
                          os.path.join(os.path.dirname(os.path.abspath(path)), "balance.png"))
    return {"samples": n, "scanned": len(order), "modality": dict(sorted(modality.items())),
            "source": dict(sorted(source.items())), "sheet": path, "chart": chart}
