"""Training-config mistakes a user can fix: each is one line naming the file or key, from the command
itself (``unimed train``), with exit code 2 and no traceback; list settings take a plain string."""

from __future__ import annotations

import pytest

from unimed.cli import main as unimed_main
from unimed.errors import UserError
from unimed.train.config import load_config


def _one_line(capsys, argv: list[str], *needles: str) -> str:
    rc = unimed_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "run.yaml"
    bad.write_text("model:\n  vision: {width: 32\nrun_name: x\n")
    _one_line(capsys, ["train", str(bad), "--print-config"], str(bad), "not valid YAML at line")


def test_a_yaml_that_is_not_a_mapping(tmp_path, capsys):
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    _one_line(capsys, ["train", str(bad), "--print-config"], "a YAML mapping")


def test_mix_and_shards_together_in_one_file(tmp_path, capsys):
    both = tmp_path / "both.yaml"
    both.write_text("data: {mix: mix.yaml, shards: [a, b]}\n")
    _one_line(capsys, ["train", str(both), "--print-config"], "data.mix and data.shards are both set")


def test_an_override_of_one_data_source_replaces_the_files_other():
    cfg = load_config("demo-cpu", ["data.mix=/data/mix.yaml"])
    assert cfg.data.mix == "/data/mix.yaml" and cfg.data.shards == []
    cfg = load_config("demo-cpu", ["data.shards=/data/shards"])  # a string for a list: one folder
    assert cfg.data.shards == ["/data/shards"] and cfg.data.mix is None
    with pytest.raises(UserError, match="both set"):
        load_config("demo-cpu", ["data.mix=/data/mix.yaml", "data.shards=[/data/x]"])


def test_image_sizes_and_context_lengths_are_checked_against_each_other(capsys):
    _one_line(
        capsys,
        ["train", "demo-cpu", "data.image_size=96", "--print-config"],
        "data.image_size 96 differs from model.vision.image_size",
    )
    _one_line(
        capsys,
        ["train", "demo-cpu", "data.context_length=16", "--print-config"],
        "data.context_length 16 differs from model.text.context_length",
    )


@pytest.mark.parametrize("value", ["ten", "5"])
def test_a_duration_without_a_unit(capsys, value):
    _one_line(capsys, ["train", "demo-cpu", f"max_duration={value}", "--print-config"], "max_duration")


def test_a_batch_size_of_zero(capsys):
    _one_line(capsys, ["train", "demo-cpu", "data.batch_size=0", "--print-config"], "data.batch_size 0")


def test_an_unknown_loss_lists_the_registered_ones(capsys):
    _one_line(capsys, ["train", "demo-cpu", "model.loss=nce", "--print-config"], "model.loss 'nce'", "clip, siglip")


def test_a_misspelled_key(capsys):
    _one_line(capsys, ["train", "demo-cpu", "data.batchsize=8", "--print-config"], "batchsize")


def test_a_moved_tokenizer_folder(tmp_path, capsys):
    _one_line(
        capsys,
        ["train", "demo-cpu", f"data.tokenizer={tmp_path / 'gone'}", f"data.shards={tmp_path}", "--dry-run"],
        "Tokenizer folder",
        "does not exist",
    )
    (tmp_path / "empty").mkdir()
    _one_line(
        capsys,
        ["train", "demo-cpu", f"data.tokenizer={tmp_path / 'empty'}", f"data.shards={tmp_path}", "--dry-run"],
        "holds no readable tokenizer",
    )


@pytest.mark.parametrize(
    "text, needle",
    [
        ("templates: [a chest X-ray of {c}\n", "not valid YAML at line"),
        ("- a photo of {c}\n", "a YAML mapping"),
        ("templates: ['a scan of {cls}']\n", "the class goes in as {c}"),
        ("templates: 'a scan of {c}'\n", "is a list of strings"),
    ],
)
def test_a_bad_prompts_yaml_is_one_line_before_any_model_loads(demo_sets, tmp_path, capsys, text, needle):
    bad = tmp_path / "prompts.yaml"
    bad.write_text(text)
    # The checkpoint does not exist: the prompts are checked before the model would be loaded.
    _one_line(
        capsys,
        [
            "eval",
            "zeroshot",
            "--checkpoint",
            str(tmp_path / "none.pt"),
            "--data",
            demo_sets["eval"],
            "--prompts",
            str(bad),
        ],
        str(bad),
        needle,
    )


def test_a_null_for_a_setting_that_needs_a_value(capsys):
    _one_line(
        capsys,
        ["train", "demo-cpu", "data.shards=null", "--print-config"],
        "data.shards cannot be null",
        "data.shards=[]",
    )
