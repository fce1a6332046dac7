"""Small exchanges between ranks with the one collective every backend has, AllReduce SUM on float32 (HCCL on
Ascend, MCCL on CPU under msrun): a few numbers from every rank to every rank (failure flags, the epoch each resumes
from), rank 0's weights to every rank, every rank's bytes (its shard's COCO validation records) to rank 0.

Each rank writes into its own slice of a zero buffer (or only rank 0 writes), so the sum is a copy, and exact:
every element has one non-zero addend. Bytes travel three per float32, an integer below 2**24. Each call also
carries a failure flag per rank, so that a rank that failed still makes the same collective calls as the others
and every rank learns which one failed.
"""
from typing import List, Optional, Tuple

import numpy as np

_SPLIT = 2 ** 20   # a payload length as two float32 integers (hi * 2**20 + lo), exact up to 2**44 bytes


def pack(payload: bytes) -> np.ndarray:
    """bytes -> float32 (ceil(n / 3),): three bytes per value, zero-padded, each value an exact integer < 2**24."""
    data = np.frombuffer(payload + b"\0" * (-len(payload) % 3), np.uint8).reshape(-1, 3).astype(np.uint32)
    return ((data[:, 0] << 16) | (data[:, 1] << 8) | data[:, 2]).astype(np.float32)


def unpack(values: np.ndarray, length: int) -> bytes:
    """The inverse of `pack`: float32 (m,) -> the first `length` bytes."""
    v = values.astype(np.uint32)
    return np.stack([v >> 16, (v >> 8) & 255, v & 255], axis=1).astype(np.uint8).tobytes()[:length]


def _sum(values: np.ndarray) -> np.ndarray:
    import mindspore as ms
    return ms.ops.AllReduce()(ms.Tensor(values)).asnumpy()


def per_rank(values, *, rank: int, world: int) -> np.ndarray:
    """Every rank's `values` (k numbers, exact integers below 2**24) on every rank: float32 (world, k), in one call
    that every rank makes (world 1: no collective)."""
    table = np.zeros((world, len(values)), np.float32)
    table[rank] = values
    return _sum(table.ravel()).reshape(world, -1) if world > 1 else table


def failed_ranks(ok: bool, *, rank: int, world: int) -> List[int]:
    """The ranks whose `ok` was False, on every rank, in one call that every rank makes (world 1: no collective)."""
    flags = per_rank([0.0 if ok else 1.0], rank=rank, world=world)[:, 0]
    return [r for r in range(world) if flags[r] != 0]


def ranks_text(ranks: List[int]) -> str:
    """'rank 1' or 'ranks 1, 2': how an error names the ranks it is about."""
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def see_logs(ranks: List[int]) -> str:
    """'see its log' or 'see their logs': where an error about those ranks sends the user."""
    return f"see {'their logs' if len(ranks) > 1 else 'its log'}"


def share_from_rank0(arrays: Optional[List[np.ndarray]], shapes: List[tuple], *, rank: int,
                     world: int) -> Tuple[List[int], Optional[List[np.ndarray]]]:
    """Rank 0's float32 `arrays` (of `shapes`, the same on every rank) on every rank, in one call that every rank
    makes; arrays None: this rank failed to produce its own. Returns (failed ranks, arrays or None when any
    failed). With norm_eval False each rank's BatchNorm statistics follow its own batches: validation must use
    rank 0's, those of the snapshot."""
    sizes = [int(np.prod(s)) for s in shapes]
    buffer = np.zeros(world + sum(sizes), np.float32)
    if arrays is None:
        buffer[rank] = 1.0
    elif rank == 0:
        buffer[world:] = np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays])
    buffer = _sum(buffer)
    failed = [r for r in range(world) if buffer[r] != 0]
    if failed:
        return failed, None
    ends = np.cumsum(sizes)
    return [], [buffer[world + e - n:world + e].reshape(s) for e, n, s in zip(ends, sizes, shapes)]


def gather_bytes(payload: bytes, ok: bool, *, rank: int, world: int) -> Tuple[List[int], Optional[List[bytes]]]:
    """Every rank calls it once, with its payload and whether it has one (ok False: it failed, payload unused).

    Returns (failed ranks, payloads): when no rank failed, every rank's payload in rank order on rank 0 and None
    on the others; when any failed, no payload is sent and every rank gets (the failed ranks, None).
    """
    header = np.zeros(3 * world, np.float32)   # [failed_0 .. failed_w-1, hi_0, lo_0, hi_1, lo_1, ...]: bytes
    header[rank] = 0.0 if ok else 1.0
    header[world + 2 * rank:world + 2 * rank + 2] = divmod(len(payload) if ok else 0, _SPLIT)
    header = _sum(header)
    failed = [r for r in range(world) if header[r] != 0]
    if failed:
        return failed, None
    lengths = [int(hi) * _SPLIT + int(lo) for hi, lo in header[world:].reshape(world, 2)]
    starts = np.cumsum([0] + [-(-n // 3) for n in lengths])   # each payload's slice of packed values
    buffer = np.zeros(int(starts[-1]), np.float32)
    buffer[starts[rank]:starts[rank + 1]] = pack(payload)
    if len(buffer):   # every rank knows the total: all skip together
        buffer = _sum(buffer)
    if rank != 0:
        return [], None
    return [], [unpack(buffer[starts[r]:starts[r + 1]], lengths[r]) for r in range(world)]
