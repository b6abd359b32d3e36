"""scripts/fortunes_corpus.py: fortunes split at lines holding only '%', line breaks kept,
pictures and indexes left out, every file's count checked against its strfile index."""

import json
import struct
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fortunes_corpus.py"


def strfile_index(path, count):
    # version, count, longest, shortest, flags, delimiter: what strfile writes first
    path.write_bytes(struct.pack(">IIIIIcxxx", 2, count, 100, 1, 0, b"%"))


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True,
                          text=True)


def test_fortunes_are_split_and_checked(tmp_path):
    source = tmp_path / "fortunes"
    source.mkdir()
    (source / "wisdom").write_text("Look before\n  you leap.\n%\n100% sure.\n%\nLast one.\n")
    strfile_index(source / "wisdom.dat", 3)
    (source / "wisdom.u8").symlink_to("wisdom")
    (source / "art").write_text("  /\\_/\\\n ( o.o )\n%\n")
    strfile_index(source / "art.dat", 1)
    out = tmp_path / "corpus.json"
    done = run(out, "--source", source)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == ["Look before\n  you leap.", "100% sure.", "Last one."]
    assert done.stdout.startswith("3 fortunes (8 words) from 1 files")   # 4 + 2 + 2

    strfile_index(source / "wisdom.dat", 4)          # the index disagrees: refused
    done = run(tmp_path / "other.json", "--source", source)
    assert done.returncode == 1
    assert "read 3 fortunes, its index says 4" in done.stderr
    assert not (tmp_path / "other.json").exists()


def test_no_fortunes_installed_says_how_to_get_them(tmp_path):
    done = run(tmp_path / "corpus.json", "--source", tmp_path)
    assert done.returncode == 1 and "apt-get install fortunes" in done.stderr
