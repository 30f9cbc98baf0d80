"""The example evaluation report in docs/report_example/ and its screenshot for the README.

Usage:
    python bench/report_example.py             # about 5 minutes on 2 CPU cores
    python bench/report_example.py --reuse     # keep the fine-tuned model, redo the report

Fine-tunes the shipped ``default`` model on the SROIE receipts' train split for 60 steps
(``configs/finetune.yaml``, evaluated on the class-disjoint test split every 20 steps, so the
report has training curves), then runs exactly what a user runs::

    openrecog eval runs/report_example/last --data ../shared/data/sroie --split test \\
        --report docs/report_example

and takes a screenshot of the report with headless Chromium (``chromium``, Debian) into
``docs/report_example/screenshot.png``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sroie"
RUN = ROOT / "runs" / "report_example"
OUT = ROOT / "docs" / "report_example"
OPENRECOG = [sys.executable, "-m", "openrecog"]


def main() -> None:
    """Train (unless --reuse and the run exists), evaluate with --report, screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="keep an existing run's model")
    opts = parser.parse_args()
    if not (DATA / "labels.csv").exists():
        sys.exit(f"needs {DATA} (see ../shared/data/README.md)")
    if not (opts.reuse and (RUN / "last").is_dir()):
        fine_tune()
    shutil.rmtree(OUT, ignore_errors=True)
    # Paths relative to the repository, as a user types them: they appear in the report.
    evaluate = [*OPENRECOG, "eval", "runs/report_example/last", "--data", "../shared/data/sroie"]
    subprocess.run(
        [*evaluate, "--split", "test", "--report", "docs/report_example"], check=True, cwd=ROOT
    )
    html = OUT / "report.html"
    screenshot(html, OUT / "screenshot.png")


def fine_tune() -> None:
    """60 steps of configs/finetune.yaml on SROIE train, evaluated every 20 steps."""
    shutil.rmtree(RUN, ignore_errors=True)
    train = [
        *OPENRECOG,
        "train",
        str(ROOT / "configs" / "finetune.yaml"),
        f"data.root={DATA}",
        "train.name=report_example",
        f"train.output_dir={RUN.parent}",
        "train.max_steps=60",
        "train.checkpoint_every=60",
        "eval.source=csv",
        f"eval.root={DATA}",
        "eval.split=test",
        "eval.every=20",
    ]
    subprocess.run(train, check=True)


def screenshot(html: Path, png: Path) -> None:
    """A full-width screenshot of the top of ``html`` by headless Chromium, if installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium: screenshot not taken")
        return
    shot = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1200,1900",
        f"--screenshot={png}",
        html.resolve().as_uri(),
    ]
    subprocess.run(shot, check=True, capture_output=True, timeout=120)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
