"""Bad input through the real CLIs: exit 2, exactly one `error:` line naming the file or option, no traceback,
every pre-existing file unchanged and no stray temporary file. One row per case."""
import json
import shutil

import pytest
from conftest import SHARED, TRASHCAN_CFG, assert_bad_input, cli, cli_probing_imports, small_tmpfs

VAL_IMG = SHARED / "datasets" / "trashcan_mini" / "val" / "vid_000102_frame0000035.jpg"
MINI = SHARED / "datasets" / "trashcan_mini"
VAL_ANN = MINI / "annotations" / "instances_val_trashcan.json"
TRAIN_DATA = [f"data.train.ann_file={MINI / 'annotations' / 'instances_train_trashcan.json'}",
              f"data.train.img_prefix={MINI / 'train'}"]


def photos(d):
    """A folder with a.jpg and a.png (same stem) and b.jpg."""
    d.mkdir()
    shutil.copy(VAL_IMG, d / "a.jpg")
    shutil.copy(VAL_IMG, d / "b.jpg")
    import cv2
    cv2.imwrite(str(d / "a.png"), cv2.imread(str(VAL_IMG)))
    return d


def out_with_earlier_picture(t):
    out = t / "out"
    out.mkdir()
    (out / "b.jpg").write_bytes(b"a picture of mine")
    return out


def truncated_jpeg_folder(t):
    d = photos(t / "photos")
    data = (d / "b.jpg").read_bytes()
    (d / "b.jpg").write_bytes(data[: len(data) // 2])  # cv2 decodes it anyway, the rest grey
    return d


def two_point_polygon_ann(t):
    gt = json.loads((MINI / "annotations" / "instances_train_trashcan.json").read_text())
    gt["annotations"][0]["segmentation"] = [gt["annotations"][0]["segmentation"][0][:4]]
    path = t / "ann.json"
    path.write_text(json.dumps(gt))
    return path, gt["annotations"][0]["id"]


def not_a_video_and_not_a_checkpoint(t):
    """[bad.ckpt, clip.mp4], neither readable: the error must name the video, found before the model loads."""
    (t / "clip.mp4").write_bytes(b"not a video " * 100)
    (t / "bad.ckpt").write_bytes(b"not a checkpoint " * 100)
    return [t / "bad.ckpt", t / "clip.mp4"]


# (id, argv from (tmp_path, checkpoint), texts the one error line must contain)
CASES = [
    ("run.py --out is the input folder",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, photos(t / "photos"), "--out", t / "photos", "--force"],
     ["b.jpg", "is the input image", "even with --force"]),
    ("run.py --out holds an earlier picture",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, photos(t / "photos"), "--out", out_with_earlier_picture(t)],
     ["b.jpg", "already exists", "--force"]),
    ("run.py --out is a file",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, photos(t / "photos"), "--out", t / "photos" / "b.jpg"],
     ["b.jpg", "not a folder"]),
    ("run.py --out under a file",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, photos(t / "photos"), "--out", t / "photos" / "b.jpg" / "new"],
     ["b.jpg", "Not a directory"]),
    ("test.py --out is the input image, even with --force",
     lambda t, c: ["test.py", "--config", TRASHCAN_CFG, "--checkpoint", c, "--dataroot",
                   photos(t / "photos") / "a.jpg", "--out", t / "photos" / "a.jpg", "--force"],
     ["a.jpg", "is the input image"]),
    ("train.py --work-dir is an existing file",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", photos(t / "photos") / "b.jpg",
                   "--cfg-options", *TRAIN_DATA],
     ["b.jpg", "--work-dir", "not a folder"]),
    ("a typo in --cfg-options",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "work", "--cfg-options", *TRAIN_DATA,
                   "optimizer.lrr=0.5", "total_epochs=3"],
     ["optimizer.lrr=0.5", "no key 'lrr'", "did you mean 'lr'"]),
    ("a misspelt top-level key in --cfg-options",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "work", "--cfg-options", *TRAIN_DATA,
                   "total_epoch=3"],
     ["total_epoch=3", "did you mean 'total_epochs'"]),
    ("data.imgs_per_gpu=0",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "work", "--cfg-options", *TRAIN_DATA,
                   "data.imgs_per_gpu=0"],
     ["data.imgs_per_gpu", "must be an integer >= 1, got 0"]),
    ("valuation.py --out in a missing folder, before the model runs",
     lambda t, c: ["valuation.py", "--config", TRASHCAN_CFG, "--checkpoint", c, "--ann", VAL_ANN,
                   "--img-prefix", MINI / "val", "--out", t / "nowhere" / "r.json"],
     ["nowhere", "output folder does not exist"]),
    ("run.py on a truncated JPEG",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, truncated_jpeg_folder(t), "--out", t / "out"],
     ["b.jpg", "truncated JPEG", "--skip-bad"]),
    ("run.py on a video OpenCV cannot open, before the model loads",
     lambda t, c: ["run.py", TRASHCAN_CFG, *not_a_video_and_not_a_checkpoint(t), "--out", t / "out"],
     ["clip.mp4", "cannot open the video"]),
    ("train.py with a 2-point polygon",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "work", "--cfg-options",
                   f"data.train.ann_file={two_point_polygon_ann(t)[0]}", f"data.train.img_prefix={MINI / 'train'}"],
     ["ann.json", "polygon has 4 coordinates"]),
    ("test.py --out in a format OpenCV cannot write, before the model runs",
     lambda t, c: ["test.py", "--config", TRASHCAN_CFG, "--checkpoint", c, "--dataroot",
                   photos(t / "photos") / "a.jpg", "--out", t / "pic.gif"],
     ["pic.gif", "image extension"]),
    ("--device_target GPU on a CPU-only MindSpore",
     lambda t, c: ["test.py", "--config", TRASHCAN_CFG, "--checkpoint", c, "--dataroot",
                   photos(t / "photos") / "a.jpg", "--out", t / "pic.jpg", "--device_target", "GPU"],
     ["--device_target GPU", "not usable"]),
]


@pytest.mark.parametrize("args, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_nothing_is_lost(tmp_path, ckpt, args, fragments):
    assert_bad_input(args(tmp_path, ckpt), tmp_path, fragments)


def test_same_stem_inputs_get_distinct_pictures(tmp_path, ckpt):
    src = photos(tmp_path / "photos")
    r = cli("run.py", TRASHCAN_CFG, ckpt, src, "--out", tmp_path / "out", "--mode", "pynative")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_jpg.jpg", "a_png.jpg", "b.jpg",
                                                                    "results.json"]


@pytest.mark.parametrize("expected", [
    {"a.jpg": "a_jpg.jpg", "a.png": "a_png.jpg", "b.jpg": "b.jpg"},
    {"a.JPG": "a_jpg.jpg", "a.jpg": "a_jpg_2.jpg"},
    {"a.jpg": "a_jpg.jpg", "a.png": "a_png.jpg", "a_jpg.png": "a_jpg_2.jpg"},
    {"A.jpg": "A_jpg.jpg", "a.png": "a_png.jpg"},                  # one picture on a case-insensitive file system
])
def test_every_input_gets_its_own_picture(expected):
    from pathlib import Path

    from solov2.cli.predict import picture_names
    assert picture_names(sorted(Path(n) for n in expected)) == expected


def test_read_only_output_folder_is_refused_before_the_model_runs(tmp_path, ckpt):
    """valuation.py --out on a read-only file system (a read-only tmpfs; root ignores permission bits)."""
    with small_tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        r = cli("valuation.py", "--config", TRASHCAN_CFG, "--checkpoint", ckpt, "--ann", VAL_ANN,
                "--img-prefix", MINI / "val", "--out", ro / "results.json", timeout=120)
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "not writable" in errors[0], r.stderr[-2000:]
    assert "evaluate" not in r.stderr  # no progress bar: the model never ran


# (argv from (tmp_path, checkpoint), an error fragment, whether MindSpore is needed to find the problem)
IMPORT_CASES = [
    (lambda t, c: ["test.py", TRASHCAN_CFG, c, "--dataroot", t / "missing.jpg", "--out", t / "p.jpg"],
     "missing.jpg", False),
    (lambda t, c: ["run.py", TRASHCAN_CFG, c, t / "missing", "--out", t / "out"], "missing", False),
    (lambda t, c: ["valuation.py", "--results", t / "missing.json", "--ann", VAL_ANN], "missing.json", False),
    (lambda t, c: ["export.py", TRASHCAN_CFG, t / "missing.ckpt", "--out", t / "m.mindir"], "missing.ckpt", False),
    (lambda t, c: ["run.py", "--model", t / "missing.onnx", VAL_IMG, "--out", t / "out"], "missing.onnx", False),
    (lambda t, c: ["train.py", TRASHCAN_CFG, "--work-dir", t / "work", "--cfg-options", "total_epoch=3"],
     "total_epoch=3", False),
    (lambda t, c: ["test.py", TRASHCAN_CFG, t / "missing.ckpt", "--dataroot", VAL_IMG, "--out", t / "p.jpg"],
     "missing.ckpt", False),
    # the control: only MindSpore can tell that a file is not a checkpoint, so it is imported (the probe can tell)
    (lambda t, c: ["test.py", TRASHCAN_CFG, not_a_video_and_not_a_checkpoint(t)[0], "--dataroot", VAL_IMG,
                   "--out", t / "p.jpg"], "bad.ckpt", True),
]


@pytest.mark.parametrize("args, fragment, imported", IMPORT_CASES,
                         ids=["test.py image", "run.py input", "valuation.py --results", "export.py checkpoint",
                              "run.py --model",
                              "train.py override", "test.py checkpoint", "control: test.py unreadable checkpoint"])
def test_a_bad_input_is_found_before_mindspore_is_imported(tmp_path, ckpt, args, fragment, imported):
    """The commands check their inputs before they import MindSpore (2 s, then the model): the error is at once."""
    r = cli_probing_imports(*args(tmp_path, ckpt))
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and fragment in errors[0], r.stderr[-2000:]
    assert f"mindspore imported: {imported}" in r.stderr, r.stderr[-2000:]
