"""Checked access to one section of a config file: typed values whose errors name the file and the dotted key."""
import difflib
from typing import Any

from solov2.config.reader import ConfigError, _is_int, _is_num

MISSING = object()
_SEQ = (list, tuple)
KINDS = {  # kind -> (test, convert, description)
    "any": (lambda v: True, lambda v: v, ""), "int": (_is_int, int, "an integer"),
    "num": (_is_num, float, "a number"), "bool": (lambda v: isinstance(v, (bool, int)), bool, "a boolean"),
    "str": (lambda v: isinstance(v, str), str, "a string"), "dict": (lambda v: isinstance(v, dict), dict, "a dict"),
    "str?": (lambda v: v is None or isinstance(v, str), lambda v: v, "a string or None"),
    "int?": (lambda v: v is None or _is_int(v), lambda v: v if v is None else int(v), "an integer or None"),
    "names": (lambda v: isinstance(v, _SEQ) and all(isinstance(x, str) for x in v), tuple, "a list of strings"),
    "ints": (lambda v: isinstance(v, _SEQ) and all(map(_is_int, v)), tuple, "a list of integers"),
    "rgb": (lambda v: isinstance(v, _SEQ) and len(v) == 3 and all(map(_is_num, v)), lambda v: tuple(map(float, v)),
            "a list of 3 numbers"),
    "scale": (lambda v: isinstance(v, tuple) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v), tuple,
              "a (long, short) tuple of positive integers"),
    # ranges: a value outside them is a typo or a silent no-op (total_epochs=0 trains nothing), never a setting
    "int>=1": (lambda v: _is_int(v) and v >= 1, int, "an integer >= 1"),
    "int>=0": (lambda v: _is_int(v) and v >= 0, int, "an integer >= 0"),
    "num>0": (lambda v: _is_num(v) and v > 0, float, "a number > 0"),
    "num>=0": (lambda v: _is_num(v) and v >= 0, float, "a number >= 0"),
    "0..1": (lambda v: _is_num(v) and 0 <= v <= 1, float, "a number in [0, 1]"),
    "ints>=1": (lambda v: isinstance(v, _SEQ) and all(_is_int(x) and x >= 1 for x in v), tuple,
                "a list of integers >= 1"),
    "ranges": (lambda v: isinstance(v, _SEQ) and all(isinstance(p, _SEQ) and len(p) == 2 and all(map(_is_int, p))
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
            raise self.fail(key, f"must be {desc}, got {value!r}")
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
