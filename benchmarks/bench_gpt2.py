"""GPT-2 124M in minigpt on a CPU: generation beside transformers + PyTorch, and the fine-tuning recipe's cost.

    python benchmarks/bench_gpt2.py                  # generation: minigpt vs transformers, the bandwidth bound
    python benchmarks/bench_gpt2.py --finetune       # also the whole fine-tuning recipe, start to exit

No real GPT-2 weights are needed (speed does not depend on the values): the weights are GPT-2
124M's shapes, randomly initialised, written once as a Hugging Face folder that both minigpt
(``GPT.from_pretrained``) and transformers (``GPT2LMHeadModel.from_pretrained``) load.

Generation: batch 1, float32, key/value cache, a 16-token prompt and 200 new tokens, greedy (the
same tokens on both sides, checked), PyTorch with as many threads as NumPy's BLAS (the cores).
Rounds alternate; medians of tokens/s and their ratio are printed. The bound: every weight is
read once per new token, so tokens/s can be no more than the memory bandwidth (a 1 GB array copy,
timed in the same run, bytes read plus written) over the weights' bytes. Peak memory of each side
is measured in a process of its own.

--finetune runs `minigpt train --init_from FOLDER` with the recipe's defaults on Tiny Shakespeare
(its tokenizer: a BPE trained on the text, whose 0.27 tokens per character are near GPT-2's 0.30
there; the model keeps GPT-2's 50,257 outputs) and reports the wall time, seconds per step and
peak memory.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import minigpt  # noqa: E402
from bench_train import machine  # noqa: E402
from minigpt import nn  # noqa: E402
from sweep_recipe import timed  # noqa: E402

GPT2 = nn.GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, bias=True)
TINY = nn.GPTConfig(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, bias=True)  # --tiny: a smoke test
PROMPT, NEW = 16, 200


def make_folder(folder: Path, config: nn.GPTConfig = GPT2) -> Path:
    """GPT-2 124M's shapes with random weights (GPT-2's init), and a tokenizer, as a Hugging Face folder."""
    if (folder / "model.safetensors").exists():
        return folder
    from minigpt.data import load_text
    from minigpt.tokenizers import BPETokenizer

    minigpt.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the text gives ~21k merges, fewer than GPT-2's 50k
        tok = BPETokenizer.train(load_text(), 50257, special_tokens=["<|endoftext|>"])
    nn.GPT(config).save_pretrained(folder, tokenizer=tok)
    return folder


def bandwidth_gbs(n: int = 1 << 28) -> float:
    """GB/s of a copy of n float32 (1 GB by default; read + write), the best of 5."""
    a = np.ones(n, np.float32)
    b = np.empty_like(a)
    best = min(_time(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / best / 1e9


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def worker(which: str, folder: Path, new: int) -> None:
    """One side's generation in a process of its own: prints its time, for its peak memory."""
    prompt = np.random.default_rng(0).integers(0, 50257, (1, PROMPT))
    if which == "minigpt":
        model = nn.GPT.from_pretrained(folder)
        t = _time(lambda: model.generate(prompt, new, temperature=0.0))
    else:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count() or 1)
        model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
        with torch.no_grad():
            t = _time(lambda: model.generate(torch.from_numpy(prompt), max_new_tokens=new, do_sample=False,
                                             use_cache=True, pad_token_id=0))
    print(f"seconds {t:.3f}")


def peak_memory(folder: Path, extra: list[str]) -> None:
    """Each side's generation in a process of its own (started while this one is small: a child's
    peak memory counts its parent's at the fork)."""
    for which in ("minigpt", "transformers"):
        try:
            _, peak, _ = timed([sys.executable, __file__, "--worker", which, "--folder", str(folder), *extra])
        except RuntimeError:
            print(f"peak memory, {which} generating: not measured (not installed?)")
            continue
        print(f"peak memory, {which} generating: {peak:.0f} MB")


def generation(folder: Path, rounds: int, new: int, copy_elements: int = 1 << 28) -> None:
    prompt = np.random.default_rng(0).integers(0, 50257, (1, PROMPT))
    ours = nn.GPT.from_pretrained(folder)
    weight_bytes = sum(p.data.nbytes for p in ours.parameters())
    try:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count() or 1)
        peer = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    except ImportError as e:
        peer = None
        print(f"transformers + PyTorch not installed ({e.name}): minigpt alone")
    mine, theirs = [], []
    for r in range(rounds + 1):  # round 0 warms both up and checks the tokens
        t0 = time.perf_counter()
        out = ours.generate(prompt, new, temperature=0.0)
        t_mine = time.perf_counter() - t0
        if peer is not None:
            with torch.no_grad():
                t0 = time.perf_counter()
                ref = peer.generate(torch.from_numpy(prompt), max_new_tokens=new, do_sample=False, use_cache=True,
                                    pad_token_id=0)
                t_theirs = time.perf_counter() - t0
            if r == 0:
                same = int((out == ref.numpy()).all(axis=0).sum()) - PROMPT
                print(f"greedy tokens equal to transformers': {same} of {new}")
        if r:
            mine.append(new / t_mine)
            if peer is not None:
                theirs.append(new / t_theirs)
    bw = bandwidth_gbs(copy_elements)
    bound = bw * 1e9 / weight_bytes
    m = statistics.median(mine)
    line = f"generate (batch 1, {PROMPT}-token prompt, {new} new): minigpt {m:.1f} tokens/s"
    if theirs:
        t = statistics.median(theirs)
        line += f" | transformers {t:.1f} tokens/s | minigpt / transformers {m / t:.2f}"
    print(line)
    print(f"memory bandwidth {bw:.1f} GB/s ({copy_elements * 4 / 1e9:.2g} GB copy), weights {weight_bytes / 1e6:.0f} MB: bound {bound:.1f} "
          f"tokens/s; minigpt at {m / bound:.0%} of it")


def finetune(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as out:
        wall, peak, text = timed([sys.executable, "-m", "minigpt", "train", "--init_from", str(folder),
                                  "--out_dir", out])
    steps = [float(s) for s in re.findall(r"\| ([\d,]+) tok/s", text.replace(",", ""))]
    val = re.search(r"whole validation split \(([\d,]+) tokens\): ([\d.]+) nats per token, ([\d.]+) bits", text)
    tok_s = statistics.median(steps) if steps else float("nan")
    print(f"fine-tune `minigpt train --init_from FOLDER` (its recipe: 200 steps of 4 x 64): wall {wall:.0f} s, "
          f"{4 * 64 / tok_s:.2f} s/step (median), peak memory {peak:.0f} MB; whole-val over {val.group(1)} tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--finetune", action="store_true")
    ap.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "minigpt-random-gpt2-124m")
    ap.add_argument("--tiny", action="store_true", help="a 1-layer model of 16 and 8 new tokens: a smoke test")
    ap.add_argument("--worker", choices=["minigpt", "transformers", "folder"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    new, extra = (8, ["--tiny"]) if args.tiny else (NEW, [])
    if args.worker == "folder":
        make_folder(args.folder, TINY if args.tiny else GPT2)
        return None
    if args.worker:
        return worker(args.worker, args.folder, new)
    print(f"machine: {machine()}")
    if not (args.folder / "model.safetensors").exists():  # in a child, so that this process stays small
        subprocess.run([sys.executable, __file__, "--worker", "folder", "--folder", str(args.folder), *extra],
                       check=True)
    if args.finetune:  # first, while this process is small (see peak_memory)
        finetune(args.folder)
    peak_memory(args.folder, extra)
    generation(args.folder, args.rounds, new, 1 << 22 if args.tiny else 1 << 28)


if __name__ == "__main__":
    main()
