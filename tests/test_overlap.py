"""solov2.overlap.overlapped: the same results, in order, as the plain loop; errors at the item's turn."""
import threading
import time

import pytest

from solov2.overlap import overlapped


def stages(log):
    def prepare(i):
        time.sleep(0.002 * (i % 3))  # uneven host work: order must not depend on it
        log.append(("prepare", i, threading.current_thread().name))
        return i * 10

    def run(p):
        log.append(("run", p // 10, threading.current_thread().name))
        return p + 1

    def finish(i, p, out):
        log.append(("finish", i, threading.current_thread().name))
        return (i, p, out)
    return prepare, run, finish


@pytest.mark.parametrize("ahead", [0, 1, 2, 5])
def test_same_results_in_order(ahead):
    log = []
    got = list(overlapped(range(12), *stages(log), ahead=ahead))
    assert got == [(i, 10 * i, 10 * i + 1) for i in range(12)]
    runs = [i for what, i, _ in log if what == "run"]
    assert runs == list(range(12))
    main = threading.current_thread().name
    assert all(name == main for what, _, name in log if what == "run")  # the network stays in the caller's thread
    if ahead:
        assert all(name != main for what, _, name in log if what != "run")


def test_prepare_error_reaches_the_caller_at_its_turn():
    def prepare(i):
        if i == 3:
            raise ValueError("bad image 3")
        return i

    done = []
    with pytest.raises(ValueError, match="bad image 3"):
        for r in overlapped(range(10), prepare, lambda p: p, lambda i, p, o: i, ahead=2):
            done.append(r)
    assert done == [0, 1, 2]  # as in a plain loop: every item before the bad one was finished, in order


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_run_error_comes_after_the_items_before_it(error):
    """A Ctrl-C (or a network error) during item 3's network call: items 0-2, already run, are finished and yielded
    first (run.py keeps their records), as in a plain loop; item 3 is never finished."""
    def run(p):
        if p == 3:
            raise error("stop")
        return p
    done, finished = [], []

    def finish(i, p, o):
        time.sleep(0.05)   # still in the finish thread when the error comes
        finished.append(i)
        return i
    with pytest.raises(error):
        for r in overlapped(range(10), lambda i: i, run, finish, ahead=2):
            done.append(r)
    assert done == finished == [0, 1, 2]


def test_finish_error_propagates():
    def finish(i, p, o):
        if i == 1:
            raise RuntimeError("disk full")
        return i
    with pytest.raises(RuntimeError, match="disk full"):
        list(overlapped(range(5), lambda i: i, lambda p: p, finish, ahead=2))
