"""Building blocks of the command line, a module per job; :class:`UsageError` is what a user can
fix (a missing folder, a checkpoint of another architecture, CUDA without a GPU, an unknown preset):
the CLI prints it as one line and exits 2.

- :mod:`.config`: :func:`train_config` -> a :class:`~rtpanoptic.engine.TrainConfig` from a preset, a
  YAML file and ``key.sub=value`` overrides; :func:`build_dataset`;
- :mod:`.device`: :func:`resolve_device`, :func:`torch_threads`, :func:`check_backend`;
- :mod:`.checkpoints`: :func:`load_model` -> the network of a training checkpoint;
- :mod:`.evaluate`: :func:`evaluate_model` -> PQ / SQ / RQ (from COCO-panoptic files written next to
  the ground truth), mIoU and mask AP of a model on a dataset, with overlays;
- :mod:`.predict`: :func:`predict_images` -> panoptic PNG + JSON and overlays for image files.
"""
from ..usage import UsageError
from .checkpoints import build_network, checkpoint_config, load_model
from .config import build_dataset, check_data_root, train_config
from .device import check_backend, resolve_device, torch_threads
from .evaluate import evaluate_model, write_subset_gt
from .predict import IMAGE_SUFFIXES, list_images, output_names, predict_images

__all__ = [
    "IMAGE_SUFFIXES",
    "UsageError",
    "build_dataset",
    "build_network",
    "check_backend",
    "check_data_root",
    "checkpoint_config",
    "evaluate_model",
    "list_images",
    "load_model",
    "output_names",
    "predict_images",
    "resolve_device",
    "torch_threads",
    "train_config",
    "write_subset_gt",
]
