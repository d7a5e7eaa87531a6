"""Prediction on image files: inputs, distinct output names, panoptic PNG + JSON and overlays."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from ..data.image_io import DEFAULT_MAX_PIXELS
from ..safe_io import begin_run, check_outputs, locks_output
from ..usage import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[str]) -> list[Path]:
    """Image files of ``inputs`` (files, or folders scanned for image suffixes, sorted); a file
    reached twice (given twice, or given and inside a given folder) is listed once."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"folder {p} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"input {p} does not exist")
    if not files:
        raise UsageError("no input image given")
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def output_names(files: Sequence[Path]) -> list[str]:
    """Distinct names (image ids, output stems) for ``files``: the stem; ``<stem>_<suffix>`` for
    files sharing a stem (``img.png``, ``img.jpg`` -> ``img_png``, ``img_jpg``); then ``_2``,
    ``_3``... for names still taken (same file name in two folders)."""
    from collections import Counter

    stems = Counter(p.stem for p in files)
    wanted = [p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in files]
    reserved = set(wanted)
    names: list[str] = []
    used: set[str] = set()
    for name in wanted:
        candidate, k = name, 1
        while candidate in used or (candidate != name and candidate in reserved):
            k += 1
            candidate = f"{name}_{k}"
        names.append(candidate)
        used.add(candidate)
    return names


@locks_output(lambda out_dir, **_: out_dir, "--output-dir")
def predict_images(model, inputs: Sequence[str], out_dir: str | os.PathLike, backend: str | None = None,
                   overlays: bool = True, progress: bool = True, predictor_options: dict | None = None,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS, reads: Sequence[tuple[str, str]] = ()) -> dict:
    """Panoptic segmentation of image files: ``out_dir/panoptic/<name>.png`` + ``panoptic.json``
    (COCO panoptic, the model's dataset category ids) and ``out_dir/overlays/<name>.png``, with
    ``<name>`` from :func:`output_names` (distinct for every input, also the image id).
    ``predictor_options``: Predictor keyword arguments (``precision``, ``channels_last``, ``compile``).

    Images are read by :func:`rtpanoptic.data.image_io.read_image` (EXIF orientation applied, 16-bit
    scaled to 8 bits, at most ``max_pixels`` pixels).  An image that cannot be read (truncated, not
    an image, too large) is skipped and reported: the others are predicted and listed in
    ``panoptic.json``, and the returned ``"skipped"`` holds one ``"<file>: <reason>"`` per skipped
    image (the CLI prints them and exits with status 2).  UsageError when no image could be read.

    ``out_dir`` holds one run (:func:`rtpanoptic.safe_io.begin_run`): it is locked against other
    runs; an output that would replace an input image (or a file of ``reads``, ``(option, path)``
    pairs such as the checkpoint) is a :class:`UsageError` before any work; the files an earlier
    run recorded there are removed first (``panoptic.json`` first of all), other files are left
    alone; ``panoptic.json`` is written last, so it lists exactly this run's PNGs, and an
    interrupted run leaves none."""
    from tqdm import tqdm

    from ..data.image_io import ImageError, read_image
    from ..inference import Predictor
    from ..viz import write_coco_panoptic, write_coco_panoptic_json, write_overlay

    files = list_images(inputs)
    names = output_names(files)
    out = Path(out_dir)
    written = [out / "panoptic.json"] + [out / sub / f"{n}.png" for sub in ("panoptic",) + ("overlays",) * overlays
                                         for n in names]
    check_outputs([("--output-dir's file", p) for p in written], [("the input", f) for f in files] + list(reads))
    begin_run(out, keep=files)
    predictor = Predictor(model, backend=backend, **(predictor_options or {}))
    annotations, images, skipped = [], [], []
    seconds = 0.0
    for path, name in tqdm(list(zip(files, names)), desc="predict", unit="img", disable=not progress):
        try:
            image = read_image(path, max_pixels)
        except ImageError as exc:
            skipped.append(str(exc))
            continue
        t0 = time.perf_counter()
        result = predictor(image)[0]
        seconds += time.perf_counter() - t0
        annotations.append(write_coco_panoptic(result, out / "panoptic" / f"{name}.png", image_id=name))
        images.append({"id": name, "file_name": path.name, "height": image.shape[0], "width": image.shape[1]})
        if overlays:
            write_overlay(image, result, out / "overlays" / f"{name}.png")
    if not images:
        raise UsageError(f"no input image could be read: {skipped[0]}" + (
            f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""))
    write_coco_panoptic_json(annotations, model.description, out / "panoptic.json", images=images)
    return {"images": len(images), "ms_per_image": 1e3 * seconds / len(images), "output_dir": str(out),
            "skipped": skipped}
