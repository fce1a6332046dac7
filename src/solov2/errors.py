"""The one exception type for problems with the user's input (files, options, data), and a JSON reader using it."""
import json
import os


class SolovError(Exception):
    """Bad input. The command-line tools print it as one line `error: <message>` and exit with code 2."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can span many lines), else its type name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_json(path, what: str, error=SolovError):
    """Parse a JSON file; a missing, unreadable or malformed file raises `error` "<path>: <problem>" (what: e.g.
    'annotation file')."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{path}: no such {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read the {what} ({e})") from None
