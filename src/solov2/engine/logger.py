"""The rank-0 training log: console lines, train.log, log.json (one JSON object per line), the loss curve."""
import json
from pathlib import Path

from tqdm import tqdm


class Logger:
    """Rank-0 log: human lines on the console (through tqdm) and train.log, one JSON object per line in log.json."""

    def __init__(self, work_dir: Path, enabled: bool):
        self.enabled, self.work_dir = enabled, work_dir

    def line(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)
            with open(self.work_dir / "train.log", "a") as f:
                f.write(text + "\n")

    def record(self, row: dict) -> None:
        if self.enabled:
            with open(self.work_dir / "log.json", "a") as f:
                f.write(json.dumps(row) + "\n")

    def plot(self) -> None:
        """Loss curves of the whole run (log.json, resumed runs included) -> loss_curve.png."""
        if not self.enabled:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = [json.loads(s) for s in (self.work_dir / "log.json").read_text().splitlines() if s.strip()]
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        it = [r["iter"] for r in rows]
        for key in ("loss", "loss_ins", "loss_cate"):
            ax.plot(it, [r[key] for r in rows], label=key)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.work_dir / "loss_curve.png", dpi=100)
        plt.close(fig)
