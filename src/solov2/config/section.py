"""Checked access to one section of a config file: typed values whose errors name the file and the dotted key."""
import difflib
import math
from typing import Any

from solov2.config.reader import ConfigError, _is_int, _is_num

MISSING = object()
_SEQ = (list, tuple)
# What a value becomes decides what it may be: settings are read into float32 tensors and int32 counters, and an
# image side into a float32 canvas (3 x 8192 x 8192 float32 = 0.8 GB per image, before the network's feature maps).
INT32_MAX, FLOAT32_MAX, MAX_IMAGE_SIDE = 2 ** 31 - 1, 3.4028234663852886e38, 8192


def _int(v: Any) -> bool:
    return _is_int(v) and -INT32_MAX <= v <= INT32_MAX


def _num(v: Any) -> bool:
    return _is_num(v) and math.isfinite(v) and abs(v) <= FLOAT32_MAX


def _beyond(v: Any) -> str:
    """Why a number that looks right is refused: it leaves the range of the type it becomes."""
    if isinstance(v, _SEQ):
        return next((note for note in map(_beyond, v) if note), "")
    if _is_int(v) and abs(v) > INT32_MAX:
        return " (beyond the int32 range, 2**31-1, that it becomes)"
    if _is_num(v) and not (math.isfinite(v) and abs(v) <= FLOAT32_MAX):
        return " (not a finite float32)"
    return ""


KINDS = {  # kind -> (test, convert, description)
    "any": (lambda v: True, lambda v: v, ""), "int": (_int, int, "an integer"),
    "num": (_num, float, "a number"), "bool": (lambda v: isinstance(v, (bool, int)), bool, "a boolean"),
    "str": (lambda v: isinstance(v, str), str, "a string"), "dict": (lambda v: isinstance(v, dict), dict, "a dict"),
    "str?": (lambda v: v is None or isinstance(v, str), lambda v: v, "a string or None"),
    "int?": (lambda v: v is None or _int(v), lambda v: v if v is None else int(v), "an integer or None"),
    "names": (lambda v: isinstance(v, _SEQ) and all(isinstance(x, str) for x in v), tuple, "a list of strings"),
    "ints": (lambda v: isinstance(v, _SEQ) and all(map(_int, v)), tuple, "a list of integers"),
    "rgb": (lambda v: isinstance(v, _SEQ) and len(v) == 3 and all(map(_num, v)), lambda v: tuple(map(float, v)),
            "a list of 3 numbers"),
    "scale": (lambda v: isinstance(v, tuple) and len(v) == 2 and all(_is_int(x) and 0 < x <= MAX_IMAGE_SIDE
                                                                     for x in v), tuple,
              f"a (long, short) tuple of positive integers <= {MAX_IMAGE_SIDE}"),
    # ranges: a value outside them is a typo or a silent no-op (total_epochs=0 trains nothing), never a setting
    "int>=1": (lambda v: _int(v) and v >= 1, int, "an integer >= 1"),
    "int>=0": (lambda v: _int(v) and v >= 0, int, "an integer >= 0"),
    "num>0": (lambda v: _num(v) and v > 0, float, "a number > 0"),
    "num>=0": (lambda v: _num(v) and v >= 0, float, "a number >= 0"),
    "0..1": (lambda v: _num(v) and 0 <= v <= 1, float, "a number in [0, 1]"),
    "ints>=1": (lambda v: isinstance(v, _SEQ) and all(_int(x) and x >= 1 for x in v), tuple,
                "a list of integers >= 1"),
    "ranges": (lambda v: isinstance(v, _SEQ) and all(isinstance(p, _SEQ) and len(p) == 2 and all(map(_int, p))
                                                     for p in v), lambda v: tuple(map(tuple, v)), "(low, high) pairs"),
}


class Section:
    """One config dict and its dotted location; checked access whose errors name the file and the key."""

    def __init__(self, path: str, d: dict, where: str = ""):
        self.path, self.d, self.where = path, d, where

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.where + '.' if self.where else ''}{key}: {msg}")

    def check(self, key: str, value: Any, kind: str) -> Any:
        """value (found at `key`) checked and converted as `kind`, a KINDS key."""
        test, convert, desc = KINDS[kind]
        if not test(value):
            raise self.fail(key, f"must be {desc}, got {value!r}{_beyond(value)}")
        return convert(value)

    def get(self, key: str, kind: str = "any", default: Any = MISSING) -> Any:
        """d[key] checked as `kind`; `default` if absent, else required."""
        if key not in self.d and default is MISSING:
            close = difflib.get_close_matches(key, [str(k) for k in self.d], n=1)
            raise self.fail(key, "missing (required)" + (f"; the file has {close[0]!r}: a typo?" if close else ""))
        return self.check(key, self.d[key], kind) if key in self.d else default

    def one_of(self, key: str, allowed: tuple, default: Any = MISSING) -> Any:
        """d[key] (a list compares as a tuple), which must be one of `allowed`."""
        v = self.get(key, "any", default)
        v = tuple(v) if isinstance(v, list) else v
        if v not in allowed or isinstance(v, bool) != isinstance(allowed[0], bool):
            raise self.fail(key, f"{v!r} is not supported by this port (supported: {', '.join(map(repr, allowed))})")
        return v

    def sub(self, key: str, default: Any = MISSING) -> "Section":
        return Section(self.path, self.get(key, "dict", default), f"{self.where + '.' if self.where else ''}{key}")

    def forbid(self, *keys: str, msg: str = "") -> None:
        """Settings that must be absent, falsy or a list/tuple of falsy values (e.g. stage_with_dcn)."""
        for key in keys:
            if self.d.get(key) and not (isinstance(self.d[key], (list, tuple)) and not any(self.d[key])):
                raise self.fail(key, msg or f"{self.d[key]!r} is not supported by this port")
