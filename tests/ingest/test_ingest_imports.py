"""ingest never imports unimed.streaming (nor torch where it reads no shards back): the training side
may change without the converter noticing, and a conversion process stays small."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from unimed.ingest.synthetic import write_ct_series

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CODE = """
import json, sys
from unimed.ingest import cli

def heavy(prefixes):
    return sorted(m for m in sys.modules if m == "unimed.streaming" or m.startswith("unimed.streaming.")
                  or m.split(".")[0] in prefixes)

src, tmp = sys.argv[1], sys.argv[2]
seen = {}
for i in range(2):
    assert cli.main(["convert", src, "--out", f"{tmp}/p{i}", "--num-shards", "2", "--shard-index", str(i),
                     "--no-progress"]) == 0
assert cli.main(["merge", f"{tmp}/m", f"{tmp}/p0", f"{tmp}/p1", "--no-progress"]) == 0
assert cli.main(["merge", f"{tmp}/m"]) == 0
seen["convert, merge"] = heavy(("torch", "transformers", "streaming"))
assert cli.main(["verify", f"{tmp}/m", "--no-progress"]) == 0  # reads back with mosaicml-streaming
assert cli.main(["inspect", f"{tmp}/m", "--no-progress"]) == 0
assert cli.main(["split", f"{tmp}/m", "--no-progress"]) == 0
seen["verify, inspect, split"] = heavy(())
print(json.dumps(seen))
"""


def test_ingest_commands_never_import_unimed_streaming(tmp_path):
    write_ct_series(tmp_path / "in", 8, size=32)
    env = {**os.environ, "PYTHONPATH": ROOT, "UNIMED_UID_KEY": "unimed-test-key-0123456789abcdef0123"}
    proc = subprocess.run(
        [sys.executable, "-c", CODE, str(tmp_path / "in"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"convert, merge": [], "verify, inspect, split": []}
