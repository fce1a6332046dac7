"""MindIR export (export.py) and the exported model behind test.py / run.py / valuation.py --model.

Two models, exported through the CLI into a temporary folder:
- light-R18 TrashCan with the reference weights (calibrated: 100 instances per image), dynamic N, H, W;
- light-512-DCN-R50 (deformable: static, at its test scale padded, 512x864), random weights with a spread class bias
  so that its post-processing has candidates, and deformable offsets of a fraction of a pixel
  (backbone) to about a pixel (head) (`random_checkpoint`).
On two real trashcan_mini images of different sizes (480x270 and 480x360) the exported network must equal the native
one (1e-5 relative) in GRAPH and PYNATIVE, and the final instances through the CLIs must be the native ones.
"""
import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import (DCN_CFG, MINI, R50_CFG, TRASHCAN_CFG, VAL_ANN, assert_bad_input, cli, in_mode,
                      match_instances, write_video)
from deploy_common import IMAGES, R50_SCALE, assert_valuation_gives_native_ap, edit_sidecar

from solov2.deploy.exported import ExportedPredictor
from solov2.deploy.sidecar import file_sha256


@pytest.fixture(scope="module")
def exported(ckpt, dcn_ckpt, tmp_path_factory):
    """name -> (config, checkpoint, exported .mindir, export.py stdout), exported once per module."""
    d = tmp_path_factory.mktemp("mindir")
    out = {}
    for name, cfg, weights in (("r18", TRASHCAN_CFG, ckpt), ("dcn", DCN_CFG, dcn_ckpt)):
        model = d / f"{name}.mindir"
        r = cli("export.py", cfg, weights, "--out", model)
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = (cfg, weights, model, r.stdout)
    return out


def test_export_writes_model_and_sidecar(exported):
    for name, shape in (("r18", [-1, 3, -1, -1]), ("dcn", [1, 3, 512, 864])):
        cfg, weights, model, stdout = exported[name]
        side = json.loads((model.parent / (model.name + ".json")).read_text())
        assert side["model_format"] == "MINDIR" and side["input"]["shape"] == shape
        assert side["model_sha256"] == file_sha256(model)
        assert side["source"]["checkpoint_sha256"] == file_sha256(weights)
        assert side["test_cfg"]["score_thr"] == 0.1 and side["preprocess"]["size_divisor"] == 32
        assert "checked against the native network" in stdout, stdout
    assert json.loads((exported["r18"][2].parent / "r18.mindir.json").read_text())["class_names"][0] == "rov"


@pytest.mark.parametrize("name", ["r18", "dcn"])
def test_exported_network_equals_native(exported, native_predictor, ms_mode, name):
    """Same input -> the exported network's outputs equal the native network's (1e-5 relative), for both images."""
    cfg, weights, model, _ = exported[name]
    native, exp = native_predictor(cfg, weights), ExportedPredictor(model)
    for image in IMAGES:
        x, _ = exp.prepare(cv2.imread(str(image)))
        got, want = exp.network(x), native.network(x)
        assert len(got) == len(want) == 3
        for a, b in zip(got, want):
            assert a.shape == b.shape
            assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), (name, image.name)


def test_run_py_model_without_config_gives_the_native_instances(exported, tmp_path):
    """Dynamic model: run.py --model FILE (no config) == run.py CONFIG CHECKPOINT on images of two sizes."""
    cfg, weights, model, _ = exported["r18"]
    inp = tmp_path / "in"
    inp.mkdir()
    for image in IMAGES:
        shutil.copy(image, inp)
    r = cli("run.py", cfg, weights, inp, "--out", tmp_path / "native")
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("run.py", "--model", model, inp, "--out", tmp_path / "exported")
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("run.py", cfg, "--model", model, inp, "--out", tmp_path / "with_config")   # a matching CONFIG is accepted
    assert r.returncode == 0, r.stderr[-3000:]
    native = json.loads((tmp_path / "native" / "results.json").read_text())
    ours = json.loads((tmp_path / "exported" / "results.json").read_text())
    assert json.loads((tmp_path / "with_config" / "results.json").read_text()) == ours
    assert len(native) == 200
    for image in IMAGES:
        match_instances([o for o in native if o["file_name"] == image.name],
                        [o for o in ours if o["file_name"] == image.name])
    assert (tmp_path / "exported" / IMAGES[1].name).is_file()


def test_converted_r50_through_run_py_model_without_config(r50_ckpt, native_predictor, tmp_path):
    """A converted R50 checkpoint (official .pth -> weight_convert.py, `r50_ckpt`) exported to MindIR (dynamic)
    reproduces the native instances through run.py --model with no config, at the test scale of the ONNX tests.
    The native side runs in this process, in GRAPH mode (the R50 network the ONNX tests compare with; run.py
    CONFIG CHECKPOINT is the R18 test's); the export in PYNATIVE mode (the default GRAPH one is the R18 and DCN
    exports')."""
    from solov2.evaluation.results import instances_to_records
    model = tmp_path / "r50.mindir"
    r = cli("export.py", R50_CFG, r50_ckpt, "--out", model, "--mode", "pynative", "--no-check", "--cfg-options",
            R50_SCALE, timeout=900)   # the instances below compare it with the native network: the check repeats it
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "r50.mindir.json").read_text())["input"]["shape"] == [-1, 3, -1, -1]
    r = cli("run.py", "--model", model, IMAGES[1], "--out", tmp_path / "exported")
    assert r.returncode == 0, r.stderr[-3000:]
    ours = json.loads((tmp_path / "exported" / "results.json").read_text())
    pred = native_predictor(R50_CFG, r50_ckpt, [R50_SCALE])
    with in_mode("graph"):   # the mode of run.py's default (test_onnx reuses this compile)
        out = pred.predict(cv2.imread(str(IMAGES[1])))
    native = instances_to_records(IMAGES[1].name, out["masks"], out["labels"], out["scores"], pred.class_names)
    assert len(native) > 10, len(native)
    match_instances(native, ours)


def test_static_model_gives_the_native_instances_at_its_size(exported, native_predictor):
    """Static (DCN) model: the exported predictor == the native network on the same padded input. The native
    path itself pads to 32 only (480x864 for the 480x270 image, not 512x864): the padded area changes what the
    network sees near the border, measured and printed here (README "Deployment")."""
    cfg, weights, model, _ = exported["dcn"]
    native, exp = native_predictor(cfg, weights), ExportedPredictor(model)
    for image in IMAGES:
        img = cv2.imread(str(image))
        x, meta = exp.prepare(img)
        got, same_input = exp.predict(img), native.finish(native.network(x), meta)
        assert len(got["labels"]) > 10
        for k in ("labels", "scores", "masks"):
            np.testing.assert_array_equal(got[k], same_input[k])
        if image != IMAGES[0]:
            continue      # the measurement below: one image is enough (a native compile per padded size)
        own = native.predict(img)
        common = min(len(own["scores"]), len(got["scores"]))
        print(f"\n{image.name}: native pad {native.prepare(img)[0].shape[2:]} vs export {x.shape[2:]}: "
              f"{len(own['labels'])} vs {len(got['labels'])} instances, top-{common} scores differ by up to "
              f"{np.abs(own['scores'][:common] - got['scores'][:common]).max():.2e}")


def test_valuation_model_gives_the_native_ap(exported, native_val_results, tmp_path):
    """valuation.py --model (no config) gives the AP of valuation.py CONFIG CHECKPOINT to 1e-4. The reference
    weights are random (AP 0 on the TrashCan labels, which would compare nothing), so the ground truth is the native
    instances of score >= 0.3 on the first 12 val images: a non-zero AP that any instance change would move."""
    assert_valuation_gives_native_ap(exported["r18"][2], native_val_results, tmp_path)


def _copy_model(t, exported, name, with_sidecar=True):
    """A copy of an exported model (and its sidecar) in folder t: the file a bad-input case starts from."""
    model = exported[name][2]
    t.mkdir(exist_ok=True)
    shutil.copy(model, t / model.name)
    if with_sidecar:
        shutil.copy(model.parent / (model.name + ".json"), t / (model.name + ".json"))
    return t / model.name


def _not_a_mindir(t, exported):
    """A foreign file under a sidecar that names its hash: MindSpore's own load error is what must show."""
    path = _copy_model(t / "m", exported, "r18")
    path.write_bytes(b"not a MindIR model\n" * 100)
    return edit_sidecar(path, model_sha256=file_sha256(path))


def _replaced_model(t, exported):
    """r18.mindir replaced by another export (the DCN model) but its sidecar kept."""
    path = _copy_model(t / "m", exported, "r18")
    shutil.copy(exported["dcn"][2], path)
    return path


def _portrait_video(t):
    """A 2-frame MJPG video of the portrait photo: frames 852x479 at the DCN model's test scale."""
    frame = cv2.imread(str(_portrait_image(t)))
    (t / "portrait.jpg").unlink()
    return write_video(t / "portrait.avi", [frame, frame])


def _upper_case_copy(t, exported):
    path = _copy_model(t / "m", exported, "r18")
    upper = path.with_name("R18.MINDIR")
    path.rename(upper)
    (path.parent / (path.name + ".json")).rename(upper.parent / (upper.name + ".json"))
    return upper


def _portrait_image(t):
    """A 270x480 (W x H) photo: 852x479 at the DCN model's test scale, taller than its 512 rows."""
    t.mkdir(exist_ok=True)
    cv2.imwrite(str(t / "portrait.jpg"), cv2.rotate(cv2.imread(str(IMAGES[0])), cv2.ROTATE_90_CLOCKWISE))
    return t / "portrait.jpg"


def _portrait_dataset(t):
    """(annotation file, image folder): the landscape val photo, then the portrait one, 80 categories (the DCN
    model's); no annotations (nothing to read before the sizes)."""
    img = t / "img"
    _portrait_image(img)
    shutil.copy(IMAGES[0], img)
    images = [{"id": 1, "file_name": IMAGES[0].name, "height": 270, "width": 480},
              {"id": 2, "file_name": "portrait.jpg", "height": 480, "width": 270}]
    ann = t / "portrait.json"
    ann.write_text(json.dumps({"images": images, "annotations": [],
                               "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(80)]}))
    return ann, img


# (id, argv from (tmp_path, exported), texts the one error line must contain)
BAD = [
    ("a file that is not a MindIR model",
     lambda t, e: ["run.py", "--model", _not_a_mindir(t, e), IMAGES[0], "--out", t / "out"],
     ["r18.mindir", "cannot load it"]),
    ("a model without its sidecar",
     lambda t, e: ["test.py", "--model", _copy_model(t / "m", e, "r18", with_sidecar=False), "--dataroot", IMAGES[0],
                   "--out", t / "pic.jpg"],
     ["r18.mindir.json", "no such file"]),
    ("a config of another class count than the model",
     lambda t, e: ["run.py", DCN_CFG, "--model", _copy_model(t / "m", e, "r18"), IMAGES[0], "--out", t / "out"],
     ["solov2_light_512_dcn_r50_fpn_8gpu_3x.py", "differs from the exported model"]),
    ("--model together with a checkpoint",
     lambda t, e: ["valuation.py", TRASHCAN_CFG, e["r18"][1], "--model", _copy_model(t / "m", e, "r18"),
                   "--ann", VAL_ANN, "--img-prefix", MINI / "val"],
     ["--model", "replaces CHECKPOINT"]),
    ("an image larger than a static model's input",
     lambda t, e: ["test.py", "--model", _copy_model(t / "m", e, "dcn"), "--dataroot", _portrait_image(t / "img"),
                   "--out", t / "pic.jpg"],
     ["portrait.jpg", "dcn.mindir", "480x864", "larger than the model's static input 864x512"]),
    ("a video whose frames are larger than a static model's input (found before the first frame runs)",
     lambda t, e: ["run.py", "--model", _copy_model(t / "m", e, "dcn"), _portrait_video(t / "vid"),
                   "--out", t / "out"],
     ["portrait.avi", "dcn.mindir", "larger than the model's static input 864x512"]),
    ("valuation.py: an annotated size larger than a static model's input, found before the first image runs",
     lambda t, e: ["valuation.py", "--model", _copy_model(t / "m", e, "dcn"),
                   *(lambda a: ["--ann", a[0], "--img-prefix", a[1]])(_portrait_dataset(t))],
     ["portrait.jpg", "larger than the model's static input 864x512", "(its size in", "portrait.json"]),
    ("a model file replaced after its export (the sidecar describes another file)",
     lambda t, e: ["run.py", "--model", _replaced_model(t, e), IMAGES[0], "--out", t / "out"],
     ["r18.mindir", "not the file its sidecar r18.mindir.json was written for"]),
    ("a sidecar edited into a zero size_divisor and a zero std",
     lambda t, e: ["run.py", "--model", edit_sidecar(_copy_model(t / "m", e, "r18"), preprocess_size_divisor=0,
                                                      preprocess_std=[1.0, 0.0, 1.0]), IMAGES[0], "--out", t / "out"],
     ["r18.mindir.json", "size_divisor 0 is not a positive integer", "std > 0"]),
    ("export.py over an existing model without --force",
     lambda t, e: ["export.py", TRASHCAN_CFG, e["r18"][1], "--out", _copy_model(t / "m", e, "r18")],
     ["r18.mindir", "already exists", "--force"]),
    ("export.py into a missing folder",
     lambda t, e: ["export.py", TRASHCAN_CFG, e["r18"][1], "--out", t / "missing" / "r18.mindir"],
     ["missing", "output folder does not exist"]),
    ("export.py --input-size above the largest image side",
     lambda t, e: ["export.py", TRASHCAN_CFG, e["r18"][1], "--input-size", "8224", "800", "--out", t / "m.mindir"],
     ["--input-size 8224 800", "from 32 to 8192"]),
    ("export.py --out with an upper-case suffix (MindSpore would write M.MINDIR.mindir)",
     lambda t, e: ["export.py", TRASHCAN_CFG, e["r18"][1], "--out", t / "M.MINDIR"],
     ["M.MINDIR", "must end in .mindir (lower case)"]),
    ("--model with an upper-case suffix (MindSpore would refuse to load it)",
     lambda t, e: ["run.py", "--model", _upper_case_copy(t, e), IMAGES[0], "--out", t / "out"],
     ["R18.MINDIR", "lower-case suffix", "rename it to R18.mindir"]),
    ("--runtime without --model (it would be unused)",
     lambda t, e: ["run.py", TRASHCAN_CFG, e["r18"][1], IMAGES[0], "--out", t / "out", "--runtime", "openvino"],
     ["--runtime openvino", "only an exported .onnx given with --model"]),
    ("export.py --input-size not a multiple of 32",
     lambda t, e: ["export.py", TRASHCAN_CFG, e["r18"][1], "--input-size", "500", "800", "--out", t / "m.mindir"],
     ["--input-size 500 800", "multiples of 32"]),
]


@pytest.mark.parametrize("args, fragments", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_model_input_is_one_line_and_nothing_is_lost(tmp_path, exported, args, fragments):
    assert_bad_input(args(tmp_path, exported), tmp_path, fragments)
