"""Open any image a user may upload as an 8-bit RGB `PIL.Image`, or fail with one clear line.

Real uploads come in every flavour: phone photos rotated by an EXIF tag, animated GIFs, multi-page
TIFF scans, palette PNGs with a transparent colour, RGBA logos, CMYK JPEGs from print workflows,
16-bit grayscale scans. `load_image` brings them all to what the encoder expects (upright RGB, transparency
composited on white, 16-bit scaled rather than clipped to 8 bit) and turns every way an image can
be unreadable into a `UserError` that names the file and says what to do.

The data loaders read files with `captioner.data.datasets.load_image_tensor`: the same image as
an RGB uint8 tensor, a clean JPEG decoded by torchvision's decoder. This module imports no torch.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from recurrent.errors import UserError, out_of_memory

# Pillow's own default bomb limit (~ 9459 x 9459, 256 MiB as RGB). Larger images are refused, not
# decoded, so a tiny compressed file cannot make the app allocate gigabytes.
MAX_IMAGE_PIXELS = 89_478_485

# Beyond this width:height (or height:width) the eval transform, which scales the short side to the
# model's input size, would blow a 1 x 20,000,000 strip up to billions of pixels. Panoramas are ~10:1.
MAX_ASPECT_RATIO = 50

# A progressive JPEG is decoded in one pass over the whole image per scan. Encoders write about ten
# (Pillow's and libjpeg's progressive script: 10); a file that repeats a 31-byte scan 2,000 times
# (62 kB more) took 19 s to decode at 4000 x 4000 pixels, against 0.2 s without the repeats, and
# libjpeg puts no bound on their number. libjpeg-turbo's TurboJPEG API offers a limit of 500 scans
# for untrusted files; any file an encoder writes has far fewer than this.
MAX_JPEG_SCANS = 100
# Pillow reads a JPEG's segments before its image data one by one in Python, and joins the data
# of every EXIF segment into one by concatenation: 20 MB of a million small EXIF segments took
# 240 s to open (1 MB: 0.4 s), against 0.17 s for an ordinary 10 MB JPEG. A photograph has
# about 10 to 20; an ICC profile may take up to 255.
MAX_JPEG_SEGMENTS = 1000
JPEG_START = b"\xff\xd8\xff"  # start of image, then a marker's first byte

# How messages and --help name what is accepted: every still format Pillow decodes, these and more.
ACCEPTED_FORMATS = "PNG, JPEG, TIFF, WebP, BMP, GIF, ICO, PPM, TGA, QOI"

# Formats Pillow opens that hold a JPEG it decodes with no look at its cost (`jpeg_cost` reads
# files that are JPEGs): BLP, a game's texture, whose BLP1 form is a JPEG behind its own header
# (one of 150 scans took seconds to decode). They are refused once Pillow has read their header.
UNCHECKED_JPEG_HOLDERS = ("BLP",)


# Pillow's words for a file it recognises but lacks the means to decode (a codec it was built
# without, Ghostscript for EPS, Windows for WMF): not a corrupt file, so the message says so.
UNSUPPORTED_SIGNS = ("not available", "Ghostscript", "cannot find loader", "not supported")

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
BACKGROUND = (255, 255, 255, 255)  # transparent pixels are shown on white, as browsers do


def load_image(
    source: str | os.PathLike[str] | BinaryIO, *, max_pixels: int | None = None
) -> Image.Image:
    """Load a path or binary file object (read from its start) as an upright 8-bit RGB image.

    Accepts every still-image format Pillow decodes (`ACCEPTED_FORMATS`); multi-page and animated
    files (TIFF, GIF, WebP, APNG, MPO, ...) give their first page or frame. Applies the EXIF
    orientation, composites transparency (RGBA, LA, palette with a transparent colour) on white,
    converts CMYK, YCbCr, 1-bit and grayscale, and scales 16-bit grayscale (I;16, I) to 8 bit by
    dividing by 257.

    `max_pixels` defaults to `MAX_IMAGE_PIXELS`. Raises `UserError` when the file is missing, is not
    an image Pillow decodes, is corrupt or truncated, uses a compression or variant Pillow cannot
    decode on this machine, has more pixels than the limit (a decompression bomb), or is more
    elongated than `MAX_ASPECT_RATIO`. Pillow's own warnings (say, about damaged EXIF data) are
    silenced: an image that decodes is used as decoded.
    """
    what = _describe(source)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if isinstance(source, (str, os.PathLike)):
        if "\x00" in os.fspath(source):
            raise UserError(f"image path {what} contains a NUL character; fix the file name")
    elif source.seekable():
        source.seek(0)
    else:  # read once, then checked and decoded from memory
        source = io.BytesIO(source.read())
    kind = None  # the format Pillow recognised, once it has
    try:
        refused = costly_jpeg_error(source, what)
        if refused is not None:
            raise refused
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Pillow only warns between its limit and twice that: make the warning an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                kind = image.format
                if kind in UNCHECKED_JPEG_HOLDERS:
                    raise UserError(
                        f"{what} is a {kind} file, which may hold a JPEG that would be decoded "
                        "without a check of what it costs; convert it to PNG or JPEG"
                    )
                width, height = image.size
                refused = size_error(what, width, height, limit)
                if refused is not None:
                    raise refused
                image.load()  # decode now (the first page or frame), so bad data fails here
                upright = ImageOps.exif_transpose(image)  # a decoded copy: the file may close
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"image file {what} not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a folder, not an image file; pass an image file") from None
    except PermissionError:
        raise UserError(f"cannot read {what} (permission denied); check its permissions") from None
    except UnidentifiedImageError:
        raise UserError(
            f"{what} is not an image Pillow can decode (not an image file, damaged beyond "
            f"recognition, or a kind Pillow does not read); pass a still image such as "
            f"{ACCEPTED_FORMATS}"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(
            f"{what} has too many pixels (limit {limit:,}, a possible decompression bomb); "
            "downscale it first"
        ) from None
    except OSError as err:
        if err.filename is None:  # Pillow's own OSErrors (bad data) carry no file name
            raise _undecodable(err, what, kind) from None
        raise UserError(f"cannot open {what} ({err.strerror}); check the path") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on hostile bytes
        if out_of_memory(err) is not None:  # the machine's, not the file's
            raise
        raise _undecodable(err, what, kind) from None
    return _to_rgb(upright, what)


def costly_jpeg_error(source: str | os.PathLike[str] | BinaryIO, what: str) -> UserError | None:
    """Why a JPEG is refused before it is opened, for costing far more to read than its size
    (`jpeg_cost`), or None (other files, and ordinary JPEGs). A file object is read from its
    start and left there."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            segments, scans = jpeg_cost(file)
    else:
        segments, scans = jpeg_cost(source)
        source.seek(0)
    if segments > MAX_JPEG_SEGMENTS:
        return UserError(
            f"{what} is a JPEG of more than {MAX_JPEG_SEGMENTS:,} segments (a photograph has about "
            "10 to 20: its metadata and tables), which would take minutes to read; re-encode it "
            "without its metadata"
        )
    if scans > MAX_JPEG_SCANS:
        return UserError(
            f"{what} is a progressive JPEG of more than {MAX_JPEG_SCANS} scans (encoders write "
            "about 10, and each is a pass over the whole image, so it would take minutes to "
            "decode); re-encode it as a baseline JPEG or a PNG"
        )
    return None


# A JPEG's next marker as a decoder finds it: 0xFF, then neither 00 (a 0xFF of a scan's data), a
# restart marker (within a scan) nor another 0xFF (a fill byte: the marker follows it); whatever
# comes before it (a scan's data, stray bytes between segments) is skipped, as libjpeg skips it
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
READ_CHUNK = 1 << 20  # bytes `jpeg_cost` reads at a time


def jpeg_cost(file: BinaryIO) -> tuple[int, int]:
    """(segments, scans) of the JPEG in ``file``, read from its start up to its first end of
    image after a scan as a decoder reads it, each counted no further than just past its limit
    (`MAX_JPEG_SEGMENTS`, `MAX_JPEG_SCANS`); (0, 0) for a file that is not a JPEG.

    Segments (metadata and tables before the first scan, tables and comments between scans) are
    stepped over by their lengths, unread, so that a scan marker's bytes inside one are no scan;
    the markers of no length (TEM, and the reserved 0x02-0xBF, which libjpeg skips without
    reading a length; a start or end of image before the first scan, which Pillow's header reader
    steps over) count as segments too. A scan's data, and stray bytes between segments, are
    searched for the next marker (`_MARKER`) in chunks of `READ_CHUNK` bytes; what follows the end
    of image is not read."""
    file.seek(0)
    if file.read(len(JPEG_START)) != JPEG_START:
        return 0, 0
    segments = scans = 0
    at, has_length = 2, False  # after the start of image, which has no length
    buffer, base = b"", at  # the file's bytes from offset base on
    chunk = max(READ_CHUNK, 2)  # a length, a marker: two bytes
    while segments <= MAX_JPEG_SEGMENTS and scans <= MAX_JPEG_SCANS:
        if has_length:  # step over the segment, unread
            if at + 2 > base + len(buffer):
                file.seek(at)
                buffer, base = file.read(chunk), at
                if len(buffer) < 2:
                    break
            length = int.from_bytes(buffer[at - base : at - base + 2], "big")
            at += max(length, 2)  # a length under 2 (its own two bytes): libjpeg goes on past it
        while (found := _MARKER.search(buffer, at - base)) is None:  # read on (from a 0xFF at
            at = max(at, base + len(buffer) - buffer.endswith(b"\xff"))  # the end: a marker's?)
            file.seek(at)
            buffer, base = file.read(chunk), at
            if len(buffer) < 2:
                return segments, scans
        marker, at = buffer[found.start() + 1], base + found.end()
        if marker == 0xD9 and scans:  # the end of image (Pillow's header reader, which stops at
            break  # the first scan, steps over one before it, as over a start of image)
        if marker == 0xDA:
            scans += 1
        else:
            segments += 1
        # SOFn, tables, scans, APPn, comments (not a start or end of image)
        has_length = marker >= 0xC0 and marker not in (0xD8, 0xD9)
    return segments, scans


def _undecodable(err: Exception, what: str, kind: str | None) -> UserError:
    """The line for an image Pillow opened but could not decode."""
    detail = " ".join(str(err).split())[:200] or type(err).__name__
    if isinstance(err, NotImplementedError) or any(sign in detail for sign in UNSUPPORTED_SIGNS):
        recognised = f"recognises as {kind}" if kind else "recognises"
        return UserError(
            f"{what} is an image Pillow {recognised} but cannot decode on this machine "
            f"({detail}); convert it to PNG or JPEG"
        )
    if isinstance(err, (OSError, SyntaxError, EOFError, ValueError, struct.error, IndexError)):
        return UserError(
            f"{what} is corrupt or truncated ({detail}); re-save or re-upload the image"
        )
    return UserError(
        f"{what} cannot be decoded ({type(err).__name__}: {detail}); re-save it as PNG or JPEG"
    )


def _describe(source: object) -> str:
    """How messages name the image: its path, an upload's file name, or "the uploaded image"."""
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    name = getattr(source, "name", None)
    return f"'{name}'" if isinstance(name, str) and name else "the uploaded image"


def size_error(what: str, width: int, height: int, limit: int) -> UserError | None:
    """Why an image of ``width`` x ``height`` is refused before decoding (more pixels than
    ``limit``, more elongated than `MAX_ASPECT_RATIO`), or None: the one rule for every reader."""
    if width * height > limit:
        return UserError(
            f"{what} is too large ({width} x {height} = {width * height:,} pixels, limit "
            f"{limit:,}); downscale it first"
        )
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        return UserError(
            f"{what} is {width} x {height} pixels, too elongated to caption (at most "
            f"{MAX_ASPECT_RATIO}:1); crop it to a more compact region first"
        )
    return None


def _to_rgb(image: Image.Image, what: str) -> Image.Image:
    """A new 8-bit RGB copy of `image`, whatever its mode."""
    if image.mode in SIXTEEN_BIT_MODES:
        # convert("L") would clip every value above 255 to white: scale 0..65535 to 0..255 instead.
        # Pillow's `point` runs this linear map (v / 257 + 0.5, i.e. rounded) in C.
        image = image.convert("I").point(lambda value: value / 257 + 0.5).convert("L")
    elif image.mode == "F":
        # float images hold 0..1 or 0..255; convert("L") clips, so bring 0..1 up to 0..255 first
        scale = 255.0 if image.getextrema()[1] <= 1.0 else 1.0
        image = image.point(lambda value: value * scale + 0.5).convert("L")
    elif image.mode == "La":
        # premultiplied gray (a TIFF's associated alpha), which convert("RGBA") refuses
        image = image.convert("LA")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND)
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError:
        raise UserError(
            f"{what} uses the colour mode {image.mode}, which cannot be converted to RGB; "
            "re-save it as RGB"
        ) from None
