"""JPEGs decoded on the model's GPU (nvJPEG, through torchvision): `GpuJpegDecoding`, for
CAPTIONER_DECODE_JPEG_ON_GPU. Opt-in, and not yet run end to end on a GPU: a GPU run promotes or removes it as a
unit (it is one implementation of worker/decode/base.py's interface, with jpeg_split.py).

A many-core host cannot decode JPEGs as fast as an H200 captions them (BENCHMARKS.md, "Worker path from JPEG
bytes, one H200"; bench/results/2026-11-30-gpu-jpeg-in-worker.md).
So a job's thread leaves a JPEG that nvJPEG decodes as Pillow would (`device_jpeg`: baseline, RGB or grey,
complete, within the pixel limit) encoded, and the batch's `finish` decodes its JPEGs at once on the GPU and
resizes them there (`DeviceJpegDecoder`); with decoding processes too, it gives them a share of the batch's large
JPEGs to decode meanwhile (jpeg_split.py).
Everything else is decoded on the CPU as before, and so is a JPEG that nvJPEG refuses after all: one that fails
there too fails alone.

Pixels differ a little from the CPU path's: nvJPEG's IDCT and chroma upsampling are not libjpeg's, the GPU
decodes every pixel where Pillow decodes a large JPEG at a reduced scale, and the resize is torch's bicubic with
antialiasing rather than Pillow's (tests bound the difference; the benches print it, and how many of the tiny
model's captions of rendered scenes stay right).

torch and Pillow only, torchvision imported when asked for: the model code stays importable on machines that
have only torch, transformers and pillow, and torchvision is on GPU hosts (the pytorch images), not ours.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.nn import functional

from common.errors import ImageError
from worker.decode.base import BatchItem, DecodedBatch, Decoding, DeviceJpeg, StoredObject
from worker.decode.images import MAX_JPEG_PIXELS
from worker.decode.jpeg_split import DecodeCosts, processes_share
from worker.model.fit import HostImage, ModelImage

log = logging.getLogger(__name__)

# A batch's JPEGs go to nvJPEG this many at a time: torchvision decodes a list in one call, faster than one by one,
# and a list of baseline JPEGs on the GPU's JPEG engines where it has them (A100s, H100s: its hardware backend),
# beside the cores the model uses. Decoded 4000x3000 images take 36 MB each.
DECODE_CHUNK = 32
# Decoded images are resized this many pixels at a time: the resize works in float32, 12 bytes a pixel, so this
# bounds it near 0.8 GB (five 12 MP photos, or a batch of 200 640x480 ones) beside the model's memory.
RESIZE_PIXELS = 64_000_000
# JPEGs in a row that the GPU failed on and the CPU decoded, after which the GPU's decoder is taken for broken.
GIVE_UP_AFTER = 32
_ORIENTATION_TAG = 0x0112
_JPEG_END = b"\xff\xd9"

DecodeJpeg = Callable[..., list[torch.Tensor]]


class JpegProcesses(Protocol):
    """The worker's decoding processes (DecodePool), as the GPU's decoder shares large JPEGs with them."""

    processes: int

    def decode(self, data: bytes) -> HostImage: ...


def device_jpeg(data: bytes, max_pixels: int = MAX_JPEG_PIXELS) -> DeviceJpeg | None:
    """These bytes left encoded, when nvJPEG can decode them as Pillow would; else None (decode on the CPU).

    Reads only the headers. Left to the CPU, which decodes them or says clearly why not: what is not a JPEG,
    progressive and CMYK JPEGs and those that store RGB rather than YCbCr, files that do not end where a JPEG
    ends (truncated, or with data appended), images over the pixel limit."""
    if not data.endswith(_JPEG_END):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the CPU path reports it
            image = Image.open(io.BytesIO(data))
            if image.format != "JPEG" or image.mode not in ("RGB", "L") or "progressive" in image.info:
                return None
            if image.info.get("adobe_transform") == 0:  # RGB stored as RGB, not YCbCr: rare, and nvJPEG unproven
                return None
            width, height = image.size
            if width * height > max_pixels:
                return None
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a crafted header or EXIF block raises anything; the CPU's decoder says what is wrong
        return None
    return DeviceJpeg(data, orientation if orientation in range(1, 9) else 1, width * height)


class GpuJpegDecoding:
    """The Decoding that leaves JPEGs encoded on the job's thread and decodes them on the GPU as each batch is
    finished (worker/decode/base.py); everything else, and every JPEG once the GPU's decoder has given up
    (DeviceJpegDecoder.working), goes to the CPU's decoding (`cpu`)."""

    def __init__(self, gpu: DeviceJpegDecoder, cpu: Decoding) -> None:
        self.gpu = gpu
        self.cpu = cpu

    def load(self, source: bytes | StoredObject) -> BatchItem:
        # Fetched here, not by a decoding process: the JPEG must stay encoded for the GPU.
        data = source.read() if isinstance(source, StoredObject) else source
        jpeg = device_jpeg(data) if self.gpu.working else None
        return self.cpu.load(data) if jpeg is None else jpeg

    def finish(self, items: Sequence[BatchItem]) -> DecodedBatch:
        jpegs = [item for item in items if isinstance(item, DeviceJpeg)]
        decoded = iter(self.gpu.fitted(jpegs) if jpegs else [])
        finished = [next(decoded) if isinstance(item, DeviceJpeg) else item for item in items]
        return DecodedBatch.of(finished, on_device=sum(isinstance(item, torch.Tensor) for item in finished))

    def close(self) -> None:
        self.gpu.close()
        self.cpu.close()


def load_nvjpeg() -> DecodeJpeg:
    """torchvision's decode_jpeg, which decodes on a CUDA device with nvJPEG. Raises ImportError without it."""
    import torchvision.io  # type: ignore[import-not-found]  # on GPU hosts only (the pytorch images)

    decode_jpeg: DecodeJpeg = torchvision.io.decode_jpeg
    rgb = torchvision.io.ImageReadMode.RGB

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return decode_jpeg(data, mode=rgb, device=device)

    return decode


def oriented(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[3, height, width] pixels as EXIF `orientation` says to show them (ImageOps.exif_transpose's moves)."""
    if orientation in (5, 6, 7, 8):  # these four swap width and height
        image = image.transpose(1, 2)
        # Transposed, these are now 1 (transpose), 2 after a mirror (rotate 270: 6), 3 (transverse: 7), 4 (8).
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        image = image.flip(2)
    if orientation in (3, 4):
        image = image.flip(1)
    return image


class DeviceJpegDecoder:
    """Decodes and resizes a batch's DeviceJpegs on the model's device."""

    def __init__(
        self,
        decode_jpeg: DecodeJpeg,
        device: torch.device,
        size: tuple[int, int],
        on_cpu: Callable[[bytes], HostImage],
        processes: JpegProcesses | None = None,
    ) -> None:
        """`decode_jpeg(list of uint8 CPU tensors, device=device)` gives [3, h, w] uint8 RGB tensors on `device`
        (load_nvjpeg); `size` is the model's (width, height); `on_cpu(data)` decodes what nvJPEG will not, and
        raises ImageError for what cannot be decoded at all. With `processes` (the worker's decoding processes),
        each batch's large JPEGs are shared with them (worker/decode/jpeg_split.py)."""
        self._decode_jpeg = decode_jpeg
        self._warned = False
        self._failed_in_a_row = 0
        self._timed_calls = 0
        self.working = True  # False once the GPU failed GIVE_UP_AFTER JPEGs in a row that the CPU decoded
        self.device = device
        self.width, self.height = size
        self._on_cpu = on_cpu
        self._processes = processes
        self.costs = DecodeCosts()
        # One thread per process, each waiting on its process's image: the batch preparer's own thread drives nvJPEG.
        self._sharing = (ThreadPoolExecutor(processes.processes, thread_name_prefix="jpeg-share")
                         if processes is not None else None)

    def close(self) -> None:
        """Stop the threads that wait on the decoding processes' shares."""
        if self._sharing is not None:
            self._sharing.shutdown(wait=True)

    def fitted(self, jpegs: Sequence[DeviceJpeg]) -> list[ModelImage | ImageError]:
        """Each JPEG at the model's input size: [height, width, 3] uint8 on the device; a HostImage where a process
        took it, or the CPU after nvJPEG failed on it; its ImageError where the CPU failed too."""
        shared: dict[int, Future[HostImage | ImageError]] = {}
        if self._sharing is not None and self._processes is not None and self.working:
            chosen = processes_share([jpeg.pixels for jpeg in jpegs], self._processes.processes, self.costs)
            shared = {index: self._sharing.submit(self._decoded_on_a_process, jpegs[index]) for index in chosen}
            if not shared:
                self.costs.forget_process()
        on_device = iter(self._fitted_on_device([jpeg for index, jpeg in enumerate(jpegs) if index not in shared]))
        return [shared[index].result() if index in shared else next(on_device) for index in range(len(jpegs))]

    def _decoded_on_a_process(self, jpeg: DeviceJpeg) -> HostImage | ImageError:
        assert self._processes is not None
        started = time.perf_counter()
        try:
            picture = self._processes.decode(jpeg.data)
        except ImageError as exc:
            return exc
        except RuntimeError:  # the pool is closing (the worker is stopping): this batch still gets its images
            return self._decoded_on_cpu(jpeg.data)
        self.costs.learn_process(jpeg.pixels, time.perf_counter() - started)
        return picture

    def _fitted_on_device(self, jpegs: Sequence[DeviceJpeg]) -> list[ModelImage | ImageError]:
        """`fitted` on the GPU. A chunk is resized before the next is decoded, so a batch of 12 MP photos never
        holds more than a chunk of them at full size."""
        fitted: list[ModelImage | ImageError] = []
        for start in range(0, len(jpegs), DECODE_CHUNK):
            decoded = self._decoded(jpegs[start : start + DECODE_CHUNK])
            on_device = {index: image for index, image in enumerate(decoded) if isinstance(image, torch.Tensor)}
            for index, image in zip(on_device, self._resized(list(on_device.values())), strict=True):
                decoded[index] = image
            fitted.extend(decoded)
        return fitted

    def _decoded(self, chunk: Sequence[DeviceJpeg]) -> list[ModelImage | ImageError]:
        """Full-size [3, h, w] tensors, oriented; one failing JPEG fails nvJPEG's whole call, so then each alone."""
        if not self.working:
            return [self._decoded_on_cpu(jpeg.data) for jpeg in chunk]
        started = time.perf_counter()
        try:
            images = self._decode_jpeg([_as_tensor(jpeg.data) for jpeg in chunk], device=self.device)
        except (RuntimeError, ValueError) as exc:  # torchvision's checks raise these; nvJPEG's come as the first
            if len(chunk) == 1:
                return [self._after_failure(chunk[0].data, exc)]
            return [image for jpeg in chunk for image in self._decoded([jpeg])]
        self._failed_in_a_row = 0
        self._timed_calls += 1
        if self._timed_calls > 1:  # the first call sets nvJPEG up
            self.costs.learn_gpu(sum(jpeg.pixels for jpeg in chunk), time.perf_counter() - started)
        return [oriented(image, jpeg.orientation) for image, jpeg in zip(images, chunk, strict=True)]

    def _after_failure(self, data: bytes, exc: Exception) -> HostImage | ImageError:
        """The CPU's decoding of a JPEG the GPU failed on. Damaged files fail there now and then, and fail on the
        CPU too; JPEGs the CPU decodes failing on the GPU again and again mean the GPU's decoder is broken (a
        library or driver gone wrong), and decoding each batch twice would slow the worker down many times: then
        the GPU is given up, loudly, until the worker restarts."""
        log.log(logging.DEBUG if self._warned else logging.WARNING,
                "the GPU could not decode a JPEG (%s); decoding it on the CPU", exc)
        self._warned = True
        decoded = self._decoded_on_cpu(data)
        if not isinstance(decoded, ImageError):
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= GIVE_UP_AFTER and self.working:
                self.working = False
                log.error("the GPU failed on %d JPEGs in a row that the CPU decoded (last: %s): JPEGs are decoded "
                          "on the CPU from now on, until the worker restarts", self._failed_in_a_row, exc)
        return decoded

    def _decoded_on_cpu(self, data: bytes) -> HostImage | ImageError:
        try:
            return self._on_cpu(data)
        except ImageError as exc:
            return exc

    def _resized(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """[height, width, 3] uint8 at the model's size, rounded as Pillow's uint8 pixels are. Images of one
        shape are resized together, within RESIZE_PIXELS at a time."""
        if not images:
            return []
        out: list[torch.Tensor] = [images[0]] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(index)
        for (_, height, width), indices in by_shape.items():
            step = max(1, RESIZE_PIXELS // (height * width))
            for start in range(0, len(indices), step):
                group = indices[start : start + step]
                pixels = torch.stack([images[index] for index in group]).float()
                if (height, width) != (self.height, self.width):
                    pixels = functional.interpolate(
                        pixels, size=(self.height, self.width), mode="bicubic", antialias=True
                    )
                fitted = pixels.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
                for index, image in zip(group, fitted, strict=True):
                    out[index] = image
        return out


def _as_tensor(data: bytes) -> torch.Tensor:
    # decode_jpeg wants a writable uint8 CPU tensor; frombuffer over bytes would be read-only.
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
