"""Image bytes to an RGB PIL image, with every failure turned into a per-image error.

The bytes are a stranger's, so decoding is bounded before it starts: only the formats the service documents are
tried, the pixels an image would decode to are checked from its header, and whatever a decoder raises on a crafted
file fails that image alone (docs/security.md, "Hostile input").
"""

from __future__ import annotations

import io
import logging
import math

from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import ImageDecodeError, ImageError, ImageTooLarge
from worker.model.fit import fit

log = logging.getLogger(__name__)

# The formats the service reads (docs/http-api.md). Pillow knows dozens more; some have no magic number (TGA takes
# almost any bytes for an image) and some call out to other programs (EPS runs Ghostscript), so a user's bytes
# are never offered to them. "JPEG" covers MPO too, the JPEG many cameras and phones write.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
# The most pixels decoded at full size (everything but a JPEG drafted to the model's input). 25 MP (a 6000x4000
# camera frame) decodes in about 0.3 s of one slow core in PNG, TIFF or WebP, at about 100-200 MB; at the old
# 100 MP a bomb of zeros (100 KB of PNG) cost 1-3 s and 0.6-1.4 GB (docs/security.md, "Hostile input").
MAX_PIXELS = 25_000_000
# A JPEG drafted to the model's input decodes at 1/8 of its side (a 64 MP photo: 1 MP), so a larger one is cheap:
# 64 MP takes a modern camera's or phone's largest JPEGs, and even a progressive one, whose decoder holds every
# coefficient at full size, stays near 0.3 s and 200 MB.
MAX_JPEG_PIXELS = 64_000_000
# How much of the model's input a JPEG's draft scale must cover. At 1.0, a 12 MP photo of 4:3 (4000x3000,
# 4032x3024, the commonest phone size) decodes at 1/4 scale, as its 1/8 scale is 375-378 rows against 384; at
# 0.95 it decodes at 1/8, which is then stretched 2% in height. The smaller scale takes much of the work off
# decoding and resizing such a photo, most for smooth ones, and its fitted pixels stay closer to a full decode's
# than nvJPEG's do (bench/results/2026-11-30-jpeg-draft-95.md; BENCHMARKS.md, "Decoding in processes").
DRAFT_COVER = 0.95
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def decode_image(
    data: bytes, max_pixels: int = MAX_PIXELS, draft_to: tuple[int, int] | None = None, *, cover: float = DRAFT_COVER
) -> Image.Image:
    """Decode, apply EXIF orientation, convert to RGB. Raises ImageDecodeError or ImageTooLarge.

    With `draft_to` (width, height), a JPEG is decoded at the smallest scale (1/2, 1/4 or 1/8) whose both sides
    still cover `cover` of the larger of the two, so a 4000x3000 photo bound for a 384x384 model decodes at
    500x375 rather than 4000x3000: a fraction of the work, and the later resize has a fraction of the pixels to
    read. Other formats ignore it. An animation gives its first frame.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        drafted = draft_to is not None and image.format in ("JPEG", "MPO")
        _check_pixels(image, max(max_pixels, MAX_JPEG_PIXELS) if drafted else max_pixels)
        if draft_to is not None and drafted:
            # The larger side on both axes: EXIF orientation may still swap width and height.
            side = math.ceil(max(draft_to) * cover)
            image.draft(None, (side, side))
            _check_pixels(image, max_pixels)  # what the draft scale leaves is what is decoded
        image.load()
        return _to_rgb(_oriented(image))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own bound, past ours: kept as a second line
        raise ImageTooLarge(f"The image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"The data is not an image in a format the service reads ({', '.join(FORMATS)})."
        ) from exc
    except Exception as exc:
        # Truncated and corrupt files raise OSError or SyntaxError, crafted ones anything from struct.error to
        # IndexError or MemoryError, by format: every one is this image's problem, never the worker's.
        raise ImageDecodeError(f"The image could not be decoded: {type(exc).__name__}: {exc}") from exc


def _check_pixels(image: Image.Image, limit: int) -> None:
    width, height = image.size
    if width * height > limit:
        raise ImageTooLarge(f"The image is {width}x{height} pixels; the limit is {limit}.")


def _oriented(image: Image.Image) -> Image.Image:
    """The image as its EXIF orientation says to show it; as stored when the EXIF block is malformed, as browsers
    do, rather than losing a decodable image to its metadata."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # Pillow's EXIF parser raises many types on malformed blocks
        log.info("ignoring an image's malformed EXIF: %s: %s", type(exc).__name__, exc)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, as BLIP's own processor makes it (alpha dropped), except where Pillow's conversion would clip: 16-bit
    grey is scaled to 8 bits, and 32-bit integer or float pixels (which have no fixed range) are stretched to
    theirs, instead of coming out white."""
    if image.mode in _SIXTEEN_BIT:
        image = image.convert("I").point(lambda v: v / 256)
    elif image.mode in ("I", "F"):
        low, high = image.getextrema()
        scale = 255 / (high - low) if high > low else 0  # type: ignore[operator]
        image = image.point(lambda v: (v - low) * scale)
    return image.convert("RGB")


def decode_fitted(data: bytes, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """What a model with input `size` sees of these bytes: decoded (JPEG draft mode to `size`), then fitted.

    This module imports Pillow and nothing heavy, so decoding processes (which escape the GIL the model's
    thread needs) can run this without loading torch.
    """
    return fit(decode_image(data, draft_to=size), size, resample)
