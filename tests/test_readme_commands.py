"""The README's commands, as a newcomer types them: every `ingest` and `unimed` line parses with today's
flags, the convert synopsis names only flags that exist, and the manifest example converts as written."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from unimed import cli as unimed_cli
from unimed.ingest import cli as ingest_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _command_lines() -> list[str]:
    """Each `ingest ...` / `unimed ...` line of the README's code blocks, continuation lines joined and the
    trailing comment dropped."""
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), re.S):
        pending = ""
        for raw in block.splitlines():
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if re.match(r"^(ingest|unimed) [a-z]", line):
                lines.append(line)
    return lines


def _argv(line: str) -> list[str] | None:
    """The arguments of a README line: optional parts ([--x V]) kept, shell variables and brace ranges given
    a value; None for a synopsis (alternatives `a|b`, `INPUT...`), which is checked flag by flag instead."""
    if "|" in line or "..." in line:
        return None
    line = line.replace("[", "").replace("]", "")
    line = re.sub(r"\$\w+", "0", line)
    line = re.sub(r"\{(\d+)\.\.\d+\}", r"\1", line)
    return shlex.split(line)[1:]


COMMANDS = _command_lines()


def test_the_readme_shows_commands():
    assert sum(c.startswith("ingest convert") for c in COMMANDS) >= 8 and any(
        c.startswith("unimed eval") for c in COMMANDS
    )


@pytest.mark.parametrize("line", [c for c in COMMANDS if _argv(c) is not None])
def test_every_readme_command_parses(line):
    argv = _argv(line)
    parser = ingest_cli.build_parser() if line.startswith("ingest ") else unimed_cli._parser()
    parser.parse_args(argv)  # a flag that no longer exists, or a bad choice, exits 2 here


def test_the_convert_synopsis_names_only_real_flags():
    text = README.read_text()
    start = text.index("ingest convert INPUT...")
    synopsis = text[start : text.index("\ningest captions", start)]
    convert = ingest_cli.build_parser()._subparsers._group_actions[0].choices["convert"]
    known = {opt for action in convert._actions for opt in action.option_strings}
    named = set(re.findall(r"--[a-z][a-z-]*", synopsis))
    assert named and named <= known, sorted(named - known)
    undocumented = {o for o in known if o.startswith("--")} - named - {"--help", "--chunk-mb", "--no-progress"}
    assert not undocumented, sorted(undocumented)


def test_the_manifest_example_converts_as_written(tmp_path, monkeypatch, capsys):
    """A manifest of plain images needs --modality (or a modality column): the README's line carries it."""
    from unimed.samples import skimage_dir

    line = next(c for c in COMMANDS if c.startswith("ingest convert roco/train.csv"))
    (tmp_path / "roco" / "images").mkdir(parents=True)
    shutil.copy(skimage_dir() / "retina.jpg", tmp_path / "roco" / "images" / "r1.jpg")
    (tmp_path / "roco" / "train.csv").write_text("image,caption\nimages/r1.jpg,A normal optic disc.\n")
    monkeypatch.chdir(tmp_path)
    assert ingest_cli.main([*_argv(line), "--no-progress"]) == 0, capsys.readouterr().err
    assert "converted 1 images" in capsys.readouterr().out
