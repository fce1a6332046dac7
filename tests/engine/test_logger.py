"""log.json after a kill: a line cut mid-write is skipped by every reader (the loss curve, the evaluations a resume
makes up), and the rows around it still count."""
import json

import pytest

from solov2.engine.logger import Logger, drop_rows_after, read_log_rows
from solov2.engine.validation import evaluated_epochs, evaluation_due


def test_a_cut_line_is_skipped_and_the_rest_counts(tmp_path):
    rows = [dict(mode="train", epoch=1, iter=i, loss=1.0 / i, loss_ins=0.5 / i, loss_cate=0.5 / i) for i in (1, 2)]
    rows.append(dict(mode="val", epoch=1, iter=2, segm_mAP=0.25, segm_mAP_50=0.5))
    text = "".join(json.dumps(r) + "\n" for r in rows)
    # killed while writing epoch 2's first row; the resumed run then appended its own rows after the cut
    resumed = dict(mode="train", epoch=2, iter=3, loss=0.3, loss_ins=0.2, loss_cate=0.1)
    (tmp_path / "log.json").write_text(text + '{"mode": "train", "epoch": 2, "it' + "\n" + json.dumps(resumed) + "\n")
    assert read_log_rows(tmp_path) == rows + [resumed]
    assert evaluated_epochs(tmp_path) == {1}
    Logger(tmp_path, enabled=True).plot()
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert read_log_rows(tmp_path / "missing") == [] and evaluated_epochs(tmp_path / "missing") == set()


def test_evaluation_due_every_interval_and_after_the_last():
    assert [e for e in range(1, 8) if evaluation_due(e, 3, 7)] == [3, 6, 7]
    assert [e for e in range(1, 4) if evaluation_due(e, 1, 3)] == [1, 2, 3]


def test_rows_no_snapshot_kept_are_dropped_when_a_run_starts(tmp_path):
    """A run starting from step 2 (a snapshot of epoch 1, 2 steps per epoch) drops the rows of the earlier run's
    lost epoch 2 (and a cut line); a new run (step 0) drops an aborted run's rows; nothing to drop leaves the
    file untouched."""
    kept = [dict(mode="train", epoch=1, iter=i, loss=1.0) for i in (1, 2)] + [dict(mode="val", epoch=1, iter=2)]
    lost = [dict(mode="train", epoch=2, iter=3, loss=0.5)]
    text = "".join(json.dumps(r) + "\n" for r in kept + lost) + '{"mode": "train", "ep\n'
    (tmp_path / "log.json").write_text(text)
    assert drop_rows_after(tmp_path, 2) == 1
    assert read_log_rows(tmp_path) == kept
    assert (tmp_path / "log.json").read_text() == "".join(json.dumps(r) + "\n" for r in kept)   # the cut line too
    before = (tmp_path / "log.json").stat().st_mtime_ns
    assert drop_rows_after(tmp_path, 4) == 0 and (tmp_path / "log.json").stat().st_mtime_ns == before
    assert drop_rows_after(tmp_path, 0) == 3 and read_log_rows(tmp_path) == []
    assert drop_rows_after(tmp_path / "missing", 0) == 0
    assert not list(tmp_path.glob(".*tmp*"))


def test_an_unwritable_log_is_a_warning_once_per_file_on_rank_0_of_several(tmp_path, capsys):
    """Rank 0's log writes under msrun never raise (the other ranks would wait in the next all-reduce): a log file
    that cannot be written is one warning per file, the lines still reach the console, and a row written once the
    file can be written again starts on a line of its own. A run of one process stops at the first failure."""
    gone = tmp_path / "gone"   # a work dir removed under the run: every write fails
    with pytest.raises(OSError):
        Logger(gone, enabled=True, strict=True).line("epoch [1][1/3]")
    log = Logger(gone, enabled=True, strict=False)
    for k in range(3):
        log.line(f"epoch [1][{k + 1}/3]")
        log.record(dict(mode="train", epoch=1, iter=k + 1, loss=1.0))
    out, err = capsys.readouterr()
    warnings = [s for s in err.splitlines() if s.startswith("warning:")]
    assert len(warnings) == 2 and "train.log not written" in warnings[0] and "log.json not written" in warnings[1]
    assert "epoch [1][3/3]" in out
    gone.mkdir()
    (gone / "log.json").write_text('{"mode": "train", "ep')   # what a write cut by the full disk may leave
    log.record(dict(mode="train", epoch=1, iter=4, loss=1.0))
    assert read_log_rows(gone) == [dict(mode="train", epoch=1, iter=4, loss=1.0)]
