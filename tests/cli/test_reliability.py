"""Reliability through the real commands, one row per case (as test_bad_inputs.py): an output never replaces an
input (even with --force), a value that passes the checks can work (int32/float32/memory), non-finite weights are
named, folder runs survive bad files."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import cv2
import mindspore as ms
import numpy as np
import pytest
from conftest import MINI, REPO, TRASHCAN_CFG, VAL_ANN, assert_bad_input, cli, small_tmpfs

VAL_IMG = MINI / "val" / "vid_000102_frame0000035.jpg"
TRAIN = [f"data.train.ann_file={MINI / 'annotations' / 'instances_train_trashcan.json'}",
         f"data.train.img_prefix={MINI / 'train'}", "data.train.max_images=4"]


def copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


def hard_link(src, dst):
    os.link(src, dst)
    return dst


def sym_link(src, dst):
    dst.symlink_to(src)
    return dst


def damaged(c, t, name, value, suffix=".ckpt"):
    """A copy of checkpoint `c` whose parameter `name` holds `value` (inf or NaN) in its first entry."""
    params = ms.load_checkpoint(str(c))
    w = params[name].asnumpy().copy()
    w.reshape(-1)[0] = value
    params[name] = ms.Parameter(ms.Tensor(w), name=name)
    path = t / f"damaged{suffix}"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(path))
    return path


def fifo(path):
    """A named pipe nobody writes to: opening it for reading would block forever."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def folder_with(t, bad, good=True):
    """A folder of the bad file(s) `bad(folder)` makes, and one good image (good)."""
    d = t / "photos"
    d.mkdir(parents=True, exist_ok=True)
    if good:
        copy(VAL_IMG, d / "good.jpg")
    bad(d)
    return d


def zero_byte(d):
    (d / "empty.jpg").write_bytes(b"")


def thin(d):
    cv2.imwrite(str(d / "thin.png"), np.full((1, 4000, 3), 128, np.uint8))


def loop(d):
    (d / "loop.jpg").symlink_to(d / "loop.jpg")


def thin_ann(t):
    """An annotation file of one image, thin.png (1x4000), with the TrashCan categories."""
    (t / "photos").mkdir()
    thin(t / "photos")
    cats = json.loads(VAL_ANN.read_text())["categories"]
    ann = {"images": [{"id": 1, "file_name": "thin.png", "height": 1, "width": 4000}], "annotations": [],
           "categories": cats}
    (t / "thin.json").write_text(json.dumps(ann))
    return t / "thin.json"


OFFICIAL = lambda c: c.parent / "official.pth"  # noqa: E731  (written by the ckpt fixture)

# (id, argv from (tmp_path, converted checkpoint), texts the one error line must contain)
CASES = [
    # 1. an output never replaces an input, even with --force
    ("weight_convert.py DST is SRC",
     lambda t, c: ["weight_convert.py", copy(OFFICIAL(c), t / "m.ckpt"), t / "m.ckpt", "--force"],
     ["m.ckpt", "is the input checkpoint SRC", "even with --force"]),
    ("weight_convert.py DST is a hard link to SRC",
     lambda t, c: ["weight_convert.py", copy(OFFICIAL(c), t / "a.pth"), hard_link(t / "a.pth", t / "b.ckpt"),
                   "--force"],
     ["b.ckpt", "is the input checkpoint SRC"]),
    ("valuation.py --out is --ann",
     lambda t, c: ["valuation.py", TRASHCAN_CFG, c, "--ann", copy(VAL_ANN, t / "gt.json"), "--img-prefix",
                   MINI / "val", "--out", t / "gt.json", "--force"],
     ["gt.json", "is the input --ann"]),
    ("valuation.py --out is a symlink to --ann",
     lambda t, c: ["valuation.py", TRASHCAN_CFG, c, "--ann", copy(VAL_ANN, t / "gt.json"), "--img-prefix",
                   MINI / "val", "--out", sym_link(t / "gt.json", t / "r.json"), "--force"],
     ["r.json", "is the input --ann"]),
    ("export.py --out is the config (by a hard link)",
     lambda t, c: ["export.py", copy(TRASHCAN_CFG, t / "cfg.py"), c, "--out",
                   hard_link(t / "cfg.py", t / "m.mindir"), "--force"],
     ["m.mindir", "is the input CONFIG"]),
    ("train.py --load-from a snapshot name of the work dir",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "work", "--load-from",
                   copy(c, t / "work" / "epoch_1.ckpt"), "--cfg-options", *TRAIN],
     ["epoch_1.ckpt", "--load-from is a snapshot of the work dir"]),
    # 2. a value that passes the checks can work
    ("total_epochs beyond int32",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "w", "--cfg-options", *TRAIN,
                   "total_epochs=1000000000000"],
     ["total_epochs", "beyond the int32 range"]),
    ("total_epochs whose learning-rate table cannot fit",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "w", "--cfg-options", *TRAIN,
                   "total_epochs=200000000"],   # 4e8 steps < 2**31, but a 15 GiB table
     ["total_epochs=200000000", "learning-rate table", "more than a quarter of this machine"]),
    ("an image scale of 100000",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, VAL_IMG, "--out", t / "o", "--cfg-options",
                   "data.test.pipeline.1.img_scale=(100000, 100000)"],
     ["img_scale", "<= 8192"]),
    ("--score_thr nan",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, VAL_IMG, "--out", t / "o", "--score_thr", "nan"],
     ["--score_thr must be in [0, 1], got nan"]),
    ("--keep-last -1",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "w", "--keep-last", "-1"],
     ["--keep-last must be in [0, "]),
    ("a loss-scale window beyond int32",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "w", "--amp", "O2", "--cfg-options",
                   *TRAIN, "fp16.loss_scale={'scale_window': 1000000000000}"],
     ["fp16.loss_scale.scale_window", "int32"]),
    ("a loss scale beyond float32",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "w", "--amp", "O2", "--cfg-options",
                   *TRAIN, "fp16.loss_scale=1e39"],
     ["fp16.loss_scale", "float32"]),
    # 3. non-finite weights are named
    ("run.py with +inf in backbone.conv1.weight",
     lambda t, c: ["run.py", TRASHCAN_CFG, damaged(c, t, "backbone.conv1.weight", np.inf), VAL_IMG, "--out", t / "o"],
     ["damaged.ckpt", "parameter backbone.conv1.weight holds non-finite values (inf"]),
    ("train.py --load-from NaN weights",
     lambda t, c: ["train.py", "--config", TRASHCAN_CFG, "--work-dir", t / "w", "--load-from",
                   damaged(c, t, "neck.fpn_convs.0.conv.weight", np.nan), "--cfg-options", *TRAIN],
     ["damaged.ckpt", "parameter neck.fpn_convs.0.conv.weight", "NaN"]),
    # 4. folder runs: every input is checked before the model runs, and the error names the file
    ("run.py on a zero-byte .jpg",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, folder_with(t, zero_byte), "--out", t / "o"],
     ["empty.jpg", "empty file", "--skip-bad"]),
    ("run.py on a 4000x1 image",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, folder_with(t, thin), "--out", t / "o"],
     ["thin.png", "too thin", "--skip-bad"]),
    ("run.py on a symlink loop",
     lambda t, c: ["run.py", TRASHCAN_CFG, c, folder_with(t, loop), "--out", t / "o"],
     ["loop.jpg", "looping symbolic link"]),
    ("valuation.py on an image too thin for the test scale",
     lambda t, c: ["valuation.py", TRASHCAN_CFG, c, "--ann", thin_ann(t), "--img-prefix", t / "photos"],
     ["photos/thin.png", "too thin"]),
    # 5. inputs that are not regular files are refused unopened (never a hang)
    ("run.py CONFIG a FIFO",
     lambda t, c: ["run.py", fifo(t / "cfg.py"), c, VAL_IMG, "--out", t / "o"],
     ["cfg.py", "not a regular file (a folder, FIFO or device)"]),
    ("run.py CHECKPOINT a FIFO",
     lambda t, c: ["run.py", TRASHCAN_CFG, fifo(t / "m.ckpt"), VAL_IMG, "--out", t / "o"],
     ["m.ckpt", "not a regular file"]),
    ("valuation.py --ann a FIFO",
     lambda t, c: ["valuation.py", TRASHCAN_CFG, c, "--ann", fifo(t / "gt.json"), "--img-prefix", MINI / "val"],
     ["gt.json", "not a regular file"]),
    ("weight_convert.py SRC a FIFO",
     lambda t, c: ["weight_convert.py", fifo(t / "m.pth"), t / "m.ckpt", "--config", TRASHCAN_CFG],
     ["m.pth", "not a regular file"]),
]


@pytest.mark.parametrize("args, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reliability_case_is_one_line_and_nothing_is_lost(tmp_path, ckpt, args, fragments):
    assert_bad_input(args(tmp_path, ckpt), tmp_path, fragments)


def test_resuming_a_snapshot_with_nan_weights_is_one_line(tmp_path, one_epoch_run):
    """A work dir whose epoch_1.ckpt (a training snapshot of 1 step per epoch) holds a NaN weight: --resume auto
    with 1 step per epoch too (4 images, 4 per device) names the file and the parameter."""
    work = one_epoch_run(tmp_path / "work")
    damaged(work / "epoch_1.ckpt", tmp_path, "bbox_head.solo_kernel.weight", np.nan)
    os.replace(tmp_path / "damaged.ckpt", work / "epoch_1.ckpt")
    assert_bad_input(["train.py", "--config", TRASHCAN_CFG, "--work-dir", work, "--resume", "auto", "--cfg-options",
                      *TRAIN, "data.imgs_per_gpu=4", "total_epochs=2", "data.train.pipeline.2.img_scale=[(256,160)]"],
                     tmp_path, ["epoch_1.ckpt", "parameter bbox_head.solo_kernel.weight", "NaN"])


def test_skip_bad_skips_each_bad_file_by_name(tmp_path, ckpt):
    """--skip-bad: a zero-byte .jpg, a 4000x1 image and a symlink loop are skipped with a warning naming each; the
    good image's results are written."""
    src = folder_with(tmp_path, lambda d: (zero_byte(d), thin(d), loop(d)))
    r = cli("run.py", TRASHCAN_CFG, ckpt, src, "--out", tmp_path / "o", "--skip-bad")
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [s for s in r.stderr.splitlines() if s.startswith("warning: skipped")]
    assert len(warnings) == 3, r.stderr[-3000:]
    for name in ("empty.jpg", "thin.png", "loop.jpg"):
        assert any(name in w for w in warnings), (name, warnings)
    assert {o["file_name"] for o in json.loads((tmp_path / "o" / "results.json").read_text())} == {"good.jpg"}


def test_skip_bad_with_no_usable_image_is_one_error(tmp_path, ckpt):
    """--skip-bad on a folder whose images are all unusable: a warning for each, then one error naming the folder,
    exit 2, no results. The zero-byte file sorts last but is found first, before the model loads (its header);
    the thin one when it is prepared."""
    src = folder_with(tmp_path, lambda d: (thin(d), (d / "z_empty.jpg").write_bytes(b"")), good=False)
    r = cli("run.py", TRASHCAN_CFG, ckpt, src, "--out", tmp_path / "o", "--skip-bad")
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2 and errors == [f"error: {src}: none of its images is usable (see the warnings)"], \
        r.stderr[-3000:]
    warnings = [s for s in r.stderr.splitlines() if s.startswith("warning: skipped")]
    assert len(warnings) == 2 and "z_empty.jpg" in warnings[0] and "thin.png" in warnings[1], warnings
    assert not (tmp_path / "o" / "results.json").exists()


def test_full_disk_is_named_and_the_done_results_are_kept(tmp_path, ckpt):
    """Pictures onto a 300 KB disk: the run stops at the picture that does not fit, says the disk is full, and the
    results of the images already done are in results.json (small enough to fit after the partial picture is
    removed)."""
    src = tmp_path / "photos"
    for i in range(12):
        copy(VAL_IMG, src / f"{i:02d}.jpg")
    with small_tmpfs(tmp_path / "disk", "size=300k") as disk:
        r = cli("run.py", TRASHCAN_CFG, ckpt, src, "--out", disk / "o")
        errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and "no space left on the disk" in errors[0], r.stderr[-3000:]
        assert "Traceback" not in r.stderr
        done = [p.name for p in (disk / "o").iterdir() if p.suffix == ".jpg"]
        assert 0 < len(done) < 12 and not [p for p in (disk / "o").iterdir() if ".tmp" in p.name]
        if (disk / "o" / "results.json").exists():
            kept = {o["file_name"] for o in json.loads((disk / "o" / "results.json").read_text())}
            assert kept and kept <= set(done), (kept, done)
            m = re.search(r"stopped after (\d+) of 12 image\(s\)", r.stderr)
            assert m and int(m.group(1)) >= len(kept), r.stderr[-2000:]
        else:
            assert "their results could not be saved either" in r.stderr, r.stderr[-2000:]


def test_ctrl_c_after_the_first_compile_keeps_the_done_results(tmp_path, ckpt):
    """Ctrl-C while run.py works through a folder: the images done are in results.json, one `interrupted` line,
    exit 130. After the first network call MindSpore owns SIGINT and turns it into SIGTERM, which used to kill the
    process silently (exit -15, no results.json)."""
    src = tmp_path / "photos"
    for i in range(40):
        copy(VAL_IMG, src / f"{i:02d}.jpg")
    err = tmp_path / "stderr.txt"
    with err.open("w") as f:
        job = subprocess.Popen([sys.executable, str(REPO / "run.py"), str(TRASHCAN_CFG), str(ckpt), str(src), "--out",
                                str(tmp_path / "o")], stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not re.search(r"\b[2-9]/40 ", err.read_text()):     # two images done: well after the first compile
            assert job.poll() is None and time.time() < deadline, err.read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGINT)
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    text = err.read_text()
    assert job.returncode == 130 and text.splitlines()[-1] == "interrupted" and "Traceback" not in text, text[-3000:]
    m = re.search(r"stopped after (\d+) of 40 image\(s\)", text)
    kept = {o["file_name"] for o in json.loads((tmp_path / "o" / "results.json").read_text())}
    assert m and 2 <= len(kept) == int(m.group(1)) < 40, text[-2000:]
    assert kept <= {p.name for p in (tmp_path / "o").glob("*.jpg")}


def test_one_run_per_work_dir_and_stale_temporaries_are_removed(tmp_path, ckpt):
    """A running train.py holds its work dir: a second one is refused in one line naming the first (its pid), and
    the first, started in a work dir where an interrupted save left a temporary file, removed it and said so. Ctrl-C
    then ends the first run cleanly (exit 130, `interrupted`), and its lock ends with it."""
    work = tmp_path / "work"
    work.mkdir()
    stale = work / ".epoch_3.ckpt.0123456789ab.tmp.tmp"     # what a kill during a snapshot save leaves
    stale.write_bytes(b"x" * 1000)
    (work / "notes.tmp").write_text("mine")                  # a user's file with a similar name stays
    first = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(TRASHCAN_CFG), "--work-dir",
                              str(work), "--load-from", str(ckpt), "--cfg-options", *TRAIN, "total_epochs=50",
                              "data.train.pipeline.2.img_scale=[(256,160)]", "log_config.interval=1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ((work / "train.log").is_file() and "epoch [1][1/" in (work / "train.log").read_text()):
            assert first.poll() is None and time.time() < deadline, first.stdout.read()[-3000:]
            time.sleep(1)
        log = (work / "train.log").read_text()
        assert f"removed 1 temporary file(s) of an interrupted save: {stale.name}" in log, log[-2000:]
        assert not stale.exists() and (work / "notes.tmp").read_text() == "mine"
        r = cli("train.py", "--config", TRASHCAN_CFG, "--work-dir", work, "--cfg-options", *TRAIN, timeout=300)
        errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
        assert "another training run is using this work dir" in errors[0] and f"pid {first.pid}" in errors[0]
        assert log == (work / "train.log").read_text()[:len(log)]   # the second run wrote nothing to the log
        # Ctrl-C (to the process group, as a terminal sends it) after the compile ends the run cleanly
        os.killpg(first.pid, signal.SIGINT)
        out = first.communicate(timeout=120)[0]
        assert first.returncode == 130 and out.splitlines()[-1] == "interrupted", out[-3000:]
        assert "Traceback" not in out
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    # ended, the first run's lock went with its process: a new run takes the work dir (and stops, on purpose, at a
    # check made with the lock held)
    r = cli("train.py", "--config", TRASHCAN_CFG, "--work-dir", work, "--resume", tmp_path / "none.ckpt",
            "--cfg-options", *TRAIN, timeout=300)
    assert r.returncode == 2 and "another training run" not in r.stderr and "no such snapshot" in r.stderr, r.stderr


@pytest.mark.parametrize("name, value, fragment", [
    ("DEVICE_ID", "abc", "DEVICE_ID='abc': must be an integer in [0, 4095]"),
    ("RANK_ID", "3", "RANK_ID=3 and RANK_SIZE=2: the rank must be below the size"),
])
def test_bad_environment_variables_are_named(tmp_path, ckpt, name, value, fragment):
    env = dict(os.environ, **{name: value}, **({"RANK_SIZE": "2"} if name == "RANK_ID" else {}))
    r = cli("run.py", TRASHCAN_CFG, ckpt, VAL_IMG, "--out", tmp_path / "o", env=env, timeout=300)
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and fragment in errors[0], r.stderr[-3000:]
    assert not (tmp_path / "o").exists()


def test_a_missing_rank_table_is_named_where_it_is_used(tmp_path, ckpt):
    """RANK_TABLE_FILE makes train.py a distributed job: a missing table is one line before MindSpore's init. The
    single-device commands do not read it, so a stale value in the shell does not stop them."""
    env = dict(os.environ, RANK_TABLE_FILE="/nonexistent/rank_table.json")
    r = cli("train.py", "--config", TRASHCAN_CFG, "--work-dir", tmp_path / "w", "--cfg-options", *TRAIN, env=env,
            timeout=300)
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
    assert "RANK_TABLE_FILE='/nonexistent/rank_table.json': no such file" in errors[0]
    assert not (tmp_path / "w").exists()
