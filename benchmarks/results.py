"""The README's results table: every row trained here, one after another, on this machine, in one run.

    python benchmarks/results.py                               # minigpt's rows
    python benchmarks/results.py --nanogpt ~/nanoGPT           # and nanoGPT's own train.py beside them
    python benchmarks/results.py --keep runs/                  # keep each run's out_dir (loss.png, ...)

Each row is `minigpt train FLAGS` in a process of its own, timed from start to exit (start-up,
evaluations, the whole-validation-split loss and the 500-character sample included, as a user
waits for them), with the child's peak memory. The loss is the whole-validation-split loss: every
validation target of Tiny Shakespeare scored once, in nats per token (a character, or a BPE
token) and in bits per character, which compares a char run with a BPE run.

With --nanogpt, nanoGPT's train.py runs its README's CPU recipe (PyTorch needed: pip install
"minigpt[bench]"; its data is prepared from minigpt's packaged copy of the text, the same
characters and the same 90/10 split), and its final weights are scored on the whole validation
split by nanoGPT's own model code, cut into chunks exactly as minigpt cuts them.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import machine  # noqa: E402  (the CPU, its cores and the load average)
import sweep_recipe  # noqa: E402  (nanoGPT's CPU recipe, as its README gives it)
from sweep_recipe import timed  # noqa: E402  (a command's wall time, peak memory and output)

# (name, model, flags of `minigpt train`), in the table's order; the rows after README_ROWS (data
# parallel, `pip install -e ".[mpi]"`) run when named in --only
ROWS = [
    ("default", "GPT, the CPU recipe (1 layer, 128 wide)", []),
    ("reference", "the same, with the plain reference ops", ["--reference"]),
    ("nanogpt", "GPT, nanoGPT's CPU recipe (4 layers, 128 wide)", ["--preset", "nanogpt"]),
    ("bigram", "bigram (the lecture's first model)", ["--model", "bigram"]),
    # the CPU recipe on BPE tokens, its steps cut so that it takes the default row's wall time
    ("bpe", "GPT, the CPU recipe on a BPE of 512 tokens", ["--tokenizer", "bpe", "--max_iters", "2000",
                                                           "--lr_decay_iters", "2000"]),
    ("default-2-ranks", "GPT, the CPU recipe, 2 ranks", ["mpiexec", "-n", "2"]),
    ("nanogpt-2-ranks", "GPT, nanoGPT's CPU recipe, 2 ranks", ["mpiexec", "-n", "2", "--preset", "nanogpt"]),
]
README_ROWS = 5
# nanoGPT's CPU recipe as its README gives it, run by nanoGPT's own train.py; its checkpoint of the
# last evaluation (iteration 2000) is the model it trained
NANOGPT_ARGS = [*sweep_recipe.NANOGPT_ARGS, "--always_save_checkpoint=True"]
# run in nanoGPT's folder: its model on its checkpoint, every validation target scored once, in
# consecutive block_size chunks (the last one shorter), as minigpt.train.split_loss scores them
NANOGPT_SCORE = """
import sys, numpy as np, torch, torch.nn.functional as F
from model import GPT, GPTConfig
ck = torch.load(sys.argv[1], map_location="cpu")
model = GPT(GPTConfig(**ck["model_args"]))
model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ck["model"].items()})
model.eval()
ids = torch.from_numpy(np.fromfile("data/shakespeare_char/val.bin", dtype=np.uint16).astype(np.int64))
T, n, total = ck["model_args"]["block_size"], len(ids) - 1, 0.0
with torch.no_grad():
    for s in range(0, n, T):
        x, y = ids[s:min(s + T, n)][None], ids[s + 1:min(s + T, n) + 1][None]
        logits, _ = model(x, y)
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
print(ck["iter_num"], total / n)
"""
FIELDS = ["row", "model", "command", "iterations", "whole_val", "val_bpc", "wall_s", "peak_mb", "machine", "when"]


def run_minigpt(name: str, model: str, flags: list[str], keep: Path) -> dict[str, object]:
    out_dir = keep / name
    launcher = flags[:3] if flags[:1] == ["mpiexec"] else []  # its peak memory is the largest rank's
    flags = flags[len(launcher):]
    wall, peak, text = timed([*launcher, sys.executable, "-m", "minigpt", "train", *flags, "--out_dir", str(out_dir)])
    found = re.search(r"whole validation split \([\d,]+ tokens\): ([\d.]+) nats per token, ([\d.]+) bits", text)
    if found is None:
        raise RuntimeError(f"{name}: no whole-split loss in its output:\n{text[-2000:]}")
    iters = re.findall(r"iter (\d+)/\d+", text)
    sample = text.split("sample:\n", 1)[1].rsplit("\ndone in", 1)[0] if "sample:\n" in text else ""
    (out_dir / "sample.txt").write_text(sample)
    return {"row": name, "model": model, "command": " ".join([*launcher, "minigpt train", *flags]),
            "iterations": iters[-1] if iters else "", "whole_val": found.group(1), "val_bpc": found.group(2),
            "wall_s": f"{wall:.1f}", "peak_mb": f"{peak:.0f}"}


def run_nanogpt(path: Path, keep: Path) -> dict[str, object]:
    data = path / "data" / "shakespeare_char"
    if not (data / "val.bin").exists():
        sys.path.insert(0, str(REPO))
        from minigpt.data import load_text  # noqa: PLC0415

        (data / "input.txt").write_text(load_text(), encoding="utf-8")  # prepare.py then downloads nothing
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    out_dir = keep / "nanogpt-train.py"
    wall, peak, _ = timed([sys.executable, "train.py", *NANOGPT_ARGS, f"--out_dir={out_dir}"], cwd=path)
    scored = subprocess.run([sys.executable, "-c", NANOGPT_SCORE, str(out_dir / "ckpt.pt")], cwd=path, check=True,
                            capture_output=True, text=True).stdout.splitlines()[-1].split()  # after model.py's own line
    loss = float(scored[1])
    return {"row": "nanoGPT", "model": "nanoGPT's own train.py, its CPU recipe (PyTorch)",
            "command": "python train.py " + " ".join(NANOGPT_ARGS), "iterations": scored[0],
            "whole_val": f"{loss:.4f}", "val_bpc": f"{loss / math.log(2):.4f}",  # one token is one character
            "wall_s": f"{wall:.1f}", "peak_mb": f"{peak:.0f}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", type=Path, default=None, help="a nanoGPT checkout: run its train.py too")
    p.add_argument("--only", default=None, help="comma-separated rows (default: the first five): " +
                   ", ".join(name for name, _, _ in ROWS))
    p.add_argument("--keep", type=Path, default=None, help="keep each run's out_dir under this folder")
    p.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "results" / "results.csv")
    args = p.parse_args()
    rows = ROWS[:README_ROWS] if args.only is None else [r for r in ROWS if r[0] in args.only.split(",")]
    keep = args.keep or Path(tempfile.mkdtemp(prefix="minigpt-results-"))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    results = []
    jobs = [lambda r=r: run_minigpt(*r, keep) for r in rows]
    if args.nanogpt:
        jobs.insert(min(3, len(jobs)), lambda: run_nanogpt(args.nanogpt.resolve(), keep))
    for job in jobs:  # one after another: on 2 cores a second process slows the first
        row = job()
        row.update(machine=machine(), when=time.strftime("%Y-%m-%d %H:%M"))
        results.append(row)
        print(f"{row['row']:10s} {row['whole_val']} nats/token, {row['val_bpc']} bits/char, {row['wall_s']} s, "
              f"{row['peak_mb']} MB", flush=True)
    new = not args.csv.exists()
    with open(args.csv, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerows(results)
    print("\n| model | command | steps | val loss | bits/char | wall time | peak memory |\n|---|---|---|---|---|---|---|")
    for r in results:
        command = f"`{r['command']}`" if r["row"] != "nanoGPT" else "its `train.py`, above"
        print(f"| {r['model']} | {command} | {r['iterations']} | **{r['whole_val']}** | {r['val_bpc']} | "
              f"{r['wall_s']} s | {r['peak_mb']} MB |")
    print(f"\nruns kept in {keep}")


if __name__ == "__main__":
    main()
