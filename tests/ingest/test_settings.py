"""One definition per setting: ``ConvertConfig`` nests ``Options`` (read) and ``WriteOptions`` (write), and
the ``ingest convert`` flags take their defaults from those fields, never from literals of their own."""

from __future__ import annotations

from dataclasses import fields

import pytest

from unimed.ingest import cli
from unimed.ingest.convert import ConvertConfig
from unimed.ingest.sources.base import Options
from unimed.ingest.writer import WriteOptions

#: Fields with no flag of their own (or whose flag takes no value): what the CLI does with them instead.
NO_FLAG = {"inputs", "out", "read", "write", "percentiles"}


def _parsed(*extra: str) -> ConvertConfig:
    return cli._convert_config(cli.build_parser().parse_args(["convert", "IN", "--out", "OUT", *extra]))


def _parser_defaults() -> dict:
    p = cli.build_parser()._subparsers._group_actions[0].choices["convert"]
    return {a.dest: a.default for a in p._actions}


def test_cli_defaults_are_the_dataclass_defaults():
    assert _parsed() == ConvertConfig(inputs=["IN"], out="OUT")
    defaults = _parser_defaults()
    for cls in (ConvertConfig, Options, WriteOptions):
        for f in fields(cls):
            if f.name in NO_FLAG:
                continue
            want = f.default_factory() if callable(f.default_factory) else f.default
            got = defaults[f.name]  # every setting has a flag
            # --modality, --force-modality and --shard-index are None when not given (then the field's applies).
            assert got == want or (got is None and f.name in cli._UNSET), f.name


@pytest.mark.parametrize(
    "cls,name,value,flag",
    [
        (WriteOptions, "quality", 77, "--quality"),
        (WriteOptions, "compression", "zstd:5", "--compression"),
        (Options, "tile_size", 384, "--tile-size"),
        (Options, "modality", "xray", "--modality"),
        (ConvertConfig, "workers", 3, "--workers"),
    ],
)
def test_changing_a_dataclass_default_changes_the_cli_default(monkeypatch, cls, name, value, flag):
    monkeypatch.setattr(cls.__dataclass_fields__[name], "default", value)
    p = cli.build_parser()._subparsers._group_actions[0].choices["convert"]
    if name not in cli._UNSET:
        assert p.parse_args(["IN", "--out", "OUT"]).__dict__[name] == value
    action = next(a for a in p._actions if flag in a.option_strings)
    assert str(value) in p._get_formatter()._expand_help(action)  # the help shows the new default


def test_flat_keywords_are_the_nested_config():
    flat = ConvertConfig(
        inputs=["a"], out="o", quality=70, tile_size=512, captions=["b.yaml"], workers=2, modality="ct"
    )
    nested = ConvertConfig(
        ["a"],
        "o",
        read=Options(tile_size=512, modality="ct"),
        write=WriteOptions(quality=70, banks=["b.yaml"]),
        workers=2,
    )
    assert flat == nested
    assert flat.quality == flat.write.quality == 70 and flat.captions == ["b.yaml"] and flat.modality == "ct"
    flat.quality = 60  # a flat name writes through to the nested options
    assert flat.write.quality == 60 and "quality" not in vars(flat)
    with pytest.raises(TypeError, match="no option qualty"):
        ConvertConfig(inputs=["a"], out="o", qualty=70)
    with pytest.raises(AttributeError):
        _ = flat.qualty


def test_force_modality_sets_modality_for_every_input():
    forced = _parsed("--force-modality", "ct")
    assert forced.read.modality == "ct" and forced.read.force_modality is True
    fallback = _parsed("--modality", "ct")
    assert fallback.read.modality == "ct" and fallback.read.force_modality is False
    assert _parsed().read == Options()
