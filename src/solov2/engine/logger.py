"""The rank-0 training log: console lines, train.log, log.json (one JSON object per line), the loss curve."""
import json
import sys
from pathlib import Path

from tqdm import tqdm

from solov2.errors import failure_line
from solov2.files import atomic_write


def read_log_rows(work_dir: Path) -> list:
    """The rows of work_dir/log.json (dicts; none when it is missing). A line cut by a kill is skipped: a resumed
    run appends after it, and the other rows still count."""
    try:
        lines = (work_dir / "log.json").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for s in lines:
        try:
            rows.append(json.loads(s))
        except ValueError:
            continue
    return [r for r in rows if isinstance(r, dict)]


def drop_rows_after(work_dir: Path, global_step: int) -> int:
    """Rewrite work_dir/log.json (atomically) without its rows past `global_step`, the step a run starts from (a
    resumed snapshot's; 0 for a new run), and without lines cut by a kill. Those rows are training that no snapshot
    kept (a run stopped mid-epoch, or before its first snapshot): the run starting now repeats or replaces it, and
    log.json (the loss curve, the evaluations a resume makes up) holds one history. Returns how many rows were
    dropped; train.log keeps their lines."""
    try:
        lines = [s for s in (work_dir / "log.json").read_text().splitlines() if s.strip()]
    except OSError:
        return 0
    rows = read_log_rows(work_dir)
    keep = [r for r in rows if not isinstance(r.get("iter"), (int, float)) or r["iter"] <= global_step]
    if len(keep) == len(lines):
        return 0
    with atomic_write(work_dir / "log.json") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return len(rows) - len(keep)


class Logger:
    """Rank-0 log: human lines on the console (through tqdm) and train.log, one JSON object per line in log.json.

    strict: a log file that cannot be written (a full disk) is an error, as in a run of one process. Otherwise (rank
    0 of several) it is a warning, once per file: raised on rank 0 alone in the middle of an epoch, it would leave
    the other ranks waiting in the next all-reduce (under a rank table, until the collective's timeout); the next
    snapshot save, whose failure every rank learns of (`end_epoch`), then stops the run.
    """

    def __init__(self, work_dir: Path, enabled: bool, strict: bool = True):
        self.enabled, self.work_dir, self.strict = enabled, work_dir, strict
        self._unwritable = set()   # the files a write failed on: warned about once

    def line(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)
            self._append("train.log", text + "\n")

    def record(self, row: dict) -> None:
        if self.enabled:
            self._append("log.json", json.dumps(row) + "\n")

    def _append(self, name: str, text: str) -> None:
        if name in self._unwritable:   # a failed write may have left half a line: never glue the next row to it
            text = "\n" + text
        try:
            with open(self.work_dir / name, "a") as f:
                f.write(text)
        except OSError as e:
            if self.strict:
                raise
            if name not in self._unwritable:
                self._unwritable.add(name)
                tqdm.write(f"warning: {self.work_dir / name} not written ({failure_line(e)}); training goes on "
                           "(a full disk stops it at the next snapshot)", file=sys.stderr)

    def plot(self) -> None:
        """Curves of the whole run (log.json, resumed runs included) -> loss_curve.png: the losses by iteration,
        and beside them, when the run validates, the validation mAPs by epoch."""
        if not self.enabled:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = read_log_rows(self.work_dir)
        train = [r for r in rows if r.get("mode", "train") == "train"]
        val = [r for r in rows if r.get("mode") == "val"]
        if not train:
            return
        fig, axes = plt.subplots(1, 2 if val else 1, figsize=(12 if val else 7, 4), squeeze=False)
        ax = axes[0][0]
        it = [r["iter"] for r in train]
        for key in ("loss", "loss_ins", "loss_cate"):
            ax.plot(it, [r[key] for r in train], label=key)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        if val:
            ax = axes[0][1]
            for key in [k for k in val[-1] if k.endswith(("_mAP", "_mAP_50"))]:
                ax.plot([r["epoch"] for r in val], [r.get(key, float("nan")) for r in val], marker="o", label=key)
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation AP")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        try:   # a picture of the log: a failure to draw it is a warning, and a kill never leaves half a PNG
            with atomic_write(self.work_dir / "loss_curve.png") as tmp:
                fig.savefig(tmp, dpi=100)
        except (OSError, ValueError) as e:
            self.line(f"warning: loss_curve.png not written: {failure_line(e)}")
        finally:
            plt.close(fig)
