"""What a run shows and writes as it goes: the progress line, warnings, metrics.csv, loss.png.

Legend of metrics.csv, one row per evaluation: iter, train_loss and val_loss (nats per token, the
mean over eval_iters batches), val_bpc (the val loss in bits per character of the text), lr,
elapsed_s (seconds of training, across resumes), tokens_per_s.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from minigpt.data import atomic_write_bytes


def warn_on_stderr(message: str) -> None:
    """A warning the run goes on after: one line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Progress:
    """One status line: iteration, loss, tokens/s and time left (redrawn on a terminal,
    printed every log_interval iterations otherwise)."""

    def __init__(self, total: int, tokens_per_iter: int, log_interval: int, stream: Any = None) -> None:
        self.total, self.tokens_per_iter, self.log_interval = total, tokens_per_iter, log_interval
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.step_time: float | None = None
        self.last_draw = 0.0

    def update(self, it: int, loss: float, dt: float) -> None:
        self.step_time = dt if self.step_time is None else 0.9 * self.step_time + 0.1 * dt
        now = time.time()
        if self.tty and now - self.last_draw < 0.1 and it + 1 < self.total:
            return
        if not self.tty and (it + 1) % self.log_interval and it + 1 < self.total:
            return
        self.last_draw = now
        done = (it + 1) / self.total
        bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
        left = self.step_time * (self.total - it - 1)
        line = (f"[{bar}] iter {it + 1}/{self.total} | loss {loss:.4f} | "
                f"{self.tokens_per_iter / self.step_time:,.0f} tok/s | {fmt_time(left)} left")
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end_line(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


METRICS_FIELDS = ["iter", "train_loss", "val_loss", "val_bpc", "lr", "elapsed_s", "tokens_per_s"]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_FIELDS, lineterminator="\n", restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def can_plot() -> bool:
    """Whether matplotlib, which draws loss.png, is installed (the ``plot`` extra)."""
    try:
        import matplotlib  # noqa: F401, PLC0415 - optional
    except ImportError:
        return False
    return True


def overfitting(rows: list[dict[str, Any]], evaluations: int = 3) -> bool:
    """Whether the val loss rose at each of the last ``evaluations`` evaluations of ``rows``
    (metrics.csv's) while the train loss fell at each: the model learns its training text by
    heart instead of the language, as a big model on a small text does."""
    last = rows[-(evaluations + 1):]
    if len(last) < evaluations + 1:
        return False
    pairs = [(float(a["train_loss"]), float(a["val_loss"]), float(b["train_loss"]), float(b["val_loss"]))
             for a, b in zip(last, last[1:])]
    return all(val_b > val_a and train_b < train_a for train_a, val_a, train_b, val_b in pairs)


def plot_metrics(rows: list[dict[str, Any]], path: Path) -> bool:
    """Draw the train and val loss curves into a PNG at ``path``; False (and nothing written)
    when matplotlib is not installed (pip install matplotlib: the plot extra)."""
    try:
        import matplotlib  # noqa: PLC0415 - optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    its = [int(r["iter"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(its, [float(r["train_loss"]) for r in rows], "o-", label="train")
    ax.plot(its, [float(r["val_loss"]) for r in rows], "o-", label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (mean of eval_iters batches)")
    ax.set_title("minigpt on Tiny Shakespeare")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
