"""Reading images: one checked reader for the dataset, run.py, test.py and valuation.py."""
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from solov2.errors import SolovError, not_a_file

# In JPEG scan data every 0xFF byte is followed by 0x00 or a restart marker, so the end-of-image marker FF D9 can
# only be the real end; a file cut short lacks it near its end. Some writers append a little padding or metadata.
_JPEG_START, _JPEG_END, _JPEG_TAIL = b"\xff\xd8", b"\xff\xd9", 4096


_TRUNCATED = "truncated JPEG (no end-of-image marker; the file was cut short)"


def _truncated_jpeg(head: bytes, tail: bytes) -> bool:
    """A JPEG (starts with FF D8) whose last _JPEG_TAIL bytes hold no end-of-image marker."""
    return head[:2] == _JPEG_START and _JPEG_END not in tail[-_JPEG_TAIL:]


def _not_a_file(path: Path) -> Optional[str]:
    """Why `path` is not a non-empty regular file to read, or None."""
    problem = not_a_file(path, "image file")
    if problem or path.stat().st_size:
        return problem
    return "empty file (0 bytes)"


def file_problem(path) -> Optional[str]:
    """Why `path` cannot be a good image, from its first and last bytes only (cheap: no decoding), or None."""
    path = Path(path)
    problem = _not_a_file(path)
    if problem:
        return problem
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(max(0, path.stat().st_size - _JPEG_TAIL))
            tail = f.read()
    except OSError as e:
        return f"cannot read the image ({e.strerror})"
    return _TRUNCATED if _truncated_jpeg(head, tail) else None


def read_image(path, error=SolovError) -> np.ndarray:
    """cv2-decoded BGR uint8 (H, W, 3). A missing, undecodable or truncated file raises `error` naming it.

    libjpeg decodes a truncated JPEG without failing ("Premature end of JPEG file" on stderr, the rest of the
    picture grey), so a JPEG without its end-of-image marker is refused here instead of trained or scored on.
    The file is read once.
    """
    path = Path(path)
    try:
        problem = _not_a_file(path)
        data = b"" if problem else path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read the image ({e.strerror})") from None
    if problem:
        raise error(f"{path}: {problem}")
    if _truncated_jpeg(data, data):
        raise error(f"{path}: {_TRUNCATED}")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:   # e.g. a header that promises more pixels than OpenCV allows
        img = None
    if img is None:
        raise error(f"{path}: cannot decode the image (not an image, or corrupt)")
    return img
