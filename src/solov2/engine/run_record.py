"""What a training run was started with: the resolved config and the command line, kept in the work dir, so
that a resume can say what changed since (`work_dir/run.json`)."""
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import List

from solov2.config import SOLOv2Config
from solov2.files import write_json_atomic

RECORD = "run.json"


def _flat(d, prefix="") -> dict:
    """Nested dicts -> {'a.b.c': value}; lists stay values (JSON-normalised: tuples are lists)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def resolved(cfg: SOLOv2Config) -> dict:
    """The config as plain JSON values, without `source` (the same settings may come from another path)."""
    d = json.loads(json.dumps(asdict(cfg)))
    d.pop("source", None)
    return d


def record_run(work: Path, cfg: SOLOv2Config) -> None:
    """Write work/run.json: {config: the resolved settings, argv: the command line}, atomically."""
    write_json_atomic(work / RECORD, dict(config=resolved(cfg), argv=sys.argv))


def changes_since_last_run(work: Path, cfg: SOLOv2Config) -> List[str]:
    """'key: old -> new' for every resolved setting that differs from work/run.json ([] without a record)."""
    path = work / RECORD
    if not path.is_file():
        return []
    try:
        old = _flat(json.loads(path.read_text()).get("config", {}))
    except (OSError, ValueError, AttributeError):
        return [f"{path}: unreadable, so the changes cannot be listed"]
    new = _flat(resolved(cfg))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
