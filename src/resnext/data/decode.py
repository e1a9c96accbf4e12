"""Reading image files into RGB pixels: every mode becomes RGB, a decompression-bomb limit, one error type.

Two decoders give the same pixels: torchvision's libjpeg-turbo `decode_jpeg` (measured 1.8x faster than Pillow
for decode + resize on ~500x375 JPEGs) for ordinary JPEGs, and Pillow for everything else (PNG, BMP, TIFF,
WebP, CMYK JPEGs) and for any JPEG that `decode_jpeg` refuses, so a file only counts as unreadable when
Pillow cannot read it either.

Training crops can also come from `decode_jpeg_scaled`: simplejpeg's libjpeg-turbo decode, in the DCT domain at
1/2, 1/4 or 1/8 scale when the crop keeps enough pixels for the output (docs/data.md, "Scaled JPEG decoding").

EXIF orientation: a phone stores a photo as the sensor saw it plus a tag saying how to turn it upright. With
exif_orientation=True the decoders apply the tag (Pillow's ImageOps.exif_transpose semantics, on the tensor,
so every decoder and device turns pixels the same way); off by default, as in torchvision's and NVIDIA's loaders.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO, NamedTuple, Union

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from ..errors import UserError

try:  # libjpeg-turbo 3 with DCT-domain scaling; without it the scaled decode falls back to the full one
    import simplejpeg
except ImportError:  # pragma: no cover - a core dependency, absent only where the package runs from src/
    simplejpeg = None

# Pillow's own default (about 9,459 x 9,459 pixels). The limit stays on even when a caller sets
# PIL.Image.MAX_IMAGE_PIXELS to None: raise it to a larger number to accept larger images.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

ImageSource = Union[str, os.PathLike, BinaryIO]

EMPTY_FILE = "the file is empty (0 bytes)"  # the one wording for an empty file, whoever finds it


class UnreadableImageError(UserError):
    """A file that cannot be decoded as an image: empty, truncated, corrupt, not an image, or a decompression bomb."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image '{path}': {reason}.")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # keep (path, reason) when the error crosses a process boundary
        return type(self), (self.path, self.reason)


def max_image_pixels() -> int:
    """The decompression-bomb limit in pixels: PIL.Image.MAX_IMAGE_PIXELS, or Pillow's default when it is unset."""
    return int(Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_IMAGE_PIXELS)


def _check_pixels(path: str, width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise UnreadableImageError(path, f"{width}x{height} pixels exceeds the decompression-bomb limit of {limit:,} "
                                         "pixels (raise PIL.Image.MAX_IMAGE_PIXELS to accept it)")


def _name(source: ImageSource) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<stream>")


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def open_image(source: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Fully decode an image with Pillow, keeping its own mode (L, P, CMYK, RGBA, ...) and format."""
    path = _name(source)
    limit = max_pixels or max_image_pixels()
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source) and os.path.getsize(source) == 0:
        raise UnreadableImageError(path, EMPTY_FILE)
    image = None
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; here the limit is a hard one.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)  # reads the header only
            _check_pixels(path, image.width, image.height, limit)
            image.load()
        return image
    except Exception as err:
        if image is not None:
            image.close()
        if isinstance(err, UnreadableImageError):
            raise
        if isinstance(err, UnidentifiedImageError):
            raise UnreadableImageError(path, "not an image, or a format Pillow does not know") from None
        # Pillow's plugins raise OSError, SyntaxError, ValueError, EOFError, zlib.error, ...
        raise UnreadableImageError(path, _reason(err)) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, 16-bit, CMYK, palette and alpha images as RGB; transparent pixels become white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):  # 16-bit grayscale: keep the top 8 bits instead of clipping at 255
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def load_image(source: ImageSource, max_pixels: int | None = None, exif_orientation: bool = False) -> Image.Image:
    """Read an image file (path or binary stream) as an RGB PIL image; UnreadableImageError when it cannot be read.

    exif_orientation: turn it upright by its EXIF orientation tag (ImageOps.exif_transpose).
    """
    image = open_image(source, max_pixels)
    if exif_orientation:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def exif_orientation_of(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The EXIF orientation tag (1-8) of an encoded image's bytes; 1 (upright as stored) when it has none.

    Reads only the header (Pillow's lazy open), for every format Pillow reads EXIF from (JPEG, PNG, WebP, TIFF).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # no header Pillow knows, or a damaged EXIF block: the decoder has the last word
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_exif_orientation(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """(..., H, W) pixels turned upright for an EXIF orientation tag (1-8), on whatever device they live.

    The same operations as Pillow's ImageOps.exif_transpose (2 mirror, 3 rotate 180, 4 flip, 5 transpose,
    6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise); 1 and unknown values leave them as is.
    """
    h, w = pixels.dim() - 2, pixels.dim() - 1
    if orientation == 2:
        return pixels.flip(w)
    if orientation == 3:
        return pixels.flip(h, w)
    if orientation == 4:
        return pixels.flip(h)
    if orientation == 5:
        return pixels.transpose(h, w)
    if orientation == 6:
        return pixels.rot90(-1, (h, w))
    if orientation == 7:
        return pixels.transpose(h, w).flip(h, w)
    if orientation == 8:
        return pixels.rot90(1, (h, w))
    return pixels


class JpegHeader(NamedTuple):
    width: int
    height: int
    components: int  # 1 grayscale, 3 YCbCr/RGB, 4 CMYK/YCCK
    frame_marker: int  # 0xC0 baseline, 0xC1 extended, 0xC2 progressive, others: lossless or arithmetic coding


def jpeg_header(data: bytes | bytearray | memoryview) -> JpegHeader | None:
    """The frame header of a JPEG file's bytes, or None when they are not a JPEG or the header is damaged."""
    if bytes(data[:3]) != b"\xff\xd8\xff":
        return None
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length field
            pos += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            if pos + 10 > size:
                return None
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return JpegHeader(width, height, data[pos + 9], marker)
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def fast_jpeg_header(data: np.ndarray, path: str, max_pixels: int) -> JpegHeader | None:
    """The header when `decode_jpeg` (CPU or nvJPEG) can take the file as it is, else None (Pillow decides).

    Taken: complete (ends with the end-of-image marker) baseline or progressive Huffman JPEGs of 1 or 3
    channels. Left to Pillow: CMYK/YCCK, lossless and arithmetic-coded JPEGs, files with bytes after the
    end-of-image marker or none at all (truncated), and every other format. A decompression bomb raises here,
    before any pixel is decoded.
    """
    view = memoryview(data)
    header = jpeg_header(view)
    if header is None:
        return None
    _check_pixels(path, header.width, header.height, max_pixels)
    if header.components not in (1, 3) or header.frame_marker not in (0xC0, 0xC1, 0xC2):
        return None
    return header if bytes(view[-2:]) == b"\xff\xd9" else None


def read_bytes(path: str) -> np.ndarray:
    """A file's bytes as a uint8 array (zero-copy into torch.from_numpy); UnreadableImageError if it is empty."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise UnreadableImageError(path, err.strerror or _reason(err)) from None
    if data.size == 0:
        raise UnreadableImageError(path, EMPTY_FILE)
    return data


def decode_pixels(data: np.ndarray, path: str, max_pixels: int | None = None,
                  exif_orientation: bool = False) -> torch.Tensor:
    """Decode a file's bytes to an RGB uint8 tensor of shape (3, H, W) on the CPU (upright by its EXIF tag
    when exif_orientation)."""
    pixels = _decode_pixels(data, path, max_pixels)
    return apply_exif_orientation(pixels, exif_orientation_of(data)) if exif_orientation else pixels


def _decode_pixels(data: np.ndarray, path: str, max_pixels: int | None) -> torch.Tensor:
    limit = max_pixels or max_image_pixels()
    if fast_jpeg_header(data, path, limit) is not None:
        try:
            return decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # Pillow has the last word (and the clearer message)
    stream = io.BytesIO(data.tobytes())
    stream.name = path  # so errors name the file, not the stream
    return torch.from_numpy(np.array(load_image(stream, limit))).permute(2, 0, 1)  # (3, H, W) view of HWC memory


def decode_file(path: str | os.PathLike, max_pixels: int | None = None, exif_orientation: bool = False) -> torch.Tensor:
    """Read and decode an image file to an RGB uint8 tensor (3, H, W); UnreadableImageError when it cannot be read.

    exif_orientation: turn it upright by its EXIF orientation tag (apply_exif_orientation)."""
    path = os.fspath(path)
    return decode_pixels(read_bytes(path), path, max_pixels, exif_orientation)


# libjpeg's IDCT can output 1/1, 1/2, 1/4 or 1/8 of the full size: each 8x8 block becomes 8, 4, 2 or 1 pixels.
DCT_SCALE_DENOMINATORS = (8, 4, 2)


def dct_scale_denominator(crop_height: int, crop_width: int, min_size: int) -> int:
    """The largest d in 8, 4, 2 (else 1) for which a crop decoded at 1/d keeps min_size pixels on both sides.

    Then the resize that follows still shrinks (or keeps) the crop, so the DCT scaling never makes it upsample.
    """
    for denominator in DCT_SCALE_DENOMINATORS:
        if min(crop_height, crop_width) >= denominator * min_size:
            return denominator
    return 1


def decode_jpeg_scaled(data: np.ndarray, header: JpegHeader, box: tuple[int, int, int, int],
                       min_size: int) -> tuple[np.ndarray, tuple[float, float, float, float], int]:
    """Decode a JPEG at the smallest DCT scale at which the crop `box` keeps `min_size` pixels per side.

    data: the file's bytes (uint8 array); header: its `fast_jpeg_header`; box: (top, left, height, width) in
    full-size pixels. Returns (RGB uint8 HWC array, the box in that array's pixel units, the scale denominator
    d). libjpeg decodes a 1/d image as ceil(H/d) x ceil(W/d) pixels, pixel i covering full-size pixels
    [d*i, d*(i+1)), so the box is the full-size one divided by d: fractional, which the resize must honour
    (rounding it shifts the crop by up to half an output pixel, measured 3x the difference). At d = 1 the pixels
    are exactly `decode_jpeg`'s (both are libjpeg-turbo's accurate integer IDCT with fancy upsampling).

    Raises ValueError when simplejpeg is not installed or refuses the file (the caller falls back to
    decode_pixels, whose Pillow fallback has the last word).
    """
    if simplejpeg is None:
        raise ValueError("simplejpeg is not installed")
    denominator = dct_scale_denominator(box[2], box[3], min_size)
    size = (-(-header.height // denominator), -(-header.width // denominator))
    scaled = denominator > 1
    pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size[0] if scaled else 0,
                                    min_width=size[1] if scaled else 0)
    if pixels.shape[:2] != size:  # a header that disagrees with the frame: let the plain path decide
        raise ValueError(f"decoded {pixels.shape[:2]} pixels, expected {size}")
    return pixels, tuple(side / denominator for side in box), denominator
