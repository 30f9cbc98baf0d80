"""Build the general-object training images of the default model from a Debian package.

Usage:
    python scripts/build_stamps.py [--output data/tuxpaint-stamps] [--deb FILE]

Downloads ``tuxpaint-stamps-default`` with ``apt-get download`` (Debian's package mirror is
reachable offline-from-hubs machines; no root needed), extracts its PNG stamps (drawings and
photos of animals, food, vehicles, plants, household objects, ... with transparency), scales
them to at most ``--max-side`` pixels and writes ``<category>/<sub>/<name>.png`` plus
``manifest.json`` (package, version, SHA-256, licence, file list), and ``captions.csv``
(``path,text,split``: each stamp's English description from its ``.txt`` file, the image–text
pairs of cross-modal retrieval, one in five held out as ``test``). Licence: GPL-2 (see
/usr/share/doc/tuxpaint-stamps-default/copyright inside the package). The images are used
for training only and are not shipped with openrecog.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from openrecog.storage import sha256_file

PACKAGE = "tuxpaint-stamps-default"
STAMPS_DIR = Path("usr/share/tuxpaint/stamps")


def download(workdir: Path) -> Path:
    """Fetch the package's .deb into ``workdir`` with ``apt-get download``."""
    if shutil.which("apt-get") is None:
        sys.exit("error: apt-get not found; pass --deb with a downloaded .deb of " + PACKAGE)
    result = subprocess.run(
        ["apt-get", "download", PACKAGE], cwd=workdir, capture_output=True, text=True
    )
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        sys.exit(f"error: apt-get download {PACKAGE} failed: {result.stderr.strip()[-500:]}")
    return debs[0]


def english_description(text_file: Path) -> str:
    """The English description of a stamp: the first line of its ``.txt`` (others: ``xx.utf8=``)."""
    for line in text_file.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and "=" not in line.split(" ", 1)[0]:
            return line
    return ""


def write_captions(source: Path, written: list[str], staging: Path) -> int:
    """``captions.csv`` (path,text,split) of the stamps that come with a description.

    One pair in five (by a hash of the file name, so stable across versions) is ``test``.
    """
    rows = []
    for relative in written:
        text_file = (source / relative).with_suffix(".txt")
        if not text_file.is_file():
            continue
        text = english_description(text_file)
        if text:
            bucket = int(hashlib.sha256(relative.encode()).hexdigest(), 16) % 5
            rows.append(
                {"path": relative, "text": text, "split": "test" if bucket == 0 else "train"}
            )
    with open(staging / "captions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "text", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def main() -> None:
    """Download, extract, scale and record the stamp images."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("data/tuxpaint-stamps"))
    parser.add_argument("--deb", type=Path, help="use this .deb instead of downloading")
    parser.add_argument("--max-side", type=int, default=320)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        deb = args.deb or download(work)
        if not deb.is_file():
            sys.exit(f"error: {deb} not found")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
        version = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        source = work / "root" / STAMPS_DIR
        files = sorted(source.rglob("*.png"))
        if not files:
            sys.exit(f"error: no PNG stamps in {deb}")
        staging = args.output.with_name(args.output.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        written = []
        for path in files:
            relative = path.relative_to(source)
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                image = image.convert("RGBA")
                image.thumbnail((args.max_side, args.max_side), Image.Resampling.LANCZOS)
                image.save(target, optimize=True)
            written.append(relative.as_posix())
        captions = write_captions(source, written, staging)
        manifest = {
            "package": PACKAGE,
            "captions": captions,
            "version": version,
            "deb_sha256": sha256_file(deb),
            "license": "GPL-2 (Debian copyright file of the package)",
            "max_side": args.max_side,
            "count": len(written),
            "files": written,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        shutil.rmtree(args.output, ignore_errors=True)
        staging.rename(args.output)
    print(
        f"{len(written)} stamp images ({captions} with captions) from {PACKAGE} {version} "
        f"written to {args.output}"
    )


if __name__ == "__main__":
    main()
