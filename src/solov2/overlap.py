"""Overlap host work with the network over a stream of images: prepare the next, finish the last, in threads.

Decoding, resizing and normalising (cv2, NumPy) and the post-processing, drawing and RLE encoding of the previous
image (NumPy BLAS, cv2, pycocotools) release the GIL for most of their time, so one thread each runs beside the
network call of the main thread. Results come back in input order; an exception raised by `prepare`, `run` (a
Ctrl-C during the network call, too) or `finish` reaches the caller at that item's turn, as in a plain loop: every
item before it has been finished and yielded.
"""
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Dict, Iterable, Iterator, Tuple, TypeVar

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")
Output = TypeVar("Output")
Result = TypeVar("Result")


def overlapped(items: Iterable[Item], prepare: Callable[[Item], Prepared], run: Callable[[Prepared], Output],
               finish: Callable[[Item, Prepared, Output], Result], ahead: int = 2) -> Iterator[Result]:
    """Yield finish(item, p, run(p)) with p = prepare(item) for each item, in order.

    prepare runs up to `ahead` items in front of `run` (one worker thread), finish up to `ahead` items behind it
    (one worker thread); `run` (the network) stays in the calling thread. ahead=0 is the plain sequential loop.
    """
    if ahead == 0:
        for item in items:
            prepared = prepare(item)
            yield finish(item, prepared, run(prepared))
        return
    source = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as pre, \
            ThreadPoolExecutor(1, thread_name_prefix="finish") as post:
        to_run: Deque[Tuple[Item, Future]] = deque()
        to_yield: Deque[Future] = deque()

        def feed() -> None:
            for item in source:
                to_run.append((item, pre.submit(prepare, item)))
                return

        for _ in range(ahead):
            feed()
        try:
            while to_run:
                item, fut = to_run.popleft()
                feed()
                try:
                    prepared = fut.result()
                    output = run(prepared)   # Ctrl-C arrives here too (MindSpore turns it into SIGTERM)
                except BaseException:  # as in a plain loop: the items before this one are finished first
                    while to_yield:
                        yield to_yield.popleft().result()
                    raise
                to_yield.append(post.submit(finish, item, prepared, output))
                while len(to_yield) > ahead:
                    yield to_yield.popleft().result()
            while to_yield:
                yield to_yield.popleft().result()
        finally:  # an error or an abandoned generator: drop the work not started yet
            for _, fut in to_run:
                fut.cancel()
            for fut in to_yield:
                fut.cancel()


def predict_timed(predictor, img_bgr) -> Tuple[dict, Dict[str, float]]:
    """`predictor.predict(img_bgr)` (a Predictor or an ExportedPredictor) and the seconds of its stages:
    dict(preprocess, network, postprocess). One image, the stages in turn (`overlapped` runs many)."""
    t0 = time.perf_counter()
    x, meta = predictor.prepare(img_bgr)
    t1 = time.perf_counter()
    outputs = predictor.network(x)
    t2 = time.perf_counter()
    out = predictor.finish(outputs, meta)
    t3 = time.perf_counter()
    return out, dict(preprocess=t1 - t0, network=t2 - t1, postprocess=t3 - t2)
