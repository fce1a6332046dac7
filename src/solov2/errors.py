"""The one exception type for problems with the user's input (files, options, data), how any failure reads as one
line, and a JSON reader using it."""
import json
import os
from typing import Iterable, Optional


class SolovError(Exception):
    """Bad input. The command-line tools print it as one line `error: <message>` and exit with code 2."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can span many lines), else its type name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def listing(names: Iterable[str], limit: int = 5) -> str:
    """'a, b, c (+7 more)' for error messages: the first `limit` names, then how many more."""
    names = list(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def not_a_file(path, what: str) -> Optional[str]:
    """Why `path` cannot be read as a `what` (e.g. 'config file'), or None if it is a regular file. FIFOs and
    devices are refused without being opened: reading one can block forever."""
    if os.path.islink(path) and not os.path.exists(path):
        return "broken or looping symbolic link"
    if not os.path.exists(path):
        return f"no such {what}"
    if not os.path.isfile(path):
        return "not a regular file (a folder, FIFO or device)"
    return None


def check_file(path, what: str, error=SolovError, hint: str = "") -> None:
    """Raise `error` "<path>: <problem><hint>" unless `path` is a regular file (see `not_a_file`)."""
    problem = not_a_file(path, what)
    if problem:
        raise error(f"{os.fspath(path)}: {problem}{hint}")


def read_json(path, what: str, error=SolovError):
    """Parse a JSON file; a missing, unreadable or malformed file raises `error` "<path>: <problem>" (what: e.g.
    'annotation file')."""
    path = os.fspath(path)
    check_file(path, what, error)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read the {what} ({e})") from None


def failure_line(e: BaseException) -> str:
    """One line for an expected failure: our SolovError as is; an OSError with its file and the system's reason
    (`<file>: No space left on device`); a library error (MindSpore's ValueError/RuntimeError, cv2.error) by its
    first line."""
    if isinstance(e, SolovError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        where = e.filename if e.filename is not None else "I/O"
        return f"{where}: {e.strerror}" + (f" (-> {e.filename2})" if e.filename2 else "")
    return f"{type(e).__name__}: {first_line(e)}"
