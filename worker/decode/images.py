"""Image bytes to an RGB PIL image, with every failure turned into a per-image error."""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import ImageDecodeError, ImageTooLarge
from worker.model.fit import fit

# Far above any photo (4000x3000 is 12 MP) but far below what would exhaust a worker's memory.
MAX_PIXELS = 100_000_000
# How much of the model's input a JPEG's draft scale must cover. At 1.0, a 12 MP photo of 4:3 (4000x3000,
# 4032x3024, the commonest phone size) decodes at 1/4 scale, as its 1/8 scale is 375-378 rows against 384; at
# 0.95 it decodes at 1/8, which is then stretched 2% in height. The smaller scale takes much of the work off
# decoding and resizing such a photo, most for smooth ones, and its fitted pixels stay closer to a full decode's
# than nvJPEG's do (bench/results/2026-11-30-jpeg-draft-95.md; BENCHMARKS.md, "Decoding in processes").
DRAFT_COVER = 0.95


def decode_image(
    data: bytes, max_pixels: int = MAX_PIXELS, draft_to: tuple[int, int] | None = None, *, cover: float = DRAFT_COVER
) -> Image.Image:
    """Decode, apply EXIF orientation, convert to RGB. Raises ImageDecodeError or ImageTooLarge.

    With `draft_to` (width, height), a JPEG is decoded at the smallest scale (1/2, 1/4 or 1/8) whose both sides
    still cover `cover` of the larger of the two, so a 4000x3000 photo bound for a 384x384 model decodes at
    500x375 rather than 4000x3000: a fraction of the work, and the later resize has a fraction of the pixels to
    read. Other formats ignore it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"The image is {width}x{height} pixels; the limit is {max_pixels}.")
            if draft_to is not None:
                # The larger side on both axes: EXIF orientation may still swap width and height.
                side = math.ceil(max(draft_to) * cover)
                image.draft(None, (side, side))
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLarge(f"The image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("The data is not an image in a format the service reads.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated and corrupt files as OSError or SyntaxError, depending on the format.
        raise ImageDecodeError(f"The image could not be decoded: {exc}") from exc


def decode_fitted(data: bytes, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """What a model with input `size` sees of these bytes: decoded (JPEG draft mode to `size`), then fitted.

    This module imports Pillow and nothing heavy, so decoding processes (which escape the GIL the model's
    thread needs) can run this without loading torch.
    """
    return fit(decode_image(data, draft_to=size), size, resample)

