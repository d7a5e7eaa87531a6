"""Reading image files: the one place where a file on disk becomes pixels.

- :func:`read_image`: any image PIL opens -> uint8 ``[H, W, 3]`` RGB, with the EXIF orientation
  applied (as ``PIL.ImageOps.exif_transpose``: a phone photo tagged "rotate 90" is segmented upright)
  and every PIL mode brought to 8-bit RGB by :func:`to_rgb8`;
- :func:`read_panoptic_png`: a COCO-panoptic PNG (``id = R + 256 G + 256^2 B``) -> int64 ``[H, W]``
  segment ids; no orientation is applied to a label map;
- both refuse an image of more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`; the
  commands' option is ``data.max_pixels=N``) from its header, before decoding it.

Every problem is an :class:`ImageError` (a ``ValueError``) whose one-line message names the file.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps

from .panoptic_format import rgb2id

# 40 megapixels (a 24 MP photo passes): network + post-processing peaked at 3.4 GB for a
# 4000 x 4000 image on a CPU, about 210 bytes per pixel, so the limit is about 8.5 GB.
DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_OPTION = "data.max_pixels"

# modes whose pixels are integers wider than 8 bits, read as 16-bit (0..65535) values
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;16BS", "I;16LS")
# modes with a premultiplied alpha PIL converts only to their straight-alpha mode
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}
# colour modes a panoptic PNG may use: ids are R + 256 G + 256^2 B (P: the palette's colours)
_PANOPTIC_MODES = ("RGB", "RGBA", "RGBX", "P", "PA")

_PIL_LIMIT = threading.Lock()


class ImageError(ValueError):
    """An image file that cannot be read, or is larger than the pixel limit."""


def to_rgb8(im: Image.Image) -> np.ndarray:
    """An opened PIL image, any mode, -> uint8 ``[H, W, 3]`` RGB (no orientation is applied).

    8-bit modes convert as PIL does (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``...;
    alpha is dropped, premultiplied ``La`` / ``RGBa`` are un-premultiplied first).  Integer modes
    wider than 8 bits (``I;16``, ``I;16B``, ``I;16L``, ``I``) hold 16-bit values 0..65535 and are
    scaled to 0..255 by ``round(v / 257)`` (the inverse of 8 -> 16 bit ``v * 257``); an ``I`` image
    with values outside 0..65535 is refused, as is ``F`` (floats have no fixed range).
    Raises :class:`ImageError` (no file name; :func:`read_image` adds it)."""
    mode = im.mode
    if mode in _WIDE_INTEGER_MODES:
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(f"mode {mode} pixels lie in [{values.min()}, {values.max()}], not the 16-bit "
                             f"range 0..65535; convert the image to 8-bit RGB first")
        gray = ((values + 128) // 257).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        raise ImageError("32-bit float pixels (mode F) have no fixed range; convert the image to 8-bit RGB first")
    if mode in _PREMULTIPLIED:
        im = im.convert(_PREMULTIPLIED[mode])
    try:
        rgb = im.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"PIL cannot convert mode {mode} to RGB ({exc})") from None
    return np.array(rgb, dtype=np.uint8)  # a writable copy


@contextlib.contextmanager
def _open_checked(path: str | os.PathLike, what: str, max_pixels: int | None):
    """``Image.open`` with ``max_pixels`` (not PIL's decompression-bomb limit) checked on the header."""
    path = str(path)
    if os.path.isdir(path):
        raise ImageError(f"{path}: {what} is a folder, not a file")
    if not os.path.isfile(path):
        raise ImageError(f"{path}: {what} file not found")
    try:
        with _PIL_LIMIT, warnings.catch_warnings():
            # the limit is ours (checked below): PIL's own, a process-wide global, is off for this open
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read {what} ({exc})") from None
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageError(f"{path}: {what} of {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels "
                             f"(raise it with {MAX_PIXELS_OPTION}=N)")
        yield im


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, what: str = "image") -> np.ndarray:
    """The image file at ``path`` as uint8 ``[H, W, 3]`` RGB: EXIF orientation applied (as
    ``PIL.ImageOps.exif_transpose``), pixels of any mode converted by :func:`to_rgb8` (16-bit scaled
    to 8 bits), the first frame of a multi-frame file.  ``max_pixels``: refuse larger images (None:
    no limit).  Raises :class:`ImageError` naming the file (missing, a folder, not an image,
    truncated, too large, an unsupported mode)."""
    with _open_checked(path, what, max_pixels) as im:
        try:
            im.load()
            return to_rgb8(ImageOps.exif_transpose(im))
        except ImageError as exc:
            raise ImageError(f"{path}: {what}: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path}: cannot read {what} ({exc})") from None


def read_panoptic_png(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                      what: str = "panoptic PNG") -> np.ndarray:
    """A COCO-panoptic PNG as int64 ``[H, W]`` segment ids ``R + 256 G + 256^2 B`` (alpha ignored,
    a palette image by its colours).  Other modes (grey, 16-bit) encode no ids this way and are
    refused; no EXIF orientation is applied.  Raises :class:`ImageError` naming the file."""
    with _open_checked(path, what, max_pixels) as im:
        if im.mode not in _PANOPTIC_MODES:
            raise ImageError(f"{path}: {what} has mode {im.mode}; segment ids need RGB pixels "
                             f"(id = R + 256 G + 256^2 B), one of modes {', '.join(_PANOPTIC_MODES)}")
        try:
            return rgb2id(np.asarray(im.convert("RGB")))
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path}: cannot read {what} ({exc})") from None
