"""rtpanoptic.data.image_io: every PIL mode becomes 8-bit RGB, 16-bit scaled (not clipped), EXIF
orientation applied, a pixel limit read from the header, and one-line errors naming the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from rtpanoptic.data.image_io import ImageError, read_image, read_panoptic_png, to_rgb8

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (5, 7), dtype=np.uint8)

# 8-bit modes: PIL's own conversion to RGB is the reference (alpha dropped)
EIGHT_BIT = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "RGBX", "RGBa", "La"]


@pytest.mark.parametrize("mode", EIGHT_BIT)
def test_every_8_bit_mode_reads_as_pil_converts_it(mode, tmp_path):
    im = Image.fromarray(RGB).convert(mode) if mode not in ("La", "PA") else None
    if mode == "La":
        im = Image.fromarray(GRAY).convert("LA").convert("La")
        want = np.repeat(np.asarray(Image.fromarray(GRAY))[..., None], 3, 2)  # opaque: un-premultiplied = grey
    elif mode == "PA":
        im = Image.fromarray(RGB).convert("P").convert("PA")
        want = np.asarray(Image.fromarray(RGB).convert("P").convert("RGB"))
    else:
        want = np.asarray(im.convert("RGB"))
    got = to_rgb8(im)
    assert got.dtype == np.uint8 and got.shape == (5, 7, 3) and got.flags.writeable
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_16_bit_modes_are_scaled_not_clipped(mode):
    values = np.array([[0, 1, 128, 129, 257, 32767], [32768, 40000, 65278, 65279, 65534, 65535]], np.uint16)
    if mode == "I":
        im = Image.fromarray(values.astype(np.int32), mode="I")
    else:
        im = Image.frombytes(mode, (6, 2), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    got = to_rgb8(im)
    want = np.floor(values / 257 + 0.5).astype(np.uint8)  # nearest 8-bit level (8 -> 16 bit is v * 257)
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, 2))
    assert got[0, 0, 0] == 0 and got[1, 5, 0] == 255


def test_8_bit_levels_survive_a_16_bit_round_trip(tmp_path):
    Image.fromarray(GRAY.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png"), np.repeat(GRAY[..., None], 3, 2))


def test_modes_without_a_fixed_range_are_refused(tmp_path):
    with pytest.raises(ImageError, match="mode F"):
        to_rgb8(Image.fromarray(np.ones((2, 2), np.float32)))
    with pytest.raises(ImageError, match="not the 16-bit range"):
        to_rgb8(Image.fromarray(np.array([[-1, 70000]], np.int32), mode="I"))
    Image.fromarray(np.ones((2, 2), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match=r"f\.tif: image: 32-bit float"):
        read_image(tmp_path / "f.tif")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_exif_transpose(orientation, tmp_path):
    stored = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "p.png", exif=exif.tobytes())  # lossless: exact pixels
    # the eight EXIF orientations, written out: 6 = rotate 90 clockwise to display
    upright = {1: stored, 2: stored[:, ::-1], 3: stored[::-1, ::-1], 4: stored[::-1],
               5: stored.transpose(1, 0, 2), 6: np.rot90(stored, -1), 7: stored[::-1, ::-1].transpose(1, 0, 2),
               8: np.rot90(stored, 1)}[orientation]
    got = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(got, upright)
    np.testing.assert_array_equal(got, np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "p.png"))))


def test_panoptic_png_is_never_rotated_and_needs_rgb(tmp_path):
    ids = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(ids).save(tmp_path / "pan.png", exif=exif.tobytes())
    r, g, b = (ids[..., k].astype(np.int64) for k in range(3))
    want = r + 256 * g + 65536 * b
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "pan.png"), want)
    Image.fromarray(GRAY).save(tmp_path / "gray.png")
    with pytest.raises(ImageError, match=r"gray\.png: panoptic PNG has mode L; segment ids need RGB"):
        read_panoptic_png(tmp_path / "gray.png")


def test_pixel_limit_from_the_header(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "x.png")
    assert read_image(tmp_path / "x.png", max_pixels=35).shape == (5, 7, 3)
    with pytest.raises(ImageError, match=r"x\.png: image of 7x5 = 35 pixels exceeds the limit of 34 pixels "
                                         r"\(raise it with data\.max_pixels=N\)"):
        read_image(tmp_path / "x.png", max_pixels=34)
    assert read_image(tmp_path / "x.png", max_pixels=None).shape == (5, 7, 3)


def test_pil_limit_is_restored_and_ours_replaces_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # PIL would refuse (2x over its limit: an error)
    Image.fromarray(RGB).save(tmp_path / "x.png")
    assert read_image(tmp_path / "x.png", max_pixels=100).shape == (5, 7, 3)
    assert Image.MAX_IMAGE_PIXELS == 10


@pytest.mark.parametrize("case,match", [
    ("missing", "image file not found"), ("folder", "image is a folder"), ("text", "cannot read image"),
    ("truncated", "truncated"),
])
def test_unreadable_files_name_the_file(case, match, tmp_path):
    path = tmp_path / "x.png"
    if case == "folder":
        path.mkdir()
    elif case == "text":
        path.write_text("not an image")
    elif case == "truncated":
        Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageError, match=match) as info:
        read_image(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
