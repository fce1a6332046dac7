"""log.json after a kill: a line cut mid-write is skipped by every reader (the loss curve, the evaluations a resume
makes up), and the rows around it still count."""
import json

from solov2.engine.logger import Logger, read_log_rows
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
