"""Triton kernels of ``rtpanoptic.ops``, installed as ``rtpanoptic.kernels``.

Importing this package registers every available kernel as
``torch.ops.rtpanoptic_triton.<op>`` (same schema as ``torch.ops.rtpanoptic.<op>``),
which ``rtpanoptic.ops`` selects with ``backend="triton"``.
"""
