"""The uid key: created 0600 from its first byte, one key when two processes race, short keys refused."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import sys

import pytest

from unimed.errors import UserError
from unimed.ingest import deid
from unimed.ingest.deid import load_uid_key


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    """No $UNIMED_UID_KEY (the ingest conftest sets one), the default key file under ``tmp_path``."""
    monkeypatch.delenv("UNIMED_UID_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    return tmp_path / "cfg" / "unimed" / "uid.key"


@pytest.fixture
def open_umask():
    """A umask that would leave a plain new file world-readable (0644, or 0666 here)."""
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_key_is_0600_from_its_first_byte(config_home, open_umask, monkeypatch, capsys):
    opened, linked = [], []
    real_open, real_link = os.open, os.link

    def spy_open(path, flags, mode=0o777, **kw):
        fd = real_open(path, flags, mode, **kw)
        opened.append((str(path), flags, mode, stat.S_IMODE(os.fstat(fd).st_mode)))  # the mode it was born with
        return fd

    def spy_link(src, dst, **kw):
        linked.append((_mode(src), len(open(src, "rb").read())))  # what appears under the final name
        return real_link(src, dst, **kw)

    monkeypatch.setattr(deid.os, "open", spy_open)
    monkeypatch.setattr(deid.os, "link", spy_link)
    key = load_uid_key()
    assert _mode(config_home) == 0o600
    assert key == config_home.read_bytes().strip() and len(key) == 64
    [(path, flags, mode, born)] = opened
    assert path != str(config_home) and os.path.dirname(path) == str(config_home.parent)  # a temp name
    assert flags & os.O_CREAT and flags & os.O_EXCL and mode == 0o600 and born == 0o600
    assert linked == [(0o600, 64)]  # the final name only ever points at a complete 0600 file
    assert sorted(p.name for p in config_home.parent.iterdir()) == ["uid.key"]  # temp file removed


def test_creation_note_is_printed_once_with_only_the_path(config_home, capsys):
    key = load_uid_key()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(config_home) in err and "every machine" in err
    assert key.decode() not in err
    assert load_uid_key() == key
    assert capsys.readouterr().err == ""  # not on the second load


def test_a_key_created_meanwhile_is_kept(config_home):
    config_home.parent.mkdir(parents=True)
    config_home.write_text("b" * 64)
    os.chmod(config_home, 0o600)
    assert deid._new_key_file(config_home) is False  # lost the race: the existing key stays
    assert config_home.read_text() == "b" * 64
    assert [p.name for p in config_home.parent.iterdir()] == ["uid.key"]


def _race(barrier, queue) -> None:
    import io

    sys.stderr = io.StringIO()
    barrier.wait()
    key = load_uid_key()
    queue.put((key, sys.stderr.getvalue()))


def test_two_processes_creating_at_once_share_one_key(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIMED_UID_KEY", raising=False)
    ctx = mp.get_context("fork")
    for round_ in range(5):
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / f"cfg{round_}"))
        barrier, queue = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(barrier, queue)) for _ in range(2)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        (a, note_a), (b, note_b) = results
        key_file = tmp_path / f"cfg{round_}" / "unimed" / "uid.key"
        assert a == b == key_file.read_bytes().strip()
        assert (note_a + note_b).count("created the uid key") == 1  # only the process whose key was kept
        assert _mode(key_file) == 0o600
        assert [p.name for p in key_file.parent.iterdir()] == ["uid.key"]


def test_short_keys_are_refused_naming_their_source(tmp_path, monkeypatch, config_home):
    monkeypatch.setenv("UNIMED_UID_KEY", "too-short")
    with pytest.raises(UserError, match=r"^\$UNIMED_UID_KEY: .*9 bytes, shorter than 32") as err:
        load_uid_key()
    assert "too-short" not in str(err.value)
    monkeypatch.setenv("UNIMED_UID_KEY", "k" * 32)
    assert load_uid_key() == b"k" * 32
    short = tmp_path / "short.key"
    short.write_text("0123456789abcdef\n")
    os.chmod(short, 0o600)
    with pytest.raises(UserError, match=rf"^{short}: .*16 bytes"):
        load_uid_key(str(short))
    config_home.parent.mkdir(parents=True)
    config_home.write_text("x")
    os.chmod(config_home, 0o600)
    monkeypatch.delenv("UNIMED_UID_KEY")
    with pytest.raises(UserError, match=rf"^{config_home}: "):
        load_uid_key()


def test_a_key_file_others_can_read_is_warned_about(tmp_path, capsys, config_home):
    shared = tmp_path / "shared.key"
    shared.write_text("a" * 64)
    os.chmod(shared, 0o644)
    assert load_uid_key(str(shared)) == b"a" * 64
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and str(shared) in err and "644" in err
    assert "a" * 64 not in err
    os.chmod(shared, 0o600)
    load_uid_key(str(shared))
    assert capsys.readouterr().err == ""
    load_uid_key()  # the default key file: created 0600, so only the creation note
    config_home.chmod(0o640)
    load_uid_key()
    assert "warning" in capsys.readouterr().err.splitlines()[-1]
