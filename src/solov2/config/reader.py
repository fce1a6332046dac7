"""Safe reader of official SOLO (mmdetection-1.x) config files: the Python subset they use is evaluated from the
AST, never executed, and mmdetection-style "a.b=value" overrides are applied to the resulting dict."""
import ast
import copy
import difflib
import operator
import os
from typing import AbstractSet, Any, Dict, Iterable, Optional

from solov2.errors import SolovError, check_file


class ConfigError(SolovError, ValueError):
    """A config file cannot be read or asks for something this port does not support."""


# ------------------------------------------------------------------------ safe evaluation (no exec)
_CALLS = ("dict", "range", "list", "tuple")
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_WHAT = {ast.Import: "import statement", ast.ImportFrom: "import statement", ast.Attribute: "attribute access",
         ast.Call: "call", ast.Lambda: "lambda", ast.JoinedStr: "f-string"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Evaluator:
    """Evaluates module-level `name = expr` statements; a name evaluates to a copy of its earlier value."""

    def __init__(self, path: str):
        self.path, self.names = path, {}

    def error(self, node: ast.AST, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}:{getattr(node, 'lineno', '?')}: {msg}")

    def refuse(self, node: ast.AST) -> ConfigError:
        src = (ast.unparse(node).splitlines() or [""])[0][:60]
        return self.error(node, f"{_WHAT.get(type(node), type(node).__name__)} '{src}' is not allowed in a config "
                                "file (only literals, earlier names, dict/range/list/tuple() and + - * / // %)")

    def run(self, tree: ast.Module) -> Dict[str, Any]:
        for stmt in tree.body:
            if isinstance(stmt, ast.Expr) and isinstance(getattr(stmt.value, "value", None), str):
                continue                                                        # docstring
            if not isinstance(stmt, ast.Assign) or not all(isinstance(t, ast.Name) for t in stmt.targets):
                raise self.refuse(stmt.value if isinstance(stmt, ast.Expr) else stmt)
            for t in stmt.targets:
                if t.id == "_base_" or t.id in _CALLS:
                    raise self.error(stmt, f"assigning to '{t.id}' is not allowed" if t.id in _CALLS else
                                     "'_base_' config inheritance is not supported; write the whole config in one file")
            try:
                value = self.eval(stmt.value)
            except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
                if isinstance(e, ConfigError):
                    raise
                raise self.error(stmt, f"cannot evaluate: {e}") from None
            self.names.update({t.id: copy.deepcopy(value) for t in stmt.targets})
        return self.names

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.names:
                raise self.error(node, f"name '{node.id}' is not defined (only names assigned earlier can be used)")
            return copy.deepcopy(self.names[node.id])
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](self.eval(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            out = {}
            for k, v in zip(node.keys, node.values):
                out.update(self.mapping(v) if k is None else {self.eval(k): self.eval(v)})
            return out
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
            return self.call(node.func.id, node)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = self.eval(node.left), self.eval(node.right)
            if (_is_num(a) and _is_num(b)) or (isinstance(node.op, ast.Add) and type(a) is type(b)
                                               and isinstance(a, (str, list, tuple))):
                return _BINOPS[type(node.op)](a, b)
            raise self.error(node, f"unsupported operands in '{ast.unparse(node)}': "
                                   f"{type(a).__name__} and {type(b).__name__}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _is_num(v := self.eval(node.operand)):
            return -v
        raise self.refuse(node)

    def mapping(self, node: ast.AST) -> dict:
        if not isinstance(v := self.eval(node), dict):
            raise self.error(node, f"'**{ast.unparse(node)}' is not a dict")
        return v

    def call(self, name: str, node: ast.Call) -> Any:
        args = [self.eval(a) for a in node.args]
        if name == "dict" and len(args) <= 1 and all(isinstance(a, dict) for a in args):
            out = dict(*args)
            for kw in node.keywords:
                out.update(self.mapping(kw.value) if kw.arg is None else {kw.arg: self.eval(kw.value)})
            return out
        if not node.keywords and name == "range" and 1 <= len(args) <= 3 and all(map(_is_int, args)):
            return range(*args)
        if not node.keywords and name in ("list", "tuple") and len(args) <= 1 \
                and all(isinstance(a, (str, list, tuple, set, dict, range)) for a in args):
            return (list if name == "list" else tuple)(*args)
        raise self.error(node, f"bad arguments in '{ast.unparse(node)[:60]}' (allowed: dict(key=..., **d), "
                               "range(ints), list(x), tuple(x))")


def load_config_dict(path) -> Dict[str, Any]:
    """Read a config file WITHOUT executing it -> {top-level name: value}, in file order.

    path: str or os.PathLike. Values are plain Python (dict, list, tuple, set, range, str, int, float, bool,
    None); every use of a name is a copy, so no two entries share mutable objects. Raises ConfigError
    "<path>:<line>: ..." for anything outside the safe subset (imports, calls other than
    dict/range/list/tuple, attribute access, lambdas, f-strings, `_base_`, ...); "<path>: no such config file".
    """
    path = os.fspath(path)
    check_file(path, "config file", ConfigError)
    try:
        with open(path, encoding="utf-8") as f:
            return _Evaluator(path).run(ast.parse(f.read(), filename=path))
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except (UnicodeDecodeError, RecursionError, MemoryError) as e:
        raise ConfigError(f"{path}: cannot read config: {type(e).__name__}") from None


def _steps_of_type(steps: list, name: str) -> list:
    """Indices of the pipeline steps (dicts) whose 'type' is `name`."""
    return [k for k, step in enumerate(steps) if isinstance(step, dict) and step.get("type") == name]


def apply_overrides(cfg_dict: Dict[str, Any], overrides: Iterable[str], source: str = "<overrides>",
                    known_keys: Optional[AbstractSet[str]] = None) -> Dict[str, Any]:
    """Return a deep copy of cfg_dict with mmdetection-style overrides applied (cfg_dict is unchanged).

    overrides: strings "dotted.key=value", e.g. "data.imgs_per_gpu=2", "data.train.ann_file=/x/y.json",
    "data.train.pipeline.Resize.img_scale=(768, 448)". value = ast.literal_eval(text), else the text itself.
    An integer component indexes a list; in a pipeline, a step may also be named by its type (`Resize`), and a
    step by position that lacks the key (`pipeline.2.img_scale` where step 2 is RandomFlip) is an error. New keys
    may be added to existing dicts; a missing top-level key becomes a new dict. A missing nested key on the way, or
    a path through anything but a dict or list, raises ConfigError "<source>: override '...': ...". With
    `known_keys` (the names the schema reads), a new key must be one of them, so a typo (`optimizer.lrr`,
    `total_epoch`) is an error naming the closest key instead of a setting nobody reads.
    """
    out = copy.deepcopy(cfg_dict)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"{source}: override {item!r}: expected 'dotted.key=value'")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = text.strip()
        node = out
        for i, part in enumerate(parts):
            last, where = i == len(parts) - 1, ".".join(parts[:i]) or "the top level"
            if isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                part = int(part)
            elif isinstance(node, list) and not last and _steps_of_type(node, part):
                found = _steps_of_type(node, part)  # a pipeline step named by its type: data.train.pipeline.Resize
                if len(found) > 1:
                    raise ConfigError(f"{source}: override {item!r}: {where} has {len(found)} {part} steps; "
                                      f"name one by its position")
                part = found[0]
            elif not isinstance(node, dict) or not (last or i == 0 or part in node):
                why = (f"has no key {part!r}" if isinstance(node, dict) else f"is a list and {part!r} is not a valid "
                       "index" if isinstance(node, list) else f"is not a dict (type {type(node).__name__})")
                raise ConfigError(f"{source}: override {item!r}: {where} {why}")
            if isinstance(node, dict) and part not in node and isinstance(node.get("type"), str) and i >= 2 \
                    and parts[i - 2] == "pipeline":  # a step's keys are fixed by its type: a new one is a wrong step
                raise ConfigError(f"{source}: override {item!r}: {where} is a {node['type']} step, which has no "
                                  f"key {part!r} (name steps by type, e.g. {'.'.join(parts[:i - 1])}.Resize."
                                  f"img_scale)")
            if isinstance(node, dict) and part not in node and known_keys is not None and part not in known_keys:
                close = difflib.get_close_matches(part, [*map(str, node), *sorted(known_keys)], n=1)
                raise ConfigError(f"{source}: override {item!r}: {where} has no key {part!r}"
                                  + (f" (did you mean {close[0]!r}?)" if close else "")
                                  + " and it is not a setting this port reads")
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    return out
