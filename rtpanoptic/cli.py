"""Command-line interface: ``rtpanoptic <command> [options] [key.sub=value ...]``.

Commands: ``demo`` (the built-in end-to-end job), ``train``, ``evaluate``, ``predict``,
``benchmark``, ``export``.  Each takes ``--preset`` (training presets: synthetic, cityscapes,
coco), ``--config FILE.yaml`` and trailing ``key.sub=value`` overrides of the training config
(e.g. ``schedule.max_steps=200 data.root=/data/coco``, anywhere on the line), ``--device`` and,
where ops run, ``--backend``.  Errors a user can fix (bad arguments, files and folders, checkpoints,
dataset files) print one line on stderr and exit with status 2; output locations are checked
before any long work.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__

BACKEND_CHOICES = ("reference", "cpp", "cuda", "triton")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int):
    """argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


POSITIVE = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def _common(p: argparse.ArgumentParser, preset_default: str | None = "synthetic", backend: bool = True) -> None:
    if preset_default is None:
        p.add_argument("--preset", default=None,
                       help="training preset describing the network (default: the checkpoint's own config)")
    else:
        p.add_argument("--preset", default=preset_default,
                       help=f"training preset: synthetic, cityscapes, coco (default {preset_default})")
    p.add_argument("--config", metavar="YAML", help="YAML file of training-config values (applied after the preset)")
    p.add_argument("--device", default="auto", help="auto (GPU when visible), cpu or cuda (default auto)")
    if backend:
        p.add_argument("--threads", type=POSITIVE, default=None,
                       help="CPU threads for torch (default: torch's; 1 is often fastest on a small busy CPU)")
        p.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                       help="rtpanoptic.ops backend of the post-processing (default: fastest available)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="overrides of the training config, anywhere on the line, e.g. schedule.max_steps=100 "
                        "data.root=PATH")


class _Once(argparse.Action):
    """An option that may be given once, under any of its names: a second value is refused
    (``--checkpoint A --weights B`` would otherwise keep B silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        first = getattr(namespace, self.dest, None)
        if first is not None and first is not self.default:
            names = "/".join(self.option_strings)
            parser.error(f"{names} given twice ({first} and {values}): give the weights once")
        setattr(namespace, self.dest, values)


def _weights_args(p: argparse.ArgumentParser, required: bool) -> None:
    what = "the network's weights" + ("" if required else " (default: the preset's, random weights)")
    p.add_argument("--weights", "--checkpoint", dest="checkpoint", metavar="PATH", required=required, action=_Once,
                   help=f"{what}: a checkpoint written by train / demo (last.pt), a state_dict file, or the "
                        f"authors' released cvpr_realtime_pano_cityscapes_standalone_no_prefix.pth (with "
                        f"--model tri-cityscapes-r50); read with weights_only=True, loaded strictly")
    p.add_argument("--model", metavar="NAME",
                   help="model preset of a plain state dict (r18-fpn, r34-fpn, r50-fpn, tri-cityscapes-r50); the "
                        "training preset then defaults to its dataset's (cityscapes, coco)")


def _inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="network precision (autocast; post-processing stays fp32). bf16: ~2x on CPUs with "
                        "AVX512-BF16, ~3x with AMX, and on recent GPUs (default fp32)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC network (default: where faster: CPU, and CUDA with bf16/fp16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (the first batch compiles)")
    p.add_argument("--fast", action="store_true",
                   help="the fastest settings: bf16 where the CPU (or GPU) has it natively, else fp32; channels_last; "
                        "--compile with weight freezing (the first batch of each size compiles; docs/inference.md)")
    p.add_argument("--int8", action="store_true",
                   help="int8 network on the CPU (PT2E, needs torchao: pip install 'rtpanoptic[int8]'); opt-in, it "
                        "costs accuracy (docs/inference.md); needs --calibration; the first batch of each shape compiles")
    p.add_argument("--calibration", action="append", metavar="PATH",
                   help="with --int8: an image or a folder of images whose activation ranges set the int8 scales "
                        "(a few representative ones; repeatable)")


# The command-line flag of each Predictor option named in a conflict (execution.fast_conflicts,
# quantize.int8_conflicts).
_OPTION_FLAGS = {"fast": "--fast", "precision": "--precision", "channels_last": "--[no-]channels-last",
                 "compile": "--compile"}


def _predictor_options(args, device) -> dict:
    """``Predictor`` keyword arguments of --precision / --channels-last / --compile / --fast."""
    from .execution import check_precision, fast_conflicts, run_options
    from .pipeline import UsageError

    if args.int8 or args.calibration:
        return _int8_options(args, device)
    given = fast_conflicts(args.precision, args.channels_last, args.compile) if args.fast else []
    if given:
        raise UsageError(f"--fast chooses the precision, memory format and compilation itself: "
                         f"drop {', '.join(_OPTION_FLAGS[g] for g in given)} or --fast")
    options = run_options(device, args.precision, args.channels_last, args.compile, args.fast)
    try:
        check_precision(options["precision"], device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return options


def _int8_options(args, device) -> dict:
    """``Predictor`` keyword arguments of --int8 --calibration PATH [--calibration PATH ...]: the images read."""
    import torch

    from .data.image_io import ImageError, read_image
    from .pipeline import UsageError
    from .pipeline.predict import list_images
    from .quantize import int8_conflicts, load_torchao

    if not args.int8:
        raise UsageError("--calibration is for --int8: give --int8 or drop --calibration")
    given = int8_conflicts(args.fast, args.precision, args.channels_last)
    if given:
        raise UsageError(f"--int8 runs the network in int8 itself: drop {', '.join(_OPTION_FLAGS[g] for g in given)} "
                         f"or --int8")
    if torch.device(device).type != "cpu":
        raise UsageError("--int8 runs on the CPU only (oneDNN's int8 kernels): use --device cpu")
    if not args.calibration:
        raise UsageError("--int8 needs --calibration PATH (an image or a folder of images; repeatable)")
    try:
        load_torchao()
        images = [read_image(f, what="calibration image") for f in list_images(args.calibration)]
    except (ImportError, ImageError) as exc:
        raise UsageError(str(exc)) from None
    return {"quantize": "int8", "calibration": images}


# ----------------------------------------------------------------------------------- commands
def _cmd_demo(args) -> int:
    from .demo import run_demo
    from .usage import prepare_output_dir

    out = args.output_dir or ("runs/demo-quick" if args.quick else "runs/demo")
    prepare_output_dir(out, "--output-dir")
    threads = [f"runtime.threads={args.threads}"] if args.threads is not None else []
    run_demo(out, quick=args.quick, preset=args.preset, config_path=args.config, overrides=threads + list(args.overrides),
             backend=args.backend, device=args.device, num_overlays=args.overlays, progress=not args.no_progress)
    return 0


def _cmd_train(args) -> int:
    from .engine import train
    from .pipeline import build_dataset, resolve_device, train_config
    from .safe_io import check_outputs, main_process_lock
    from .usage import prepare_output_dir

    resolve_device(args.device)
    extra = [f"runtime.device={args.device}"]
    if args.output_dir:
        extra.append(f"runtime.output_dir={args.output_dir}")
    cfg = train_config(args.preset, args.config, extra + list(args.overrides))
    resolve_device(cfg.runtime.device)
    out = Path(cfg.runtime.output_dir)
    pretrained = [("backbone.pretrained", o.split("=", 1)[1]) for o in cfg.model.overrides
                  if str(o).startswith("backbone.pretrained=")]
    check_outputs([("runtime.output_dir's", out / name) for name in ("config.yaml", "last.pt")],
                  [("--config", args.config), ("data.root", cfg.data.root), *pretrained])
    prepare_output_dir(out, "runtime.output_dir (--output-dir)")
    with main_process_lock(out, "runtime.output_dir"):  # before the dataset is made; train() holds it on
        train_set = build_dataset(cfg, cfg.data.train_split, train=True, progress=cfg.runtime.progress)
        result = train(cfg, train_set=train_set)
    print(f"trained {result.step} steps in {result.seconds:.0f} s; checkpoint: {result.checkpoint}")
    if result.metrics:
        print(", ".join(f"{k}={v:.2f}" for k, v in result.metrics.items()))
    print(f"evaluate it with: rtpanoptic evaluate --checkpoint {result.checkpoint}")
    return 0


def _config_for_checkpoint(args, checkpoint: str | None):
    """The weights file's own config (plus overrides), or --preset/--config/--model when given."""
    from .config import ConfigError, load_config
    from .engine import TrainConfig
    from .engine.config import model_train_config, validate_train_config
    from .pipeline import UsageError, checkpoint_config, train_config
    from .weights import WeightsError, read_weights

    if args.preset is not None or args.config is not None or args.model is not None or checkpoint is None:
        try:
            preset, extra = model_train_config(args.model, args.preset)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return train_config(preset, args.config, extra + list(args.overrides))
    try:
        base = checkpoint_config({"config": read_weights(checkpoint).config}, checkpoint)
    except WeightsError as exc:
        raise UsageError(str(exc)) from None
    try:
        cfg = load_config(TrainConfig, None, list(args.overrides), base=base)
        validate_train_config(cfg)
    except (ConfigError, ValueError) as exc:
        raise UsageError(f"bad config: {exc}") from None
    return cfg


def _cmd_evaluate(args) -> int:
    from .evaluation.sharded import process_group
    from .pipeline import build_dataset, check_backend, evaluate_model, load_model, resolve_device, torch_threads
    from .pipeline.evaluate import dataset_files, evaluation_outputs
    from .report import format_table
    from .safe_io import check_outputs, write_json
    from .usage import prepare_output_dir, prepare_output_file

    device = resolve_device(args.device)
    check_backend(args.backend, device)
    options = _predictor_options(args, device)  # refused before any work
    reads = [("--checkpoint", args.checkpoint), ("--config", args.config)]
    check_outputs([("--json", args.json), *evaluation_outputs(args.output_dir)], reads)
    prepare_output_dir(args.output_dir, "--output-dir")
    if args.json:
        prepare_output_file(args.json, "--json")
    cfg = _config_for_checkpoint(args, args.checkpoint)
    if args.data_root:
        cfg.data.root = args.data_root
    split = args.split or cfg.data.val_split
    # under torchrun: each rank evaluates its share of the images, rank 0 writes and reports
    with process_group(device, args.dist_timeout) as (shard, device):
        dataset = shard.main_first(lambda: build_dataset(cfg, split, progress=not args.no_progress and shard.is_main),
                                   "opening the dataset")
        if shard.is_main:
            check_outputs([("--json", args.json), *evaluation_outputs(args.output_dir)], dataset_files(dataset))
        model, _ = load_model(args.checkpoint, cfg, dataset.description, device)
        with torch_threads(args.threads):
            metrics = evaluate_model(model, dataset, args.output_dir, backend=args.backend, max_images=args.max_images,
                                     num_overlays=args.overlays, progress=not args.no_progress and shard.is_main,
                                     predictor_options=options, reads=reads)
    if not shard.is_main:
        return 0
    print(format_table(metrics, title=f"{cfg.data.name} {split}:"))
    if args.json:
        write_json(args.json, metrics, indent=2)
    print(f"wrote {Path(args.output_dir) / 'metrics.json'} and the predictions under {args.output_dir}")
    return 0


def _cmd_predict(args) -> int:
    from .pipeline import UsageError, check_backend, load_model, predict_images, resolve_device, torch_threads
    from .usage import prepare_output_dir

    if (args.video is None) == (not args.input):
        raise UsageError("predict takes image inputs (-i/--input PATH) or one --video FILE")
    device = resolve_device(args.device)
    check_backend(args.backend, device)
    reads = [("--checkpoint", args.checkpoint), ("--config", args.config)]
    if args.video is None or args.output is None:  # --video with --output elsewhere: no empty OUTPUT_DIR
        prepare_output_dir(args.output_dir, "--output-dir")
    options = _predictor_options(args, device)
    cfg = _config_for_checkpoint(args, args.checkpoint)
    model, _ = load_model(args.checkpoint, cfg, None, device)
    if args.video is not None:
        from .inference import Predictor
        from .video import predict_video

        output = args.output or str(Path(args.output_dir) / (Path(args.video).stem + ".mp4"))
        with torch_threads(args.threads):
            predict_video(Predictor(model, backend=args.backend, **options), args.video, output,
                          batch_size=args.batch_size, panoptic_dir=args.panoptic_dir, stats_json=args.stats_json,
                          overwrite=args.overwrite, codec=args.codec, max_frames=args.max_frames,
                          cuda_graph=args.cuda_graph, labels=not args.no_labels, progress=not args.no_progress,
                          reads=reads)
        return 0
    with torch_threads(args.threads):
        info = predict_images(model, args.input, args.output_dir, backend=args.backend,
                              overlays=not args.no_overlays, progress=not args.no_progress, predictor_options=options,
                              max_pixels=cfg.data.max_pixels, reads=reads)
    print(f"{info['images']} images, {info['ms_per_image']:.1f} ms/image; wrote {args.output_dir}/panoptic.json, "
          f"panoptic/*.png" + ("" if args.no_overlays else ", overlays/*.png"))
    for reason in info["skipped"]:  # unreadable images are skipped and reported, exit status 2
        print(f"rtpanoptic predict: error: skipped {reason}", file=sys.stderr)
    return 2 if info["skipped"] else 0


def _model_for(args, device):
    from .pipeline import build_network, load_model

    cfg = _config_for_checkpoint(args, args.checkpoint)
    if args.checkpoint:
        return load_model(args.checkpoint, cfg, None, device)[0]
    return build_network(cfg).to(device).eval()


def _cmd_benchmark(args) -> int:
    from .benchmark import run_benchmark
    from .pipeline import check_backend, resolve_device, torch_threads
    from .safe_io import check_outputs, write_json
    from .usage import prepare_output_file

    device = resolve_device(args.device)
    check_backend(args.backend, device)
    check_outputs([("--json", args.json)], [("--checkpoint", args.checkpoint), ("--config", args.config)])
    if args.json:
        prepare_output_file(args.json, "--json")
    options = _predictor_options(args, device)
    model = _model_for(args, device)
    with torch_threads(args.threads):
        report = run_benchmark(model, tuple(args.image_size), batch=args.batch, iters=args.iters,
                               backend=args.backend, ops_too=not args.no_ops, predictor_options=options)
    if args.json:
        write_json(args.json, report, indent=2)
    print("for the full op / kernel suite (pytest-benchmark): make bench; results in benchmarks/RESULTS.md")
    return 0


def _cmd_export(args) -> int:
    from .export import ExportError, export_onnx, export_panoptic_program
    from .pipeline import UsageError, resolve_device
    from .safe_io import check_outputs, replacing
    from .usage import prepare_output_file

    device = resolve_device("cpu")
    out = args.output or ("model.onnx" if args.format == "onnx" else "model.pt2")
    check_outputs([("--output", out)], [("--checkpoint", args.checkpoint), ("--config", args.config)])
    out = prepare_output_file(out, "--output")
    model = _model_for(args, device)
    try:
        if args.format == "onnx":
            errors = export_onnx(model, out, image_size=tuple(args.image_size), opset=args.opset, check=not args.no_check)
            msg = f"max |onnxruntime - PyTorch| = {max(errors.values()):.2e}" if errors else "not checked"
        else:
            import torch

            program = export_panoptic_program(model, image_size=tuple(args.image_size), check=not args.no_check)
            with replacing(out) as tmp:
                torch.export.save(program, str(tmp))
            msg = "network + post-processing, rtpanoptic.export.PanopticProgram; import rtpanoptic before torch.export.load"
    except (ValueError, ExportError) as exc:
        raise UsageError(f"export failed: {exc}".splitlines()[0]) from None
    print(f"wrote {out} ({args.format}; {msg})")
    return 0


# ----------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rtpanoptic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rtpanoptic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="generate the synthetic set, train, evaluate, write figures (the README's main job)",
                       description="From nothing: generate the synthetic panoptic dataset, train a small model, "
                                   "evaluate PQ/SQ/RQ, mIoU and mask AP on the held-out split, write COCO-panoptic "
                                   "predictions, overlays, a figure and results.json. 6-10 minutes on a 2-core "
                                   "CPU (at most 15); --quick: about a minute.")
    _common(p)
    p.add_argument("--quick", action="store_true", help="smoke run: few images and steps (about a minute on a CPU)")
    p.add_argument("--output-dir", help="where everything goes (default runs/demo, runs/demo-quick with --quick)")
    p.add_argument("--overlays", type=NON_NEGATIVE, default=8, help="overlay PNGs to write (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a network (rtpanoptic.engine.train)",
                       description="Train with a preset + YAML + overrides; checkpoints go to runtime.output_dir. "
                                   "Multi-GPU: torchrun --nproc_per_node=N -m rtpanoptic train ...")
    _common(p, backend=False)
    p.add_argument("--output-dir", help="runtime.output_dir (checkpoints, config.yaml)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="checkpoint + dataset -> PQ / mIoU / AP table and JSON",
                       description="Evaluate a training checkpoint on a dataset split: writes COCO-panoptic "
                                   "predictions, overlays and metrics.json; prints the table.")
    _common(p, preset_default=None)
    _weights_args(p, required=True)
    p.add_argument("--data-root", help="dataset folder (data.root; default: the checkpoint's)")
    p.add_argument("--split", help="split to evaluate (default data.val_split)")
    p.add_argument("--output-dir", default="runs/eval", help="where predictions and metrics go (default runs/eval)")
    p.add_argument("--max-images", type=POSITIVE, help="evaluate only the first N images")
    p.add_argument("--overlays", type=NON_NEGATIVE, default=8, help="overlay PNGs to write (default 8)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dist-timeout", type=_seconds, default=1800.0, metavar="S",
                   help="under torchrun --nproc_per_node=N (images sharded over the ranks, gathered on rank 0): "
                        "give up, with an error, when a rank does not answer within S seconds (default 1800)")
    _inference_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="images, folders or a video -> panoptic PNG/JSON + overlays",
                       description="Run a checkpoint on image files or folders (COCO-panoptic PNGs + panoptic.json "
                                   "and overlay PNGs), or on a video (--video: an overlay video, optional per-frame "
                                   "panoptic PNGs, per-stage latency printed and saved as JSON; needs PyAV: "
                                   "pip install 'rtpanoptic[video]').")
    _common(p, preset_default=None)
    _weights_args(p, required=True)
    p.add_argument("-i", "--input", action="append", metavar="PATH",
                   help="an image file or a folder of images (repeatable); EXIF orientation is applied, 16-bit "
                        "images are scaled to 8 bits, images over data.max_pixels=N (default 40 megapixels) are "
                        "refused; an unreadable image is skipped and reported (exit status 2), the others written")
    p.add_argument("--output-dir", default="runs/predict", help="default runs/predict")
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _inference_args(p)
    v = p.add_argument_group("video (--video)")
    v.add_argument("--video", metavar="FILE", help="a video file to segment frame by frame")
    v.add_argument("--output", metavar="FILE",
                   help="the overlay video (default OUTPUT_DIR/<video stem>.mp4); its suffix picks the container")
    v.add_argument("--overwrite", action="store_true", help="replace existing output files (refused otherwise)")
    v.add_argument("--batch-size", type=POSITIVE, default=1, help="frames per forward pass (default 1)")
    v.add_argument("--panoptic-dir", metavar="DIR", help="also write per-frame COCO-panoptic PNGs + panoptic.json here")
    v.add_argument("--stats-json", metavar="FILE", help="latency JSON (default <output stem>.latency.json)")
    v.add_argument("--codec", help="FFmpeg encoder, e.g. libx264, mpeg4, ffv1 (lossless; .mkv) (default by suffix)")
    v.add_argument("--max-frames", type=POSITIVE, help="stop after N frames")
    v.add_argument("--cuda-graph", action="store_true", help="replay the network from a CUDA graph (GPU, fixed size)")
    v.add_argument("--no-labels", action="store_true", help="no class names / instance ids on the overlay")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("benchmark", help="op timings and end-to-end timings, in-process",
                       description="Time the network, the post-processing and the ops of the pipeline on random "
                                   "images (a checkpoint's network or a preset's, untrained). The full suite: make bench.")
    _common(p, preset_default=None)
    _weights_args(p, required=False)
    p.add_argument("--image-size", type=POSITIVE, nargs=2, default=(256, 512), metavar=("H", "W"))
    p.add_argument("--batch", type=POSITIVE, default=1)
    p.add_argument("--iters", type=POSITIVE, default=5)
    p.add_argument("--no-ops", action="store_true", help="skip the per-op, per-backend timings")
    p.add_argument("--json", help="write the timings to this JSON file (its folder is created)")
    _inference_args(p)
    p.set_defaults(func=_cmd_benchmark)

    p = sub.add_parser("export", help="ONNX (checked with onnxruntime) or torch.export program",
                       description="Export a checkpoint's network (or a preset's) to ONNX, checked against "
                                   "onnxruntime, or to a torch.export program (.pt2) of the whole predictor for one image "
                                   "(rtpanoptic.export.PanopticProgram).")
    _common(p, preset_default=None, backend=False)
    _weights_args(p, required=False)
    p.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    p.add_argument("--output", help="output file (default model.onnx / model.pt2)")
    p.add_argument("--image-size", type=POSITIVE, nargs=2, default=(256, 256), metavar=("H", "W"),
                   help="fixed input size, multiples of 128 (default 256 256)")
    p.add_argument("--opset", type=POSITIVE, default=18, help="ONNX opset, >= 17 (default 18)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime / re-run comparison")
    p.set_defaults(func=_cmd_export)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Exceptions whose one-line message tells a user what to fix (exit status 2)."""
    from .config import ConfigError
    from .data import DatasetError
    from .data.image_io import ImageError
    from .engine.checkpoint import CheckpointError
    from .engine.trainer import NonFiniteLossError
    from .evaluation.panoptic_quality import PQError
    from .usage import UsageError

    return UsageError, ConfigError, DatasetError, ImageError, PQError, CheckpointError, NonFiniteLossError


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    # argparse binds the trailing overrides once; those after an option arrive here
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        print(f"rtpanoptic {args.command}: error: unrecognized arguments: {' '.join(stray)} "
              f"(see rtpanoptic {args.command} --help)", file=sys.stderr)
        return 2
    args.overrides = list(args.overrides) + extra
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        print(f"rtpanoptic {args.command}: error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rtpanoptic {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
