"""PartialFC at scale: peak memory per rank and samples/s, full FC vs sampled, 1 and N ranks.

Usage:
    python bench/partial_fc.py                           # 10k, 100k, 1M, 10M classes × 256-d
    python bench/partial_fc.py --device cuda --ranks 1   # the GPU variant (nccl for N > 1)
    python bench/partial_fc.py --classes 10000 --steps 3 --out /tmp/pfc   # quick look
    python bench/partial_fc.py --classes 10000000 --merge   # add rows to the existing table

What one step is: the training head alone, as ``openrecog train`` runs it — per rank a batch
of embeddings (what the backbone would produce; random, requiring grad) goes through
:class:`PartialFC` (all-gather, sampling, CosFace margin, softmax normalised across ranks),
backward, and an AdamW step over the rank's shard of centres. The backbone is left out on
purpose: its cost does not depend on the number of classes, and the question is what the
head costs as classes grow. Every configuration runs in fresh processes, so peak memory (the
maximum resident set size of each rank, or ``torch.cuda.max_memory_allocated`` on a GPU) is
its own. Configurations whose estimated memory exceeds the machine's are reported as not
fitting instead of being run.

Writes docs/benchmarks/partial_fc.json and the table between the ``partial-fc`` markers in
docs/benchmarks/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from machine import machine_name
from markdown_table import write_between_markers

from openrecog.eval.table import format_table
from openrecog.losses import CosFace, PartialFC

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = [
    "classes",
    "ranks",
    "sample_rate",
    "samples_per_s",
    "ms_per_step",
    "peak_gb_per_rank",
    "head_gb_per_rank",
    "centres_gb_per_rank",
    "status",
]


def estimate_bytes_per_rank(classes: int, dim: int, rate: float, ranks: int, batch: int) -> int:
    """Rough peak: centres + grad + 2 AdamW moments, plus logits and their temporaries."""
    local = -(-classes // ranks)
    table = local * dim * 4 * 4
    columns = max(batch * ranks, int(rate * local))
    gathered = dim * 4 * columns if rate < 1 else 0  # weight[index] and its gradient
    logits = batch * ranks * columns * 4 * 6  # cosines, margin, exp, grads
    return table + 2 * gathered + logits + 600 * 2**20  # + the torch runtime itself


def available_bytes() -> int:
    """Memory this machine can give the ranks (MemAvailable), or 0 if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _worker(rank: int, args: dict, store: str, out: str) -> None:
    ranks, device = args["ranks"], torch.device(args["device"])
    torch.set_num_threads(max(1, args["threads"] // ranks))
    if ranks > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=ranks)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    head = PartialFC(
        CosFace(64.0, 0.4),
        args["dim"],
        args["classes"],
        args["sample_rate"],
        rank=rank,
        world_size=ranks,
        seed=0,
    ).to(device)
    # As the trainer builds it (fused AdamW on CPU and CUDA).
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
    generator = torch.Generator().manual_seed(rank)
    batch = args["batch"]
    times = []
    for step in range(args["warmup"] + args["steps"]):
        labels = torch.randint(0, args["classes"], (batch,), generator=generator).to(device)
        embeddings = torch.randn(batch, args["dim"], generator=generator).to(device)
        embeddings.requires_grad_()
        if device.type == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        loss = head(embeddings, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if ranks > 1:
            dist.barrier()  # a step ends when the slowest rank is done
        if step >= args["warmup"]:
            times.append(time.perf_counter() - tick)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "rank": rank,
        "step_s": sorted(times)[len(times) // 2],
        "peak_bytes": peak,
        "head_bytes": peak - (0 if device.type == "cuda" else before),
        "centres_bytes": head.weight.numel() * 4,
        "loss": float(loss.detach()),
    }
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    if ranks > 1:
        dist.destroy_process_group()


def run_config(args: dict) -> dict:
    """Run one configuration in fresh processes and summarise it."""
    row = {k: args[k] for k in ("classes", "ranks", "sample_rate")}
    need = estimate_bytes_per_rank(
        args["classes"], args["dim"], args["sample_rate"], args["ranks"], args["batch"]
    )
    have = available_bytes()
    if args["device"] == "cpu" and have and need * args["ranks"] > 0.9 * have:
        row["status"] = (
            f"does not fit: estimated {need * args['ranks'] / 2**30:.0f} GB for all ranks, "
            f"{have / 2**30:.0f} GB free (not run)"
        )
        return row
    with tempfile.TemporaryDirectory() as tmp:
        store, out = f"{tmp}/store", f"{tmp}/result"
        # spawn, not fork: each configuration's ranks start with a clean, small heap.
        context = mp.get_context("spawn")
        procs = [
            context.Process(target=_worker, args=(r, args, store, out))
            for r in range(args["ranks"])
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        if any(proc.exitcode != 0 for proc in procs):
            codes = [proc.exitcode for proc in procs]
            row["status"] = f"failed (exit codes {codes}; -9 = killed, out of memory)"
            return row
        results = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(args["ranks"])]
    step_s = max(r["step_s"] for r in results)
    row.update(
        samples_per_s=args["batch"] * args["ranks"] / step_s,
        ms_per_step=1000 * step_s,
        peak_gb_per_rank=max(r["peak_bytes"] for r in results) / 2**30,
        head_gb_per_rank=max(r["head_bytes"] for r in results) / 2**30,
        centres_gb_per_rank=max(r["centres_bytes"] for r in results) / 2**30,
        status="ok",
    )
    return row


def main() -> None:
    """Run the grid and write the JSON and the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000]
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sample-rates", type=float, nargs="+", default=[1.0, 0.3, 0.1])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128, help="embeddings per rank and step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument(
        "--merge", action="store_true", help="keep rows of the JSON that this run does not redo"
    )
    opts = parser.parse_args()
    suffix = "" if opts.device == "cpu" else f"_{opts.device.split(':')[0]}"
    json_path = opts.out / f"partial_fc{suffix}.json"
    kept = json.loads(json_path.read_text())["rows"] if opts.merge and json_path.exists() else []
    rows = []
    for classes in opts.classes:
        for ranks in opts.ranks:
            for rate in opts.sample_rates:
                args = {
                    "classes": classes,
                    "ranks": ranks,
                    "sample_rate": rate,
                    "dim": opts.dim,
                    "batch": opts.batch,
                    "steps": opts.steps,
                    "warmup": opts.warmup,
                    "device": opts.device,
                    "threads": opts.threads,
                }
                rows.append(run_config(args))
                print(format_table([rows[-1]], columns=COLUMNS), flush=True)

    def key(row: dict) -> tuple:
        return row["classes"], row["ranks"], -row["sample_rate"]

    redone = {key(row) for row in rows}
    rows = sorted([row for row in kept if key(row) not in redone] + rows, key=key)
    machine = machine_name()
    opts.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine,
        "settings": {k: str(v) for k, v in vars(opts).items()},
        "rows": rows,
    }
    json_path.write_text(json.dumps(payload, indent=2))
    caption = (
        f"Measured by `python bench/partial_fc.py{' --device ' + opts.device if suffix else ''}` "
        f"on {machine}; {opts.dim}-d, {opts.batch} embeddings per rank and step, CosFace, "
        f"fused AdamW; median of {opts.steps} steps after {opts.warmup} warm-up steps. Ranks share "
        f"the machine's {opts.threads} threads."
    )
    table = caption + "\n\n" + format_table(rows, columns=COLUMNS)
    write_between_markers(opts.out / "scale.md", f"partial-fc{suffix}", table)
    print(table)


if __name__ == "__main__":
    main()
