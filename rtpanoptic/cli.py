"""Command-line interface: ``rtpanoptic <command>``.

Until the network lands, ``demo`` times the ops on synthetic dense detections.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch

from . import __version__, ops


def _demo(args: argparse.Namespace) -> int:
    g = torch.Generator().manual_seed(args.seed)
    n = args.boxes
    centres = torch.rand(max(1, n // 20), 2, generator=g) * 1024
    owner = torch.randint(0, len(centres), (n,), generator=g)
    sizes = 16 + torch.rand(len(centres), 2, generator=g)[owner] * 200
    jitter = 1 + 0.1 * torch.randn(n, 4, generator=g)
    c = centres[owner]
    boxes = torch.cat([c - sizes / 2 * jitter[:, :2], c + sizes / 2 * jitter[:, 2:]], 1)
    scores = torch.rand(n, generator=g)
    print(f"rtpanoptic {__version__}; backends on cpu:")
    for op, backends in ops.available_backends("cpu").items():
        print(f"  {op:20s} {', '.join(backends)}")
    for backend in ops.available_backends("cpu")["nms"]:
        start = time.perf_counter()
        keep = ops.nms(boxes, scores, 0.5, backend=backend)
        print(f"nms[{backend}] {n} boxes -> {len(keep)} kept in {1e3 * (time.perf_counter() - start):.1f} ms")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtpanoptic", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rtpanoptic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on the built-in default")
    demo.add_argument("--boxes", type=int, default=5000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
