"""``make demo``: the main job on the bundled sample data, end to end, with the figures printed.

Now: build the sample corpus from the installed sample-data packages, convert it, verify the
shards, inspect them (counts and a contact sheet). Later stages extend it with training and
zero-shot evaluation.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

__all__ = ["run_demo"]


def run_demo(out: str = "demo-out", workers: int = 2) -> dict:
    """Run the demo into ``out``; return the figures (also written to ``out/report.json``)."""
    from unimed.ingest import cli as ingest_cli
    from unimed.samples import build_sample_corpus

    root = Path(out)
    if root.exists():
        shutil.rmtree(root)
    raw = build_sample_corpus(root / "raw")
    shards = root / "shards"
    print(f"== ingest convert {raw} -> {shards}", flush=True)
    rc = ingest_cli.main(["convert", str(raw), "--out", str(shards), "--labels", str(raw.parent / "labels.csv"),
                          "--workers", str(workers), "--source", "demo", "--no-progress"])
    if rc != 0:
        raise SystemExit(rc)
    print(f"== ingest verify {shards}", flush=True)
    if ingest_cli.main(["verify", str(shards)]) != 0:
        raise SystemExit("verify found faults")
    print(f"== ingest inspect {shards}", flush=True)
    ingest_cli.main(["inspect", str(shards), "--sheet", str(root / "contact_sheet.png")])
    summary = json.loads((shards / "summary.json").read_text())
    report = {
        "images": summary["images"],
        "rejects": summary["rejects"],
        "modality": summary["modality"],
        "ingest_images_per_second": summary["images_per_second"],
        "bytes_per_image": summary["bytes_per_image"],
        "contact_sheet": str(root / "contact_sheet.png"),
    }
    (root / "report.json").write_text(json.dumps(report, indent=2))
    print("== demo figures")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_demo(*(sys.argv[1:2] or []))
