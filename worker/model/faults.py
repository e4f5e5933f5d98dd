"""Which of the model's errors mean the device itself is broken, not the batch it ran.

A CUDA error (an illegal memory access, a device-side assert, a device fallen off the bus) leaves the process's
CUDA context unusable: every later call fails too. Retrying such a batch image by image would fail each image,
and every later batch's, while the worker kept taking jobs; so it is a DeviceFailure, which stops the worker
(worker/health.py) and sends its jobs elsewhere. Running out of memory is the batch's size's problem, cured by
smaller batches, until a batch of one image runs out: then no batch fits.
"""

from __future__ import annotations

import torch

from common.errors import DeviceFailure

# CUDA failures that some code paths (cuBLAS, cuDNN, older kernels) raise as plain RuntimeErrors.
_DEVICE_MESSAGES = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error", "device-side assert")


def device_failure(error: Exception, batch_size: int) -> DeviceFailure | None:
    """The DeviceFailure that `error`, raised by a batch of `batch_size` images, amounts to; None when it concerns
    the batch alone (its images are then retried one by one)."""
    if isinstance(error, torch.OutOfMemoryError):
        return DeviceFailure(f"Out of memory on a batch of one image: {error}") if batch_size == 1 else None
    if isinstance(error, torch.AcceleratorError) or any(text in str(error) for text in _DEVICE_MESSAGES):
        return DeviceFailure(f"The device failed: {error}")
    return None
