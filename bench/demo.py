"""Run the end-to-end demo and record its table in docs/benchmarks/demo.{json,md}.

Usage: python bench/demo.py [--steps 200] [--output demo_out]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import machine_name

from openrecog.demo import COLUMNS, run_demo
from openrecog.eval.table import format_table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--output", type=Path, default=ROOT / "demo_out")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()

    start = time.perf_counter()
    result = run_demo(args.output, steps=args.steps, shared_data=args.data)
    minutes = (time.perf_counter() - start) / 60
    machine = machine_name()
    out = ROOT / "docs" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "minutes": minutes, "steps": args.steps, **result}
    (out / "demo.json").write_text(json.dumps(record, indent=2, default=float))
    table = format_table(result["rows"], columns=COLUMNS, title="make demo: leave-one-out")
    (out / "demo.md").write_text(
        f"{table}\n\nGallery step: {result['correct']}/{result['queries']} queries right. "
        f"Measured with `python bench/demo.py --steps {args.steps}` on {machine}; "
        f"{minutes:.1f} min in all.\n"
    )
    print(table)


if __name__ == "__main__":
    main()
