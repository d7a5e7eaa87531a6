"""Video files in and out (PyAV, the ``video`` extra): :class:`VideoReader`, :class:`VideoWriter`
and :func:`predict_video`, the job behind ``rtpanoptic predict --video IN --output OUT``.

PyAV is imported on first use; without it the error names the extra to install.  Frames are RGB
uint8 ``[H, W, 3]`` numpy arrays.  Lossy codecs (H.264, the default for .mp4 / .mkv / .mov) store
the overlays as YUV 4:2:0; the lossless ones (``ffv1``, ``png``, ``libx264rgb``) store them in RGB,
bit for bit.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from .safe_io import LOCK_NAME, RECORD_NAME, begin_run, check_outputs, locks_output, temporary_beside, write_json
from .stream import STAGES, StageTimer, latency_report

INSTALL_HINT = "pip install 'rtpanoptic[video]'"
# RGB pixel formats tried, in order, for a lossless codec (no YUV rounding)
_RGB_FORMATS = ("rgb24", "bgr24", "bgr0", "gbrp")
# container suffix -> preferred codecs, the first one this PyAV build can encode is used
_CODECS = {".webm": ("libvpx-vp9",), ".avi": ("mpeg4",), ".gif": ("gif",)}
_DEFAULT_CODECS = ("libx264", "h264", "mpeg4")


class VideoError(ValueError):
    """A video file that cannot be opened, decoded or encoded (the message says which and why)."""


def require_av():
    """The ``av`` module; ImportError with the install command when PyAV is missing."""
    try:
        import av
    except ImportError:
        raise ImportError(f"video files need PyAV: {INSTALL_HINT}") from None
    return av


class VideoReader:
    """The frames of the first video stream of ``path``, decoded in order (``for frame in reader``).

    Attributes: ``fps`` (Fraction, the stream's average rate), ``size`` ``(H, W)``,
    ``frame_count`` (from the container's header; None when it does not say).
    Raises ``FileNotFoundError`` for a missing file, :class:`VideoError` for one without video.
    """

    def __init__(self, path: str | os.PathLike):
        av = require_av()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video {self.path} does not exist")
        try:
            self.container = av.open(str(self.path))
        except av.FFmpegError as exc:
            raise VideoError(f"cannot open {self.path} as a video ({exc})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{self.path} holds no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = Fraction(rate) if rate else Fraction(30)
        self.size = (int(self.stream.codec_context.height), int(self.stream.codec_context.width))
        self.frame_count = int(self.stream.frames) or None

    def __iter__(self) -> Iterator[np.ndarray]:
        av = require_av()
        try:
            for frame in self.container.decode(self.stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode {self.path} ({exc})") from None

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def choose_codec(path: str | os.PathLike, codec: str | None = None) -> str:
    """``codec`` if this PyAV build can encode it, else the default for the file's suffix
    (.webm: VP9, .avi: MPEG-4 part 2, otherwise H.264, MPEG-4 part 2 when H.264 is missing)."""
    av = require_av()
    names = (codec,) if codec else _CODECS.get(Path(path).suffix.lower(), _DEFAULT_CODECS)
    for name in names:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.FFmpegError, ValueError):
            continue
    raise VideoError(f"no encoder for {Path(path).name}: tried {', '.join(names)} (this PyAV build lacks them)")


def check_container(path: str | os.PathLike) -> None:
    """Raise :class:`VideoError` when no FFmpeg muxer of this PyAV build writes files of ``path``'s
    suffix (FFmpeg picks the container by the suffix, as it does here), before any work."""
    av = require_av()
    suffix = Path(path).suffix.lower().lstrip(".")
    writable = set()
    for name in av.formats_available:
        with contextlib.suppress(ValueError, av.FFmpegError):
            writable.update(e.strip().lower() for e in av.ContainerFormat(name, "w").extensions)
    if suffix not in writable:
        raise VideoError(f"--output {path}: no video container is written as .{suffix} files by this PyAV build "
                         f"(use .mp4, .mkv, .avi, .webm, ...)")


def pixel_format(codec: str) -> str:
    """RGB for the lossless codecs (exact frames), YUV 4:2:0 for the others (what players expect)."""
    av = require_av()
    c = av.codec.Codec(codec, "w")
    formats = [f.name for f in (c.video_formats or [])]
    if c.lossless and not c.lossy:
        for name in _RGB_FORMATS:
            if name in formats:
                return name
    if "yuv420p" in formats or not formats:
        return "yuv420p"
    return formats[0]


class VideoWriter:
    """Encode RGB frames ``[H, W, 3]`` uint8 to ``path`` at ``fps``.

    ``codec``: an FFmpeg encoder name (default from the suffix, :func:`choose_codec`).  With a
    4:2:0 pixel format an odd width or height is padded by one edge row / column (the encoders
    need even sizes).  ``close()`` flushes the encoder and finishes the file.  ``name``: the file
    the messages name (default ``path``'s name; the user's file when ``path`` is a temporary).
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float, size: tuple[int, int],
                 codec: str | None = None, container_format: str | None = None, name: str | None = None):
        av = require_av()
        self.name = Path(path).name if name is None else name
        self.codec = choose_codec(self.name, codec)
        self.pix_fmt = pixel_format(self.codec)
        h, w = int(size[0]), int(size[1])
        self.size = (h, w)
        even = self.pix_fmt.startswith(("yuv420", "yuvj420", "yuv422", "yuvj422", "nv"))
        self._pad = (h % 2, w % 2) if even else (0, 0)
        try:
            self.container = av.open(str(path), mode="w", format=container_format)
        except (av.FFmpegError, ValueError) as exc:  # ValueError: no container for the suffix
            raise VideoError(f"cannot write {self.name} ({exc})") from None
        try:
            self.stream = self.container.add_stream(self.codec, rate=Fraction(fps).limit_denominator(1001 * 1000))
            self.stream.pix_fmt = self.pix_fmt
            self.stream.height, self.stream.width = h + self._pad[0], w + self._pad[1]
            if self.codec == "libx264":
                self.stream.options = {"crf": "20", "preset": "veryfast"}
        except av.FFmpegError as exc:
            self.container.close()
            raise VideoError(f"cannot encode {self.codec} into {self.name} ({exc})") from None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        av = require_av()
        if rgb.dtype != np.uint8 or rgb.shape != (*self.size, 3):
            raise ValueError(f"VideoWriter: frames must be uint8 {[*self.size, 3]}, got {rgb.dtype} {list(rgb.shape)}")
        if any(self._pad):
            rgb = np.pad(rgb, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except av.FFmpegError as exc:  # e.g. a codec the container cannot hold, at the header
            raise VideoError(f"cannot encode {self.codec} into {self.name} ({exc})") from None
        self.frames += 1

    def close(self) -> None:
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
        finally:
            self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stats_path_for(output: str | os.PathLike) -> Path:
    """Where :func:`predict_video` saves its latency JSON by default: ``<output stem>.latency.json``."""
    output = Path(output)
    return output.with_name(output.stem + ".latency.json")


def _check_outputs(input_path: Path, output: Path, stats_json: Path, panoptic_dir: Path | None,
                   overwrite: bool, reads=()) -> None:
    from .usage import UsageError

    if not input_path.is_file():
        raise UsageError(f"video {input_path} does not exist")
    check_outputs([("--output", output), ("--stats-json", stats_json), ("--panoptic-dir", panoptic_dir),
                   ("--panoptic-dir's", panoptic_dir / "panoptic.json" if panoptic_dir is not None else None)],
                  [("the input video", input_path), *reads])
    if output.suffix == "":
        raise UsageError(f"--output {output} needs a suffix naming the container (.mp4, .mkv, ...)")
    if overwrite:
        return
    for path in (output, stats_json):
        if path.exists():
            raise UsageError(f"{path} exists; pass --overwrite to replace it")
    if panoptic_dir is not None and panoptic_dir.is_dir() and any(
            p.name not in (LOCK_NAME, RECORD_NAME) for p in panoptic_dir.iterdir()):
        raise UsageError(f"{panoptic_dir} is not empty; pass --overwrite to write into it")


@locks_output(lambda panoptic_dir, **_: panoptic_dir, "--panoptic-dir")
def predict_video(
    predictor,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    batch_size: int = 1,
    panoptic_dir: str | os.PathLike | None = None,
    stats_json: str | os.PathLike | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    max_frames: int | None = None,
    cuda_graph: bool = False,
    alpha: float = 0.5,
    labels: bool = True,
    progress: bool = True,
    echo=print,
    reads=(),
) -> dict:
    """Panoptic segmentation of a video file: an overlay video at ``output`` (same size and frame
    rate; class names and instance ids drawn, :func:`rtpanoptic.viz.overlay`), optionally
    per-frame COCO-panoptic PNGs + ``panoptic.json`` under ``panoptic_dir`` (``frame_000000.png``,
    ...), and the per-stage latency (ms per frame: mean / p50 / p95 of decode, preprocess,
    network, postprocess, overlay, encode) and throughput, printed and saved as JSON
    (``stats_json``, default :func:`stats_path_for`).  Returns that JSON's content.

    Existing files are never replaced without ``overwrite``, and an output that is the input video,
    a file of ``reads`` (``(option, path)`` pairs, e.g. the checkpoint) or another output is
    refused (:func:`rtpanoptic.safe_io.check_outputs`), before any work; the video is written to a
    temporary file beside ``output`` and renamed when complete (mode per the umask).
    ``panoptic_dir`` holds one run (:func:`rtpanoptic.safe_io.begin_run`; with ``overwrite`` the
    previous run's recorded files are removed, other files kept; ``panoptic.json`` written last).
    Errors a user can fix raise :class:`~rtpanoptic.pipeline.UsageError`.
    """
    from tqdm import tqdm

    from .usage import UsageError
    from .viz import overlay, write_coco_panoptic, write_coco_panoptic_json

    input_path, output = Path(input_path), Path(output)
    stats_json = Path(stats_json) if stats_json is not None else stats_path_for(output)
    panoptic_dir = Path(panoptic_dir) if panoptic_dir is not None else None
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"--max-frames must be >= 1, got {max_frames}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if cuda_graph and predictor.device.type != "cuda":
        raise UsageError(f"--cuda-graph needs the model on a CUDA device, not {predictor.device.type}")
    _check_outputs(input_path, output, stats_json, panoptic_dir, overwrite, reads)
    try:
        check_container(output)
        codec = choose_codec(output, codec)  # before any work; the message names the user's file
        reader = VideoReader(input_path)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except (VideoError, OSError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    if panoptic_dir is not None:
        begin_run(panoptic_dir, keep=[input_path])
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(output, prefix=f".{output.stem}-")
    timer = StageTimer()
    pending: deque[np.ndarray] = deque()
    annotations, images = [], []
    total = reader.frame_count if max_frames is None else min(max_frames, reader.frame_count or max_frames)

    def frames():
        for i, frame in enumerate(reader):
            if max_frames is not None and i >= max_frames:
                return
            pending.append(frame)
            yield frame

    done, writer = False, None
    try:
        writer = VideoWriter(tmp, reader.fps, reader.size, codec=codec, name=output.name)
        t_start = time.perf_counter()
        bar = tqdm(total=total, desc="video", unit="frame", disable=not progress)
        n = 0
        for result in predictor.stream(frames(), batch_size=batch_size, cuda_graph=cuda_graph, timer=timer):
            frame = pending.popleft()
            if frame.shape[:2] != writer.size:
                raise UsageError(f"frame {n} is {frame.shape[1]}x{frame.shape[0]}, the video {writer.size[1]}x"
                                 f"{writer.size[0]}: frame sizes that change are not supported")
            t0 = time.perf_counter()
            drawn = overlay(frame, result, alpha=alpha, labels=labels)
            t1 = time.perf_counter()
            writer.write(drawn)
            t2 = time.perf_counter()
            timer.add("overlay", t1 - t0)
            timer.add("encode", t2 - t1)
            if panoptic_dir is not None:
                name = f"frame_{n:06d}"
                annotations.append(write_coco_panoptic(result, panoptic_dir / f"{name}.png", image_id=name))
                images.append({"id": name, "file_name": f"{name}.png", "height": frame.shape[0],
                               "width": frame.shape[1], "frame_index": n})
            n += 1
            bar.update(1)
        bar.close()
        t0 = time.perf_counter()
        writer.close()
        flush_s = time.perf_counter() - t0
        wall_s = time.perf_counter() - t_start
        if n == 0:
            raise UsageError(f"{input_path} holds no decodable frame")
        if not overwrite and output.exists():
            raise UsageError(f"{output} appeared while the video was written; pass --overwrite to replace it")
        os.replace(tmp, output)
        done = True
    except VideoError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    finally:
        reader.close()
        if not done:
            if writer is not None:
                with contextlib.suppress(Exception):  # already failing: only release the file
                    writer.container.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
    if panoptic_dir is not None:
        write_coco_panoptic_json(annotations, predictor.description, panoptic_dir / "panoptic.json", images=images)
    report = {
        "input": str(input_path), "output": str(output), "codec": writer.codec, "pixel_format": writer.pix_fmt,
        "size": list(reader.size), "video_fps": float(reader.fps), "batch_size": batch_size,
        "device": predictor.device.type, **predictor.network.describe(), "cuda_graph": cuda_graph,
        **latency_report(timer, n, wall_s), "encoder_flush_ms": 1e3 * flush_s,
        "panoptic_dir": str(panoptic_dir) if panoptic_dir is not None else None,
    }
    write_json(stats_json, report, indent=2)
    for line in format_latency(report):
        echo(line)
    echo(f"wrote {output}" + (f", {panoptic_dir}/frame_*.png + panoptic.json" if panoptic_dir else "")
         + f"; stats in {stats_json}")
    return report


def format_latency(report: dict) -> list[str]:
    """The lines :func:`predict_video` prints: one per stage, then the throughput."""
    h, w = report["size"]
    lines = [f"{report['frames']} frames {w}x{h} ({report['video_fps']:.2f} fps video), batch {report['batch_size']}, "
             f"{report['device']} {report['precision']}" + (" channels_last" if report["channels_last"] else "")
             + (" compiled" if report["compile"] else "") + (" CUDA graph" if report["cuda_graph"] else ""),
             f"  {'stage':12s} {'mean':>8s} {'p50':>8s} {'p95':>8s}  ms/frame"]
    for stage in STAGES:
        s = report["latency_ms"].get(stage)
        if s is not None:
            lines.append(f"  {stage:12s} {s['mean']:8.1f} {s['p50']:8.1f} {s['p95']:8.1f}")
    lines.append(f"  throughput {report['fps']:.2f} frames/s ({report['wall_s']:.1f} s wall)")
    return lines
