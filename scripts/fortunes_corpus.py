"""Build a training corpus (a JSON array of strings) from Debian's fortunes, which we do not
ship: ``apt-get install fortunes`` puts them in /usr/share/games/fortunes.

    python scripts/fortunes_corpus.py fortunes.json [--source /usr/share/games/fortunes]

Each fortune (the text between two lines holding only ``%``) is one example, its line breaks
kept. Every file is read except the ``.dat`` indexes, the ``.u8`` links and the two files of
ASCII pictures (``art``, ``ascii-art``), which are drawings rather than text. The count per
file is checked against the one that strfile recorded in its ``.dat`` index. With fortunes
1:1.99.1-7.3 (Debian 12) this gives 14,742 fortunes from 41 files.
"""

import argparse
import json
import struct
import sys
from pathlib import Path

PICTURES = {"art", "ascii-art"}


def fortunes_of(path):
    text = path.read_bytes().decode("utf-8")
    fortunes, current = [], []
    for line in text.split("\n"):
        if line == "%":
            fortunes.append("\n".join(current))
            current = []
        else:
            current.append(line)
    fortunes.append("\n".join(current))
    return [f.strip("\n") for f in fortunes if f.strip()]


def strfile_count(index):
    """Number of strings in a strfile .dat index (big-endian header: version, count, ...)."""
    return struct.unpack(">II", index.read_bytes()[:8])[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--source", default="/usr/share/games/fortunes")
    args = parser.parse_args(argv)
    source = Path(args.source)
    files = sorted(p for p in source.iterdir()
                   if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
                   and p.name not in PICTURES)
    if not files:
        sys.exit(f"no fortune files in {source}: apt-get install fortunes")
    corpus = []
    for path in files:
        fortunes = fortunes_of(path)
        index = path.with_name(path.name + ".dat")
        if index.is_file() and strfile_count(index) != len(fortunes):
            sys.exit(f"{path}: read {len(fortunes)} fortunes, its index says "
                     f"{strfile_count(index)}")
        corpus.extend(fortunes)
    Path(args.out).write_text(json.dumps(corpus, ensure_ascii=False), encoding="utf-8")
    words = sum(len(f.split()) for f in corpus)
    print(f"{len(corpus):,} fortunes ({words:,} words) from {len(files)} files in {source} "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
