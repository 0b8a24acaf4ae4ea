"""``unimed train``: shipped configs by name from any folder, --print-config, --dry-run, one-line mistakes."""

from __future__ import annotations

import json

import yaml

from unimed import cli


def test_print_config_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not the repository: the YAMLs ship inside the package
    assert cli.main(["train", "vitb16-unimed", "optimizer.lr=1e-4", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["global_batch_size"] == 2048 and cfg["optimizer"]["lr"] == 1e-4
    assert cfg["model"]["vision"]["width"] == 768


def test_mistakes_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv, words in (
        (["train", "nosuch"], "demo-cpu"),
        (["train", "demo-cpu", "batch"], "key=value"),
        (["train", "demo-cpu", "data.batch_size=0", "--print-config"], "data.batch_size"),
        (["train", "demo-cpu", "max_duration=ten", "--print-config"], "max_duration"),
        (["train", "demo-cpu", "max_duration=5", "--print-config"], "max_duration"),
    ):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_dry_run_builds_model_and_loader_and_trains_nothing(tiny_overrides, tmp_path, capsys):
    save = tmp_path / "ckpt"
    args = ["train", "demo-cpu", *tiny_overrides(), f"save_folder={save}", "--dry-run"]
    assert cli.main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] > 0 and info["gflops_per_batch"] > 0 and info["batch_size"] == 8
    assert info["first_batch"]["tokens"].startswith("8x") and "image" in " ".join(info["first_batch"])
    assert not save.exists()  # nothing trained, nothing saved
