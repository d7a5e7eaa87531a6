import numpy as np
import pytest

from rtpanoptic.data.panoptic_format import id2rgb, rgb2id


def test_encoding_hand_computed_and_roundtrip():
    ids = np.array([[0, 1, 256], [65536, 65536 + 256 + 7, 256**3 - 1]])
    rgb = id2rgb(ids)
    assert rgb[0, 2].tolist() == [0, 1, 0]
    assert rgb[1, 1].tolist() == [7, 1, 1]
    assert np.array_equal(rgb2id(rgb), ids)


def test_bad_input():
    with pytest.raises(ValueError, match="256"):
        id2rgb(np.array([[256**3]]))
    with pytest.raises(ValueError, match="H, W, 3"):
        rgb2id(np.zeros((4, 4)))
