"""Pictures of instances: masks blended in their label colour, captions, the score threshold."""
import numpy as np
import pytest

from solov2.visualize import draw_instances, label_color


def _scene():
    img = np.full((120, 160, 3), 90, np.uint8)
    masks = np.zeros((3, 120, 160), bool)
    masks[0, 60:100, 20:70] = True
    masks[1, 70:110, 100:150] = True
    masks[2, 5:15, 5:15] = True                    # below score_thr: must not be drawn
    return img, masks, np.array([0, 1, 2]), np.array([0.9, 0.6, 0.1])


def test_draw_instances_changes_pixels_under_masks():
    img, masks, labels, scores = _scene()
    before = img.copy()
    out = draw_instances(img, masks, labels, scores, ["cat", "dog", "eel"], score_thr=0.3)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(img, before)                          # input untouched
    for m in masks[:2]:
        assert (np.abs(out[m].astype(int) - img[m].astype(int)).sum(axis=1) > 0).mean() > 0.99
    np.testing.assert_array_equal(out[masks[2]], img[masks[2]])         # filtered by score_thr
    assert (out[115:, :] == img[115:, :]).all()                         # far from masks and captions
    # inside the first mask (away from its outline and caption) the colour is a blend towards its label colour
    inner = out[85, 45].astype(int) - img[85, 45].astype(int)
    direction = np.array(label_color(0)) - img[85, 45].astype(int)
    assert np.all(np.sign(inner) == np.sign(direction))


def test_draw_instances_palette_is_per_label():
    colors = [label_color(c) for c in range(22)]
    assert len(set(colors)) == 22                                           # one per TrashCan class
    assert all(len(c) == 3 and all(type(v) is int and 0 <= v <= 255 for v in c) for c in colors)   # cv2 BGR
    assert [label_color(c) for c in reversed(range(22))] == colors[::-1]    # a function of the label only


def test_draw_instances_rejects_size_mismatch():
    img, masks, labels, scores = _scene()
    with pytest.raises(ValueError):
        draw_instances(img[:100], masks, labels, scores, ["a", "b", "c"])
