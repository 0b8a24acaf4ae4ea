"""Both CLIs, for a mistake the parser catches or a pipe closed early: one line or none, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unimed import cli as unimed_cli
from unimed.ingest import cli as ingest_cli


@pytest.mark.parametrize(
    "main, argv, needle",
    [
        (unimed_cli.main, ["eval", "zeroshot", "--data", "x"], "required: --checkpoint"),
        (unimed_cli.main, ["export", "ckpt.pt", "--format", "onnx", "--out", "x"], "--format: invalid choice: 'onnx'"),
        (ingest_cli.main, ["split", "x", "--by", "visit"], "--by: invalid choice: 'visit'"),
    ],
)
def test_a_bad_argument_is_one_line(capsys, main, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and needle in err and "--help" in err, err


def test_output_into_a_pipe_that_closes_early(tmp_path):
    """`ingest captions ... | head -1`: the rest of the output goes nowhere, quietly."""
    table = tmp_path / "labels.csv"
    table.write_text("path,labels,modality\n" + "".join(f"{i}.png,c{i}|Effusion,xray\n" for i in range(3000)))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from unimed.ingest import cli; "
            f"sys.exit(cli.main(['captions', '--labels', {str(table)!r}, '--examples', '3000']))",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().startswith(b"3000 rows")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and "Traceback" not in err, err


def test_training_on_a_folder_that_is_not_shards_is_one_line(tmp_path, capsys, tiny_overrides):
    """`unimed train demo-cpu data.shards=raw/`: the raw images' folder, not the converted one."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.png").write_bytes(b"")
    over = tiny_overrides(**{"data.shards": f"[{tmp_path / 'raw'}]", "max_duration": "1ba"})  # the demo's tokenizer
    rc = unimed_cli.main(["train", "demo-cpu", *over, "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no index.json" in err and str(tmp_path / "raw") in err, err


def test_training_on_shards_that_hold_no_samples_is_one_line(tmp_path, capsys, tiny_overrides):
    """A folder a failed conversion left with an empty index: stock streaming would raise deep inside."""
    from unimed.shards import write_index

    empty = tmp_path / "empty"
    empty.mkdir()
    write_index(str(empty), [])
    over = tiny_overrides(**{"data.shards": f"[{empty}]", "max_duration": "1ba"})
    rc = unimed_cli.main(["train", "demo-cpu", *over, "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "holds no samples" in err and str(empty) in err, err


def test_a_mix_yaml_that_does_not_parse_is_one_line(tmp_path, capsys, tiny_overrides):
    mix = tmp_path / "mix.yaml"
    mix.write_text("streams:\n  - {path: a, proportion: 0.5\n")
    over = tiny_overrides(**{"data.shards": "[]", "data.mix": str(mix), "max_duration": "1ba"})
    rc = unimed_cli.main(["train", "demo-cpu", *over, "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not valid YAML at line" in err and str(mix) in err, err
