"""Validation shards gathered on rank 0: the byte packing, the protocol on simulated ranks (threads whose AllReduce
is a barrier and a sum), and the sharded predict_and_evaluate equal to one process. The real collective runs in
tests/engine/test_distributed.py (msrun, 2 workers)."""
import errno
import json
import threading
import time

import numpy as np
import pytest

from solov2.engine import collective
from solov2.engine.collective import failed_ranks, gather_bytes, pack, per_rank, share_from_rank0, unpack


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 1000])
def test_pack_is_exact_and_below_float32_integer_range(n):
    payload = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    values = pack(payload)
    assert values.dtype == np.float32 and len(values) == -(-n // 3)
    assert unpack(values, n) == payload
    assert pack(payload + b"\xff" * (3 - n % 3) + b"\xff" * 3)[-1] == 2 ** 24 - 1   # the largest a triple gives


def simulated_ranks(world, call, monkeypatch):
    """Run call(rank) on `world` threads whose collective._sum is an AllReduce SUM across the threads.
    Returns (each rank's result or exception, the number of collective calls)."""
    barrier, arrays, results, calls = threading.Barrier(world), {}, {}, []

    def fake_sum(values):
        rank = int(threading.current_thread().name)
        calls.append(rank)
        arrays[rank] = values.copy()
        barrier.wait()
        total = np.sum([arrays[r] for r in range(world)], axis=0, dtype=np.float32)
        barrier.wait()   # everyone has read before the next call overwrites
        return total
    monkeypatch.setattr(collective, "_sum", fake_sum)

    def run(rank):
        try:
            results[rank] = call(rank)
        except Exception as e:   # compared by the caller
            results[rank] = e
    threads = [threading.Thread(target=run, args=(r,), name=str(r)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a rank hangs"
    return [results[r] for r in range(world)], len(calls) // world


def test_rank_0_gets_every_payload_in_rank_order(monkeypatch):
    payloads = [json.dumps([{"score": 0.1 + 0.2, "name": "côte"}]).encode(), b"", b"[1, 2]" * 1001]
    got, calls = simulated_ranks(3, lambda r: gather_bytes(payloads[r], True, rank=r, world=3), monkeypatch)
    assert got == [([], payloads), ([], None), ([], None)] and calls == 2   # the header, then the data


def test_a_failed_rank_is_named_everywhere_and_nothing_is_sent(monkeypatch):
    got, calls = simulated_ranks(3, lambda r: gather_bytes(b"x" * 10, r != 1, rank=r, world=3), monkeypatch)
    assert got == [([1], None)] * 3 and calls == 1   # the header only


def test_failed_ranks_are_known_on_every_rank(monkeypatch):
    got, calls = simulated_ranks(3, lambda r: failed_ranks(r not in (0, 2), rank=r, world=3), monkeypatch)
    assert got == [[0, 2]] * 3 and calls == 1
    got, _ = simulated_ranks(2, lambda r: failed_ranks(True, rank=r, world=2), monkeypatch)
    assert got == [[], []]
    assert failed_ranks(False, rank=0, world=1) == [0] and failed_ranks(True, rank=0, world=1) == []


def test_per_rank_gives_every_rank_the_table(monkeypatch):
    got, calls = simulated_ranks(3, lambda r: per_rank([r, 10 * r + 1], rank=r, world=3), monkeypatch)
    assert calls == 1
    for table in got:
        np.testing.assert_array_equal(table, [[0, 1], [1, 11], [2, 21]])


def test_ranks_resuming_from_different_snapshots_all_stop(monkeypatch, tmp_path):
    """A work dir that is not shared between nodes: node 0's ranks find epoch 3, the other node's none, or a copy
    whose log says epoch 3's evaluation is done. Every rank stops with the same error instead of training different
    weights (or making different collective calls); equal starts pass."""
    from solov2.engine.train import agree_to_start
    from solov2.errors import SolovError
    snap = dict(epoch=3, global_step=30)

    def start(starts):
        return simulated_ranks(3, lambda r: agree_to_start(tmp_path, starts[r][0], pending=starts[r][1],
                                                           failure=None, rank=r, world=3), monkeypatch)
    for starts, found in [
            ([(snap, False)] * 2 + [(None, False)], "no snapshot on rank 2; epoch 3 (step 30) on ranks 0, 1"),
            ([(snap, True)] * 2 + [(snap, False)],
             "epoch 3 (step 30) on rank 2; epoch 3 (step 30, its evaluation to make up) on ranks 0, 1")]:
        got, calls = start(starts)
        assert calls == 1
        for e in got:
            assert isinstance(e, SolovError)
            assert str(e) == (f"{tmp_path}: the ranks would resume from different snapshots ({found}): on several "
                              f"nodes the work dir must be on storage that every node shares")
    for same in [(snap, True), (None, False)]:
        got, _ = start([same] * 3)
        assert got == [0] * 3


def test_every_rank_takes_rank_0s_seed(monkeypatch, tmp_path):
    """A run without --seed draws a seed in each process: every rank must train with rank 0's (the same new class
    channels, one shuffled order that the shards split), up to the largest seed (2**31 - 1)."""
    from solov2.engine.train import agree_to_start
    for seeds in [(2 ** 31 - 1, 5, 77), (123456789, 2 ** 31 - 1, 0), (0, 1, 2)]:
        got, calls = simulated_ranks(3, lambda r: agree_to_start(tmp_path, None, pending=False, failure=None, rank=r,
                                                                 world=3, seed=seeds[r]), monkeypatch)
        assert calls == 1 and got == [seeds[0]] * 3


def test_a_rank_failing_its_start_up_checks_stops_every_rank(monkeypatch, tmp_path):
    """A file only one node lacks (its --resume snapshot, the annotations): that rank raises its own error, after
    telling the others, which stop naming it instead of waiting in the first training step's collective."""
    from solov2.engine.train import agree_to_start
    from solov2.errors import SolovError
    own = SolovError("/data/ann.json: no such annotation file")
    got, calls = simulated_ranks(3, lambda r: agree_to_start(tmp_path, None, pending=False,
                                                             failure=own if r == 1 else None, rank=r, world=3),
                                 monkeypatch)
    assert calls == 1 and got[1] is own
    for e in (got[0], got[2]):
        assert isinstance(e, SolovError)
        assert str(e) == "rank 1 failed before training (see its log); every rank stops"
    got, _ = simulated_ranks(3, lambda r: agree_to_start(tmp_path, None, pending=False,
                                                         failure=None if r == 0 else own, rank=r, world=3),
                             monkeypatch)
    assert str(got[0]) == "ranks 1, 2 failed before training (see their logs); every rank stops"


def test_rank_0_shares_its_weights_and_a_failure_is_named(monkeypatch):
    """Each rank's BatchNorm statistics may differ (norm_eval False): every rank validates rank 0's."""
    shapes = [(2, 3), (4,), ()]
    mine = [[np.full(s, r + 0.5 * k - 1, np.float32) for k, s in enumerate(shapes)] for r in range(3)]
    got, calls = simulated_ranks(3, lambda r: share_from_rank0(mine[r], shapes, rank=r, world=3), monkeypatch)
    assert calls == 1
    for failed, arrays in got:
        assert failed == [] and [a.shape for a in arrays] == shapes
        for a, want in zip(arrays, mine[0]):
            np.testing.assert_array_equal(a, want)
    got, _ = simulated_ranks(3, lambda r: share_from_rank0(None if r == 2 else mine[r], shapes, rank=r, world=3),
                             monkeypatch)
    assert got == [([2], None)] * 3


def test_gather_records_raises_the_failure_on_its_rank_and_names_it_on_the_others(monkeypatch):
    from solov2.engine.validation import gather_records
    from solov2.errors import SolovError
    records = [[{"image_id": 1, "score": 0.5}], [], [{"image_id": 3, "score": 1 / 3}]]
    got, _ = simulated_ranks(3, lambda r: gather_records(records[r], None, rank=r, world=3, epoch=4), monkeypatch)
    assert got == [records, None, None]
    own = OSError("val/x.jpg: disk gone")
    got, _ = simulated_ranks(3, lambda r: gather_records([], own if r == 2 else None, rank=r, world=3, epoch=4),
                             monkeypatch)
    assert got[2] is own
    for e in got[:2]:
        assert isinstance(e, SolovError)
        assert str(e) == "epoch 4: validation failed on rank 2 (see its log); every rank stops"
    got, _ = simulated_ranks(3, lambda r: gather_records([], None if r == 0 else own, rank=r, world=3, epoch=4),
                             monkeypatch)
    assert str(got[0]) == "epoch 4: validation failed on ranks 1, 2 (see their logs); every rank stops"


# ------------------------------------------------------------------------ sharded predict_and_evaluate
def test_sharded_predict_and_evaluate_equals_one_process(monkeypatch):
    """2 shards of 3 images (images 1 and 3 on rank 0, image 2 on rank 1) gathered on rank 0 give the records, in
    the same order, and the metrics of one process; a rank's failure reaches the gather."""
    from evaluation.test_evaluate import VAL_ANN, VAL_IMG, _gt_predictor
    from conftest import reference_config
    from solov2.evaluation.coco_eval import load_coco
    from solov2.evaluation.results import predict_and_evaluate, predict_dataset
    gt = load_coco(VAL_ANN)
    pred = _gt_predictor(gt, reference_config())
    one = predict_and_evaluate(pred, gt, str(VAL_IMG), max_images=3, progress=False)
    shards = [predict_dataset(pred, gt, str(VAL_IMG), 3, progress=False, shard=(r, 2)) for r in range(2)]
    ids = [im["id"] for im in gt.dataset["images"][:3]]
    assert [sorted({o["image_id"] for o in s}) for s in shards] == [sorted(ids[0::2]), ids[1:2]]
    assert shards[0] + shards[1] != one[0]    # rank order is not file order: the merge must reorder
    seen = []

    def gather(records, failure):
        seen.append((records, failure))
        return [records] + shards[1:]
    results, metrics = predict_and_evaluate(pred, gt, str(VAL_IMG), max_images=3, progress=False, shard=(0, 2),
                                            gather=gather)
    assert seen == [(shards[0], None)]
    assert results == one[0]
    for t in ("segm", "bbox"):
        np.testing.assert_array_equal(metrics[t]["stats"], one[1][t]["stats"])
    assert metrics["segm"]["AP"] == 1.0
    assert predict_and_evaluate(pred, gt, str(VAL_IMG), max_images=3, progress=False, shard=(1, 2),
                                gather=lambda records, failure: None) == (None, None)

    def broken(img):
        raise RuntimeError("disk gone")
    failures = []
    monkeypatch.setattr(pred, "prepare", broken)
    predict_and_evaluate(pred, gt, str(VAL_IMG), max_images=3, progress=False, shard=(1, 2),
                         gather=lambda records, failure: failures.append(failure))
    assert len(failures) == 1 and "disk gone" in str(failures[0])


def test_end_of_epoch_saves_before_a_failed_evaluation_ends_every_rank(monkeypatch, capsys):
    """An evaluation that failed (on every rank, as run_validation raises it) still saves the epoch with the best as
    it was; no rank raises before rank 0's save is done (msrun kills every worker when one exits); a save that fails
    too is told, and the evaluation's error is still the one raised."""
    from solov2.engine.train import end_epoch
    errors = [RuntimeError(f"rank {r}: val image broken") for r in range(2)]
    events = []

    def evaluate(r):
        raise errors[r]

    def slow_save(best, stopped):
        time.sleep(0.3)
        events.append(("saved", best, stopped))

    def raised_after(r, fn):
        try:
            return fn()
        finally:
            events.append(("raised", r))

    got, calls = simulated_ranks(2, lambda r: raised_after(r, lambda: end_epoch(
        (0.4, 2), evaluate=lambda: evaluate(r), save=slow_save, save_due=False, epoch=3, rank=r, world=2)),
        monkeypatch)
    assert got == errors and calls == 1
    assert events[0] == ("saved", (0.4, 2), True) and {e[1] for e in events[1:]} == {0, 1}   # saved, then raised

    def full_disk(best, stopped):
        raise OSError(errno.ENOSPC, "No space left on device", "/w/epoch_3.ckpt.tmp")
    got, calls = simulated_ranks(2, lambda r: end_epoch((0.4, 2), evaluate=lambda: evaluate(r), save=full_disk,
                                                        save_due=True, epoch=3, rank=r, world=2), monkeypatch)
    assert got == errors and calls == 1
    assert isinstance(got[0].__cause__, OSError) and got[1].__cause__ is None
    assert "warning: epoch 3 was not saved: /w/epoch_3.ckpt.tmp: No space left on device" in capsys.readouterr().err


def test_a_failed_save_ends_every_rank(monkeypatch):
    """Rank 0's save of a due epoch fails (a full disk) with no evaluation that epoch: rank 0 raises its error and
    the other ranks stop with one naming rank 0, instead of going on to wait in the next epoch's all-reduce; a
    save that worked lets every rank go on (one collective call per saved epoch)."""
    from solov2.engine.train import end_epoch
    from solov2.errors import SolovError
    disk = OSError(errno.ENOSPC, "No space left on device", "/w/epoch_5.ckpt.tmp")

    def full_disk(best, stopped):
        raise disk
    got, calls = simulated_ranks(3, lambda r: end_epoch((0.5, 4), evaluate=None, save=full_disk, save_due=True,
                                                        epoch=5, rank=r, world=3), monkeypatch)
    assert got[0] is disk and calls == 1
    for e in got[1:]:
        assert isinstance(e, SolovError) and str(e) == ("epoch 5: rank 0 could not save its snapshot (see its log); "
                                                         "every rank stops")
    saved = []
    got, calls = simulated_ranks(3, lambda r: end_epoch((0.5, 4), evaluate=lambda: (0.6, 5),
                                                        save=lambda best, stopped: saved.append(best), save_due=True,
                                                        epoch=5, rank=r, world=3), monkeypatch)
    assert got == [(0.6, 5)] * 3 and saved == [(0.6, 5)] and calls == 1


def test_end_of_epoch_evaluates_then_saves_when_due():
    """One rank: the new best reaches the snapshot; no save when none is due; a failed save without a failed
    evaluation is raised as it is; an interrupted evaluation (Ctrl-C) still saves the epoch."""
    from solov2.engine.train import end_epoch
    saved = []

    def save(best, stopped):
        saved.append((best, stopped))
    assert end_epoch(None, evaluate=lambda: (0.5, 4), save=save, save_due=True, epoch=4, rank=0, world=1) == (0.5, 4)
    assert end_epoch((0.5, 4), evaluate=None, save=save, save_due=False, epoch=5, rank=0, world=1) == (0.5, 4)
    assert end_epoch((0.5, 4), evaluate=None, save=save, save_due=False, epoch=6, rank=1,
                     world=2) == (0.5, 4)   # rank 1 never saves, and makes no collective call when none is due
    assert saved == [((0.5, 4), False)]

    def broken(best, stopped):
        raise OSError(errno.ENOSPC, "No space left on device", "/w/epoch_7.ckpt.tmp")
    with pytest.raises(OSError):
        end_epoch((0.5, 4), evaluate=lambda: (0.6, 7), save=broken, save_due=True, epoch=7, rank=0, world=1)

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        end_epoch((0.5, 4), evaluate=interrupted, save=save, save_due=False, epoch=8, rank=0, world=1)
    assert saved[-1] == ((0.5, 4), True)


def test_rank_0s_start_up_writes_end_every_rank_when_they_fail(tmp_path, monkeypatch):
    """run.json (and log.json's trim, the files --force deletes) are written by rank 0 alone before the first step:
    a failure there (here a work dir removed under the run) is rank 0's error and, on the other ranks, one naming
    rank 0, in one collective call, instead of a wait in the first all-reduce; written, every rank goes on."""
    from conftest import TRASHCAN_CFG

    from solov2.config import load_config
    from solov2.engine.run_record import record_run
    from solov2.engine.train import on_rank0
    from solov2.errors import SolovError
    cfg = load_config(TRASHCAN_CFG)

    def start(work, r):
        on_rank0(lambda: record_run(work, cfg), what=f"write run.json in {work}", rank=r, world=2)
        return "started"
    got, calls = simulated_ranks(2, lambda r: start(tmp_path / "gone", r), monkeypatch)
    assert isinstance(got[0], OSError) and calls == 1
    assert isinstance(got[1], SolovError) and str(got[1]) == (f"rank 0 could not write run.json in {tmp_path / 'gone'} "
                                                              "(see its log); every rank stops")
    got, calls = simulated_ranks(2, lambda r: start(tmp_path, r), monkeypatch)
    assert got == ["started", "started"] and calls == 1 and (tmp_path / "run.json").is_file()
