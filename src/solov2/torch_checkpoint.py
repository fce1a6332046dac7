"""Reading a PyTorch .pth without running anything from it: tensors only, every other object inert.

Used by the converter (`solov2.convert`); torch is imported only here, and only when a file is read.
"""
import os
import zipfile
from typing import Dict, Tuple

import numpy as np

from solov2.errors import SolovError, check_file, first_line, listing


class ConvertError(SolovError):
    """A checkpoint that cannot be converted; the message names the file and the offending keys."""


def _import_torch():
    try:
        import torch  # optional dependency: only the converter reads .pth files
    except ImportError as exc:
        raise ConvertError("reading .pth files needs PyTorch: pip install 'torch==2.13.0'") from exc
    return torch


class _Inert:
    """Stands for every object of a checkpoint that is not a tensor, a plain container or a number (mmengine's
    HistoryBuffer, torch's TorchVersion, numpy arrays in a message_hub, or a malicious __reduce__ payload).
    Its arguments and state are dropped: nothing from the file is ever called."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _restricted_pickle(torch):
    """A pickle module for torch.load whose Unpickler resolves only torch's weights-only globals (tensor and
    storage rebuilding, OrderedDict, ...); any other global becomes an _Inert placeholder class.

    weights_only=True alone refuses the mmdetection 3.x / mmengine files the README supports (their `meta` and
    `message_hub` hold such objects); this reads them, and still runs no code from the file.
    """
    import pickle
    import types
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = dict(_get_allowed_globals())

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            found = allowed.get(f"{module}.{name}")
            return found if found is not None else type(name, (_Inert,), {"__module__": f"inert.{module}"})

    mod = types.ModuleType("solov2_restricted_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kwargs: Unpickler(f, **kwargs).load()  # torch's legacy (non-zip) reader calls it
    mod.UnpicklingError = pickle.UnpicklingError
    return mod


def _refuse_torchscript(path: str) -> None:
    """ConvertError for a TorchScript archive (torch.jit.save): torch.load hands any zip holding a `constants.pkl`
    record to torch.jit.load, which runs the archive's code, whatever pickle module was given. A torch.save
    checkpoint holds data.pkl, data/N, version and byteorder records only."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception as exc:   # a damaged archive raises more than BadZipFile (NotImplementedError, ...)
        raise ConvertError(f"{path}: not a readable PyTorch checkpoint (zip archive: {first_line(exc)})") from None
    if any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in names):
        raise ConvertError(f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint; it is not loaded, "
                           "since loading one runs its code: save the state dict with torch.save")


def load_torch_checkpoint(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """Read a .pth safely (tensors only, see `_restricted_pickle`) and return its state dict as numpy arrays.

    Returns (state, info): state maps key (``module.`` stripped) -> np.ndarray; floating tensors become
    float32 (fp16/bf16/fp64 are cast and counted in info['cast']), integer buffers keep their dtype.
    info: 'container' ('state_dict' | 'model' | 'bare'), 'ignored' (other top-level entries), 'classes'
    (list of str from mmdet ``meta['CLASSES']`` or mmdet3 ``meta['dataset_meta']['classes']``, else None).
    """
    check_file(path, "file", ConvertError)
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (>= 1.6) or a protocol-2 pickle (legacy); anything else is not a .pth.
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):
        raise ConvertError(f"{path}: not a PyTorch checkpoint (unrecognised file header {head!r})")
    if head == b"PK\x03\x04":
        _refuse_torchscript(path)
    if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        # torch then refuses any pickle module: the file would be blamed for the environment
        raise ConvertError("TORCH_FORCE_WEIGHTS_ONLY_LOAD is set: torch then refuses the converter's restricted "
                           "reader (which also reads mmdetection 3.x files, running no code from them); unset it")
    torch = _import_torch()
    pickle_module = _restricted_pickle(torch)   # outside the try: a failure here is not the file's
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)
    except Exception as exc:  # corrupt zip, truncated file, ...: any reader failure means "not a checkpoint"
        reason = first_line(exc.__context__ or exc)  # torch wraps the real cause in a long hint
        raise ConvertError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {reason})") from None
    if not isinstance(ckpt, dict):
        raise ConvertError(f"{path}: not a checkpoint dict (got {type(ckpt).__name__})")
    if isinstance(ckpt.get("state_dict"), dict):
        container, sd = "state_dict", ckpt["state_dict"]
    elif isinstance(ckpt.get("model"), dict):
        container, sd = "model", ckpt["model"]
    else:
        container, sd = "bare", ckpt
    bad = [k for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad or not sd:
        what = f"non-tensor entries: {listing(map(str, bad))}" if bad else "it is empty"
        raise ConvertError(f"{path}: not a state dict of tensors ({what}); expected a bare state dict or a "
                           "dict with a 'state_dict' or 'model' entry")
    state, cast = {}, {}
    for key, t in sd.items():
        if t.layout != torch.strided or t.is_quantized or t.is_meta:   # numpy() refuses them (a TypeError traceback)
            kind = "quantized" if t.is_quantized else "meta (no data)" if t.is_meta else str(t.layout)
            raise ConvertError(f"{path}: key {key!r} is a {kind} tensor; the converter reads dense float weights")
        key = key[len("module."):] if key.startswith("module.") else key  # DataParallel / DDP wrapper
        if t.is_floating_point() and t.dtype != torch.float32:
            dtype = str(t.dtype).replace("torch.", "")
            cast[dtype] = cast.get(dtype, 0) + 1
            t = t.float()  # the port is float32; fp16/bf16 -> fp32 is exact (and numpy has no bf16)
        if key in state:
            raise ConvertError(f"{path}: key {key!r} occurs with and without the 'module.' prefix")
        state[key] = np.ascontiguousarray(t.detach().cpu().numpy())
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    dmeta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    classes = meta.get("CLASSES", dmeta.get("classes"))
    if not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        classes = None
    ignored = sorted(str(k) for k in ckpt if k != container) if container != "bare" else []
    return state, {"container": container, "ignored": ignored, "cast": cast,
                   "classes": list(classes) if classes else None}
