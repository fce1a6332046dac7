"""Reading images: one checked reader for the dataset, run.py, test.py and valuation.py."""
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from solov2.errors import SolovError, not_a_file

# In JPEG scan data every 0xFF byte is followed by 0x00 or a restart marker, so the end-of-image marker FF D9 can
# only be the real end; a file cut short lacks it. Usually it is in the last bytes (a few writers append a little
# padding); when it is not, the segments and scans are walked (`_jpeg_reaches_its_end`), because a phone's motion
# photo (Google MVIMG, Samsung) appends a whole video after a complete JPEG.
_JPEG_START, _JPEG_END, _JPEG_TAIL = b"\xff\xd8", b"\xff\xd9", 4096
_STANDALONE = {0x01, *range(0xD0, 0xD8)}   # TEM and RST0-7: markers without a length


_TRUNCATED = "truncated JPEG (no end-of-image marker; the file was cut short)"


def _jpeg_reaches_its_end(data: bytes) -> bool:
    """True if walking the JPEG `data` (marker segments by their lengths; scan data up to the first marker that is
    not a stuffed FF 00, a restart marker or fill) reaches its end-of-image marker, whatever follows it; False if the
    data ends first or is not laid out as a JPEG."""
    pos, n = 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:   # fill byte
            pos += 1
        elif marker == 0xD9:
            return True
        elif marker in _STANDALONE:
            pos += 2
        elif pos + 4 > n:
            return False
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker == 0xDA:   # start of scan: entropy-coded data up to the next real marker
                while True:
                    pos = data.find(b"\xff", pos)
                    if pos < 0 or pos + 1 >= n:
                        return False
                    following = data[pos + 1]
                    if following == 0xFF:   # fill
                        pos += 1
                    elif following == 0x00 or following in _STANDALONE:   # stuffed byte, restart marker
                        pos += 2
                    else:
                        break
    return False


def _truncated_jpeg(head: bytes, tail: bytes, whole: Callable[[], bytes]) -> bool:
    """A JPEG (starts with FF D8) whose last _JPEG_TAIL bytes hold no end-of-image marker and whose walk does not
    reach one; whole() gives the whole file, needed only in that rare case."""
    if head[:2] != _JPEG_START or _JPEG_END in tail[-_JPEG_TAIL:]:
        return False
    return not _jpeg_reaches_its_end(whole())


def _not_a_file(path: Path) -> Optional[str]:
    """Why `path` is not a non-empty regular file to read, or None."""
    problem = not_a_file(path, "image file")
    if problem or path.stat().st_size:
        return problem
    return "empty file (0 bytes)"


def file_problem(path) -> Optional[str]:
    """Why `path` cannot be a good image, from its first and last bytes (cheap: no decoding; the whole file only for
    a JPEG whose end-of-image marker is not near its end), or None."""
    path = Path(path)
    problem = _not_a_file(path)
    if problem:
        return problem
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(max(0, path.stat().st_size - _JPEG_TAIL))
            tail = f.read()
        return _TRUNCATED if _truncated_jpeg(head, tail, path.read_bytes) else None
    except OSError as e:
        return f"cannot read the image ({e.strerror})"


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
    if _truncated_jpeg(data, data, lambda: data):
        raise error(f"{path}: {_TRUNCATED}")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:   # e.g. a header that promises more pixels than OpenCV allows
        img = None
    if img is None:
        raise error(f"{path}: cannot decode the image (not an image, or corrupt)")
    return img
