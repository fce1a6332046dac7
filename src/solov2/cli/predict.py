"""`test.py` (one image -> picture) and `run.py` (folder / image / video -> pictures + results.json).

    python test.py CONFIG CHECKPOINT --dataroot photo.jpg --out photo_result.jpg
    python run.py CONFIG CHECKPOINT INPUT --out OUTDIR
    python run.py --model solov2.onnx INPUT --out OUTDIR            (an exported network, export.py)
(CONFIG and CHECKPOINT may also be given as --config / --checkpoint, as the older MindSpore port's test.py.)
"""
import argparse
import glob
import sys
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from solov2.cli.common import (add_config_flags, add_force_flag, add_model_flag, add_runtime_flags,
                               add_static_shapes_flag, check_flag_range, check_model_flags, cli_main,
                               config_and_checkpoint, open_predictor, runtime_flags)
from solov2.config import load_config
from solov2.data.images import file_problem, read_image
from solov2.engine.runtime import RuntimeFlags
from solov2.errors import SolovError
from solov2.evaluation.results import instances_to_records
from solov2.files import already_exists, check_not_an_input, check_writable, write_image, write_json_atomic
from solov2.overlap import overlapped, predict_timed
from solov2.visualize import draw_instances

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".webm", ".m4v"}


def predict_image(config: Optional[str], checkpoint: Optional[str], image: str, out: Optional[str], *,
                  model: Optional[str] = None, runtime: str = "onnxruntime", score_thr: float = 0.3, force: bool = False,
                  overrides=(), static_shapes: bool = False, context: RuntimeFlags) -> Path:
    """One image -> a picture with masks, class names and scores. Returns the picture's path.
    model: an exported network (then config is optional and checkpoint None) run by `runtime`, see
    `open_predictor`; context: the MindSpore context, started once the inputs have been checked."""
    img = read_image(image)
    out_path = Path(out) if out else Path(f"{Path(image).stem}_result.jpg")
    check_not_an_input([out_path], {"image": image, "CONFIG": config, "CHECKPOINT": checkpoint, "--model": model})
    check_writable(out_path, force)
    if not cv2.haveImageWriter(str(out_path)):   # found now, not after the model has run
        raise SolovError(f"{out_path}: --out must end in an image extension OpenCV writes (.jpg, .png, ...)")
    cfg = load_config(config, overrides) if config else None
    pred = open_predictor(cfg, checkpoint, model, overrides, static_shapes, runtime, context=context)
    try:
        pred.check_size(*img.shape[:2])
    except SolovError as e:   # too thin for the test scale, larger than a static export: name the image
        raise SolovError(f"{image}: {e}") from None
    res, t = predict_timed(pred, img)
    write_image(out_path, draw_instances(img, res["masks"], res["labels"], res["scores"], pred.class_names,
                                         score_thr=score_thr))
    shown = int((res["scores"] >= score_thr).sum())
    print(f"{image}: {len(res['scores'])} instances ({shown} with score >= {score_thr} drawn) -> {out_path}  "
          f"[pre {t['preprocess']:.2f}s, net {t['network']:.2f}s, post {t['postprocess']:.2f}s]")
    return out_path


def picture_names(files: List[Path]) -> Dict[str, str]:
    """Input file name -> output picture name, one picture per input: `<stem>.jpg`, or `<stem>_<ext>.jpg` where two
    inputs share a stem (a.jpg and a.png must not both draw into a.jpg); a name still taken (a.JPG beside a.jpg, or
    a_jpg.png beside a.jpg and a.png) gets `_2`, `_3`, ... Compared without case, as a case-insensitive file system
    (macOS, Windows) would."""
    stems = Counter(p.stem.lower() for p in files)
    names: Dict[str, str] = {}
    taken = set()
    for p in files:
        base = p.stem if stems[p.stem.lower()] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        name, n = f"{base}.jpg", 1
        while name.lower() in taken:
            n += 1
            name = f"{base}_{n}.jpg"
        taken.add(name.lower())
        names[p.name] = name
    return names


def check_pictures(out: Path, files: List[Path], pictures: Dict[str, str], video: Optional[Path],
                   force: bool) -> None:
    """Before any work: no output picture may be an input (never, even with --force), and none may exist
    without --force. Video frames are `<video stem>_NNNNNN.jpg`."""
    planned = [out / name for name in pictures.values()]
    check_not_an_input(planned, {"image": files})
    existing = [p for p in planned if p.exists()]
    if video is not None and out.is_dir():
        existing = sorted(out.glob(f"{glob.escape(video.stem)}_" + "[0-9]" * 6 + ".jpg"))   # clip[1].mp4 too
    if existing and not force:
        raise already_exists(existing[0], f" ({len(existing)} output picture(s) would be replaced)")


def compile_note(pred) -> str:
    """'; GRAPH mode: N network graph(s) compiled' (nothing in PYNATIVE mode), for the closing line of a run."""
    n = pred.compiled_graphs
    return f"; GRAPH mode: {n} network graph(s) compiled" if n else ""


def list_inputs(inp: Path) -> Tuple[str, List[Path]]:
    """('images', files) for a folder or one image, ('video', [file]) for a video; SolovError otherwise."""
    if inp.is_dir():
        files = sorted(p for p in inp.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise SolovError(f"{inp}: folder contains no images ({', '.join(sorted(IMAGE_EXTS))})")
        return "images", files
    if not inp.exists():
        raise SolovError(f"{inp}: no such file or folder")
    if inp.suffix.lower() in VIDEO_EXTS:
        return "video", [inp]
    if inp.suffix.lower() in IMAGE_EXTS:
        return "images", [inp]
    raise SolovError(f"{inp}: not an image, a video ({', '.join(sorted(VIDEO_EXTS))}) or a folder")


def probe_video(path: Path) -> Tuple[Optional[int], np.ndarray]:
    """(the frame count `path`'s header announces or None, its first frame BGR uint8 (H, W, 3)). SolovError if
    OpenCV cannot open it or read its first frame: checked before the model loads, so a bad video costs seconds,
    not a model load."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise SolovError(f"{path}: cannot open the video")
        ok, first = cap.read()
        if not ok:
            raise SolovError(f"{path}: the video has no readable frames")
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None, first
    finally:
        cap.release()


def video_frames(path: Path) -> Iterator[Tuple[str, np.ndarray]]:
    """(picture name `<stem>_NNNNNN.jpg`, frame BGR uint8 (H, W, 3)) for each frame of the video at `path`."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SolovError(f"{path}: cannot open the video")
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield f"{path.stem}_{i:06d}.jpg", frame
            i += 1
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if i == 0:
        raise SolovError(f"{path}: the video has no readable frames")
    if 0 < i < expected:
        print(f"warning: {path}: the file ended early: read {i} of the {expected} frames its header announces",
              file=sys.stderr)


def predict_many(config: Optional[str], checkpoint: Optional[str], inp: str, outdir: str, *,
                 model: Optional[str] = None, runtime: str = "onnxruntime", score_thr: float = 0.3, force: bool = False,
                 skip_bad: bool = False, overrides=(), static_shapes: bool = False,
                 context: RuntimeFlags) -> Path:
    """Folder / image / video -> OUTDIR/<name>.jpg per image or frame and OUTDIR/results.json.

    results.json: a list of instances {file_name, label, category_name, score, bbox [x, y, w, h],
    segmentation (COCO RLE)}, written atomically at the end. model: an exported network (see `open_predictor`);
    context: the MindSpore context, started once the inputs have been checked.
    """
    kind, files = list_inputs(Path(inp))
    out = Path(outdir)
    results_path = out / "results.json"
    if out.exists() and not out.is_dir():
        raise SolovError(f"{out}: --out exists and is not a folder")
    if results_path.exists() and not force:
        raise already_exists(results_path)
    if kind == "images":  # a bad file found now costs nothing; found at image 900 it costs hours
        files = keep_usable(inp, files, file_problem, skip_bad=skip_bad)
    total, first = probe_video(files[0]) if kind == "video" else (None, None)   # images are counted after --skip-bad
    pictures = picture_names(files) if kind == "images" else {}
    check_pictures(out, files, pictures, video=files[0] if kind == "video" else None, force=force)
    check_not_an_input([results_path], {"CONFIG": config, "CHECKPOINT": checkpoint, "--model": model})
    cfg = load_config(config, overrides) if config else None
    pred = open_predictor(cfg, checkpoint, model, overrides, static_shapes, runtime, context=context)
    if kind == "images":
        files = keep_usable(inp, files, partial(prepare_problem, pred=pred), skip_bad=skip_bad)
    elif problem := prepare_problem(files[0], pred, first):   # e.g. frames larger than a static export
        raise SolovError(f"{files[0]}: {problem}")
    out.mkdir(parents=True, exist_ok=True)
    if kind == "video":
        items = video_frames(files[0])
    else:
        total = len(files)
        items = ((p.name, p) for p in files)
    records, skipped = [], []

    def prepare(item):
        name, src = item
        try:
            img = read_image(src) if isinstance(src, Path) else src
        except SolovError as e:
            if not skip_bad:
                raise SolovError(f"{e} (use --skip-bad to skip unreadable images)") from None
            return e
        return img, *pred.prepare(img)

    def run(prepared):
        return None if isinstance(prepared, SolovError) else pred.network(prepared[1])

    def finish(item, prepared, outputs):
        if isinstance(prepared, SolovError):
            return prepared
        name, (img, _, meta) = item[0], prepared
        res = pred.finish(outputs, meta)
        write_image(out / pictures.get(name, name),  # video frames are named as their pictures
                    draw_instances(img, res["masks"], res["labels"], res["scores"], pred.class_names,
                                   score_thr=score_thr))
        return instances_to_records(name, res["masks"], res["labels"], res["scores"], pred.class_names)

    n = 0
    bar = tqdm(total=total, unit="img", desc="SOLOv2", dynamic_ncols=True)
    try:
        for done in overlapped(items, prepare, run, finish):
            bar.update(1)
            if isinstance(done, SolovError):
                tqdm.write(f"warning: skipped {done}")
                skipped.append(done)
                continue
            records += done
            n += 1
    except BaseException:   # a bad file found late, a full disk, Ctrl-C: keep what is done
        bar.close()
        save_partial_results(results_path, records, n, total)
        raise
    bar.close()
    write_json_atomic(results_path, records)
    print(f"{n} image(s), {len(records)} instances -> {out}/ (pictures) and {results_path}"
          + (f"; {len(skipped)} unreadable image(s) skipped" if skipped else "") + compile_note(pred))
    return results_path


def keep_usable(source: str, files: List[Path], problem_of: Callable[[Path], Optional[str]], *,
                skip_bad: bool) -> List[Path]:
    """The files whose problem_of(file) is None. Without skip_bad the first other one is an error naming it; with
    it each is skipped with a warning naming it (`bad_file`). No file left: an error naming `source`."""
    good = [p for p in files if not bad_file(p, problem_of(p), skip_bad)]
    if not good:
        raise SolovError(f"{source}: none of its images is usable (see the warnings)")
    return good


def prepare_problem(path: Path, pred, img: Optional[np.ndarray] = None) -> Optional[str]:
    """Why `pred` (a Predictor or ExportedPredictor; its `prepare` takes BGR uint8 (H, W, 3)) cannot run on the
    image `path` (unreadable, undecodable, too thin for the test scale, larger than a static export), found by
    decoding and preparing it once before the model runs; or None. img: the image already decoded (a video's
    first frame; its frames share one size), else read from `path`."""
    try:
        pred.prepare(read_image(path) if img is None else img)
    except SolovError as e:   # read_image names the file; bad_file names it again
        text = str(e)
        return text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text
    return None


def bad_file(path: Path, problem: Optional[str], skip_bad: bool) -> bool:
    """True if `problem` (None: none) makes `path` an input to skip, with a warning naming it (skip_bad); without
    skip_bad a problem is an error naming the file."""
    if not problem:
        return False
    if not skip_bad:
        raise SolovError(f"{path}: {problem} (use --skip-bad to skip unusable images)")
    print(f"warning: skipped {path}: {problem}", file=sys.stderr)
    return True


def save_partial_results(results_path: Path, records: list, done: int, total: Optional[int]) -> None:
    """A run stopped midway: write the results of the images already done (atomically) and say how many."""
    if not done:
        return
    try:
        write_json_atomic(results_path, records)
        print(f"stopped after {done} of {total or '?'} image(s): their {len(records)} instance(s) are in "
              f"{results_path}", file=sys.stderr)
    except (OSError, SolovError) as e:   # e.g. the disk that stopped the run is still full
        print(f"stopped after {done} of {total or '?'} image(s); their results could not be saved either "
              f"({e})", file=sys.stderr)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--score_thr", type=float, default=0.3, help="draw instances with at least this score")
    add_runtime_flags(p)
    add_static_shapes_flag(p)
    add_model_flag(p)


def model_sources(p: argparse.ArgumentParser, a: argparse.Namespace):
    """(config, checkpoint, runtime) of the flags: both needed, or --model with an optional CONFIG and the runtime of
    an .onnx (`check_model_flags`)."""
    config, checkpoint = config_and_checkpoint(p, a, need=() if a.model else ("config", "checkpoint"))
    return config, checkpoint, check_model_flags(a, checkpoint)


def test_main(argv=None) -> None:
    """test.py: CONFIG CHECKPOINT --dataroot IMAGE [--out PICTURE] (or --model FILE [CONFIG] ...)."""
    def body():
        p = argparse.ArgumentParser(description="One image -> a picture of the SOLOv2 instances.")
        add_config_flags(p)
        p.add_argument("--dataroot", required=True, help="input image")
        p.add_argument("--out", default=None, help="output picture (default: <image name>_result.jpg)")
        _common(p)
        add_force_flag(p, "--out")
        a = p.parse_intermixed_args(argv)   # positionals may stand between flags
        config, checkpoint, runtime = model_sources(p, a)
        check_flag_range("--score_thr", a.score_thr, 0, 1)
        predict_image(config, checkpoint, a.dataroot, a.out, model=a.model, runtime=runtime, score_thr=a.score_thr,
                      force=a.force, overrides=a.cfg_options, static_shapes=a.static_shapes,
                      context=runtime_flags(a))
    cli_main(body)


def run_main(argv=None) -> None:
    """run.py: CONFIG CHECKPOINT INPUT --out OUTDIR (or --model FILE [CONFIG] INPUT ...)."""
    def body():
        p = argparse.ArgumentParser(description="A folder of images, one image or a video -> pictures + COCO-style "
                                                "results.json.")
        add_config_flags(p)
        p.add_argument("input", help="folder of images, an image, or a video file")
        p.add_argument("--out", required=True, help="output folder (pictures + results.json)")
        _common(p)
        add_force_flag(p, "OUTDIR/results.json and the pictures")
        p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
        a = p.parse_intermixed_args(argv)   # e.g. run.py CONFIG CHECKPOINT --out OUT INPUT
        config, checkpoint, runtime = model_sources(p, a)
        check_flag_range("--score_thr", a.score_thr, 0, 1)
        predict_many(config, checkpoint, a.input, a.out, model=a.model, runtime=runtime, score_thr=a.score_thr,
                     force=a.force, skip_bad=a.skip_bad, overrides=a.cfg_options, static_shapes=a.static_shapes,
                     context=runtime_flags(a))
    cli_main(body)
