"""CocoDataset: official loading rules, label mapping, RLE/crowd handling, broken-input errors."""
import json

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO

from solov2.data.coco import CocoDataset, DatasetError
from solov2.errors import SolovError
from conftest import SHARED

DATA = SHARED / "datasets" / "trashcan_mini"
TRAIN_ANN = DATA / "annotations" / "instances_train_trashcan.json"


def test_trashcan_classes_and_filter():
    assert TRAIN_ANN.is_file(), f"missing dataset {DATA} (set SOLOV2_SHARED)"
    ds = CocoDataset(TRAIN_ANN, DATA / "train")
    coco = COCO(str(TRAIN_ANN))
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    assert ds.cat_ids == [c["id"] for c in cats]
    assert ds.class_names == [c["name"] for c in cats]
    # official _filter_imgs: images with an annotation and min side >= 32, in file order
    ids_with_ann = {a["image_id"] for a in coco.anns.values()}
    expected = [i for i in coco.getImgIds() if i in ids_with_ann
                and min(coco.imgs[i]["width"], coco.imgs[i]["height"]) >= 32]
    assert [r["image_id"] for r in ds.records] == expected
    s = ds[3]
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[s["image_id"]])) if not a["iscrowd"]]
    assert s["img"].dtype == np.uint8 and s["img"].shape[2] == 3
    assert s["gt_masks"].shape == (len(anns),) + s["img"].shape[:2] and s["gt_masks"].dtype == np.uint8
    x, y, w, h = anns[0]["bbox"]
    np.testing.assert_allclose(s["gt_bboxes"][0], [x, y, x + w - 1, y + h - 1], rtol=1e-6)
    assert s["gt_labels"][0] == ds.cat_ids.index(anns[0]["category_id"]) + 1
    np.testing.assert_array_equal(s["gt_masks"][0], coco.annToMask(anns[0]))
    assert len(CocoDataset(TRAIN_ANN, DATA / "train", max_images=5)) == 5


def _write_img(folder, name, h, w, seed=0):
    img = np.random.RandomState(seed).randint(0, 255, (h, w, 3)).astype(np.uint8)
    assert cv2.imwrite(str(folder / name), img)


def _poly(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _ann(aid, img_id, cat, x, y, w, h, **kw):
    a = dict(id=aid, image_id=img_id, category_id=cat, bbox=[x, y, w, h], area=float(w * h), iscrowd=0,
             segmentation=_poly(x, y, w, h))
    a.update(kw)
    return a


def _write_coco(path, images, anns, cats):
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return path


@pytest.fixture
def tiny(tmp_path):
    """Three good 48x64 images, non-contiguous category ids given in unsorted order."""
    for k in range(3):
        _write_img(tmp_path, f"im{k}.png", 48, 64, seed=k)
    images = [dict(id=10 + k, file_name=f"im{k}.png", height=48, width=64) for k in range(3)]
    anns = [_ann(1, 10, 42, 2, 3, 20, 10), _ann(2, 10, 3, 30, 5, 10, 30), _ann(3, 11, 7, 1, 1, 40, 40),
            _ann(4, 12, 3, 5, 5, 8, 8)]
    cats = [dict(id=42, name="c42"), dict(id=3, name="c3"), dict(id=7, name="c7")]
    return tmp_path, images, anns, cats


def test_noncontiguous_category_ids(tiny):
    root, images, anns, cats = tiny
    ds = CocoDataset(_write_coco(root / "a.json", images, anns, cats), root)
    assert ds.cat_ids == [3, 7, 42] and ds.class_names == ["c3", "c7", "c42"]
    np.testing.assert_array_equal(ds[0]["gt_labels"], [3, 1])
    assert ds[1]["gt_labels"].tolist() == [2] and ds[0]["gt_labels"].dtype == np.int64
    np.testing.assert_array_equal(ds[0]["gt_bboxes"][0], [2, 3, 21, 12])
    assert ds[0]["gt_masks"][0, 3:13, 2:22].all()


def test_rle_crowd_and_degenerate(tiny):
    root, images, anns, cats = tiny
    m = np.zeros((48, 64), np.uint8)
    m[10:20, 30:50] = 1
    m[25, 5] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    # uncompressed RLE: column-major run lengths starting with zeros
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    assert sum(counts) == m.size
    anns = [_ann(1, 10, 3, 5, 10, 45, 16, segmentation=rle),
            _ann(2, 10, 7, 5, 10, 45, 16, segmentation=dict(size=[48, 64], counts=counts)),
            _ann(3, 10, 42, 0, 0, 30, 30, iscrowd=1, segmentation=rle),
            _ann(4, 10, 42, 0, 0, 0.5, 30),                      # w < 1 -> skipped
            _ann(5, 10, 42, 0, 0, 10, 10, area=0.0),             # area 0 -> skipped
            _ann(6, 11, 42, 0, 0, 10, 10, iscrowd=1)]            # image 11: crowd only
    ds = CocoDataset(_write_coco(root / "b.json", images[:2], anns, cats), root)
    assert len(ds) == 1, "image with only crowd annotations has no usable instance"
    s = ds[0]
    assert s["gt_labels"].tolist() == [1, 2]
    np.testing.assert_array_equal(s["gt_masks"][0], m)
    np.testing.assert_array_equal(s["gt_masks"][1], m)
    keep = CocoDataset(root / "b.json", root, filter_empty_gt=False)
    assert len(keep) == 2 and keep[1]["gt_bboxes"].shape == (0, 4) and keep[1]["gt_masks"].shape == (0, 48, 64)


def test_tiny_images_dropped_and_max_images(tiny):
    root, images, anns, cats = tiny
    _write_img(root, "small.png", 20, 64)
    images = images[:1] + [dict(id=99, file_name="small.png", height=20, width=64)] + images[1:]
    anns = anns + [_ann(9, 99, 3, 1, 1, 10, 10)]
    path = _write_coco(root / "c.json", images, anns, cats)
    assert [r["image_id"] for r in CocoDataset(path, root).records] == [10, 11, 12]
    assert [r["image_id"] for r in CocoDataset(path, root, min_size=16).records] == [10, 99, 11, 12]
    assert [r["image_id"] for r in CocoDataset(path, root, max_images=2).records] == [10, 11]


def test_missing_image_and_malformed_annotation(tiny):
    root, images, anns, cats = tiny
    bad_img = images + [dict(id=13, file_name="nope.png", height=48, width=64)]
    p1 = _write_coco(root / "d.json", bad_img, anns + [_ann(7, 13, 3, 1, 1, 9, 9)], cats)
    with pytest.raises(DatasetError, match="nope.png") as e:
        CocoDataset(p1, root)
    assert "\n" not in str(e.value) and "not found" in str(e.value)
    bad_ann = anns + [dict(_ann(8, 12, 3, 1, 1, 9, 9), bbox=[1, 2, 3])]
    p2 = _write_coco(root / "e.json", images, bad_ann, cats)
    with pytest.raises(DatasetError, match=r"e\.json.*im2\.png.*annotation 8.*bbox"):
        CocoDataset(p2, root)
    with pytest.warns(UserWarning, match="nope.png"):
        ds1 = CocoDataset(p1, root, skip_bad=True)
    with pytest.warns(UserWarning, match="annotation 8"):
        ds2 = CocoDataset(p2, root, skip_bad=True)
    assert [r["image_id"] for r in ds1.records] == [10, 11, 12]
    assert [r["image_id"] for r in ds2.records] == [10, 11]


@pytest.mark.parametrize("seg, problem", [({"size": [48, 64]}, "counts"), ("oops", "segmentation is str"),
                                          ([[1, 2, 3]], "polygon"), ({"size": [10, 10], "counts": "abc"}, "RLE size"),
                                          ({"size": [48, 64], "counts": "abc"}, "ends inside a run")])
def test_malformed_segmentations(tiny, seg, problem):
    root, images, anns, cats = tiny
    path = _write_coco(root / "f.json", images, anns + [_ann(20, 11, 3, 1, 1, 9, 9, segmentation=seg)], cats)
    with pytest.raises(DatasetError, match=problem):
        CocoDataset(path, root)


def test_two_point_polygon_is_an_error_naming_the_annotation(tiny):
    """4 coordinates: pycocotools would silently read them as a box [x, y, w, h]."""
    root, images, anns, cats = tiny
    path = _write_coco(root / "p.json", images, anns + [_ann(21, 11, 3, 1, 1, 9, 9, segmentation=[[1, 1, 9, 9]])],
                       cats)
    with pytest.raises(DatasetError, match=r"annotation 21: polygon has 4 coordinates \(a polygon needs >= 3 points"):
        CocoDataset(path, root)


def test_degenerate_and_outside_annotations_are_named_in_a_warning(tiny):
    root, images, anns, cats = tiny
    extra = [_ann(30, 11, 3, 1, 1, 0.5, 9), _ann(31, 11, 3, 1, 1, 9, 9, area=0.0),  # not used (official rule)
             _ann(32, 11, 3, 50, 40, 30, 30)]                                      # box past the 64x48 image
    path = _write_coco(root / "q.json", images, anns + extra, cats)
    with pytest.warns(UserWarning) as record:
        ds = CocoDataset(path, root)
    text = [str(w.message) for w in record]
    assert any("2 annotation(s) have zero area or a box under 1 px" in t and "ids 30, 31" in t for t in text), text
    assert any("1 annotation(s) have a box more than 1 px outside" in t and "ids 32" in t for t in text), text
    assert len(ds.records) == 3


def test_truncated_jpeg_is_a_bad_image(tiny):
    root, images, anns, cats = tiny
    _write_img(root, "im1.jpg", 48, 64)
    data = (root / "im1.jpg").read_bytes()
    assert cv2.imdecode(np.frombuffer(data[: len(data) // 2], np.uint8), cv2.IMREAD_COLOR) is not None  # cv2 alone
    (root / "im1.jpg").write_bytes(data[: len(data) // 2])                                              # takes it
    images = [dict(im, file_name="im1.jpg") if im["file_name"] == "im1.png" else im for im in images]
    ds = CocoDataset(_write_coco(root / "t.json", images, anns, cats), root)
    with pytest.raises(DatasetError, match=r"im1\.jpg: truncated JPEG"):
        ds[1]
    with pytest.warns(UserWarning, match="truncated JPEG"):
        assert CocoDataset(root / "t.json", root, skip_bad=True)[1]["image_id"] == 12
    (root / "im1.jpg").write_bytes(data)
    assert ds[1]["img"].shape == (48, 64, 3)  # the whole file reads


@pytest.mark.parametrize("progressive", [0, 1])
def test_a_jpeg_with_a_video_appended_is_whole_and_a_cut_one_is_not(tmp_path, progressive):
    """A motion photo (a complete JPEG, then a video: far more than the last bytes without an end-of-image marker)
    reads; cut short, with or without bytes after the cut, it is refused (baseline with restart markers and
    progressive scans)."""
    from solov2.data.images import file_problem, read_image
    img = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive,
                                      cv2.IMWRITE_JPEG_RST_INTERVAL, 0 if progressive else 4])[1].tobytes()
    video = b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(1).integers(0, 256, 20000, np.uint8).tobytes()
    cases = {"motion.jpg": data + video, "cut.jpg": data[:len(data) // 2],
             "cut_then_more.jpg": data[:len(data) // 2] + b"\x00" * 5000}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.testing.assert_array_equal(read_image(tmp_path / "motion.jpg"), cv2.imdecode(np.frombuffer(data, np.uint8), 1))
    assert file_problem(tmp_path / "motion.jpg") is None
    for name in ("cut.jpg", "cut_then_more.jpg"):
        assert file_problem(tmp_path / name).startswith("truncated JPEG")
        with pytest.raises(SolovError, match="truncated JPEG"):
            read_image(tmp_path / name)


def test_unreadable_image_at_index_time(tiny):
    root, images, anns, cats = tiny
    (root / "im1.png").write_bytes(b"not an image")
    path = _write_coco(root / "g.json", images, anns, cats)
    ds = CocoDataset(path, root)
    with pytest.raises(DatasetError, match="im1.png"):
        ds[1]
    lenient = CocoDataset(path, root, skip_bad=True)
    with pytest.warns(UserWarning, match="im1.png"):
        s = lenient[1]
    assert s["image_id"] == 12


def test_bad_annotation_files(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.json: no such annotation file"):
        CocoDataset(tmp_path / "missing.json", tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"x\.json.*not valid JSON"):
        CocoDataset(tmp_path / "x.json", tmp_path)
    (tmp_path / "y.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match=r"y\.json.*annotations"):
        CocoDataset(tmp_path / "y.json", tmp_path)


def _runs(mask):
    """Column-major runs of a 0/1 mask, starting with zeros (COCO's uncompressed RLE), computed independently."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], change]))


def test_compressed_rle_check_accepts_pycocotools_encodings_and_refuses_damaged_ones():
    """pycocotools' C decoder trusts a compressed RLE string (a cut or edited one makes it read or write past its
    buffers), so the validator decodes the runs itself: they equal the mask's own runs for every encoding
    pycocotools writes, each prefix fails (runs after the first are > 0, so a prefix covers fewer pixels), and a
    string checked against the wrong size names its true pixel count."""
    from solov2.data.coco_file import compressed_rle_problem, compressed_rle_runs
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), np.uint8), np.ones((5, 7), np.uint8), (rng.random((31, 17)) > 0.5).astype(np.uint8)]
    big = np.zeros((900, 1400), np.uint8)                # runs up to 1.26 M pixels: 5-character runs and
    big[100:800, 300:1100] = 1                           # large negative differences
    big[rng.integers(0, 900, 500), rng.integers(0, 1400, 500)] = 1
    masks.append(big)
    for m in masks:
        counts = mask_utils.encode(np.asfortranarray(m))["counts"]
        np.testing.assert_array_equal(compressed_rle_runs(counts), _runs(m))
        assert compressed_rle_problem(counts, *m.shape) is None
        assert compressed_rle_problem(counts.decode(), *m.shape) is None
        assert f"add up to {m.size} pixels" in compressed_rle_problem(counts, m.shape[0] + 1, m.shape[1])
        step = max(1, len(counts) // 200)
        assert all(compressed_rle_problem(counts[:k], *m.shape) for k in range(0, len(counts), step))
    assert "negative run" in compressed_rle_problem("5M", 1, 2)      # runs 5 and (-3): 'M' = 48 + (-3 & 0x1f)
    assert "outside" in compressed_rle_problem("5~", 1, 5)
    assert "more than 6" in compressed_rle_problem("ooooooo0", 1, 5)
