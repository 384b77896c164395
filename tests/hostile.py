"""Hostile archives and images, made at test time (nothing binary is committed).

Each archive maker returns the zip's bytes; each image maker returns a file's bytes.
"""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
import zlib

import numpy as np
from PIL import Image

from tests.images import gradient, jpeg_bytes, png_bytes


def _zip(
    members: list[tuple[zipfile.ZipInfo | str, bytes]], compression: int = zipfile.ZIP_STORED
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as bundle:
        for info, data in members:
            bundle.writestr(info, data)
    return buffer.getvalue()


GOOD = ("good.jpeg", jpeg_bytes())


def zip_slip() -> bytes:
    return _zip([("../../../../tmp/evil.jpeg", jpeg_bytes()), GOOD])


def absolute_path() -> bytes:
    return _zip([("/etc/cron.d/evil.jpeg", jpeg_bytes()), GOOD])


def drive_letter() -> bytes:
    return _zip([("C:/Windows/evil.jpeg", jpeg_bytes()), GOOD])


def backslash() -> bytes:
    return _zip([("..\\..\\evil.jpeg", jpeg_bytes()), GOOD])


def symlink_member() -> bytes:
    link = zipfile.ZipInfo("link.jpeg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _zip([(link, b"/etc/passwd"), GOOD])


def ratio_bomb() -> bytes:
    """One member of zeros, 1000:1, next to a real image large enough to keep the archive sane."""
    noise = np.random.default_rng(3).integers(0, 255, (1200, 1200), dtype=np.uint8)
    return _zip(
        [
            ("bomb.jpeg", bytes(32 * 1024 * 1024)),
            ("noise.png", png_bytes(Image.fromarray(noise))),
            GOOD,
        ],
        zipfile.ZIP_DEFLATED,
    )


def overlapping_bomb(entries: int = 400, member_mb: int = 8) -> bytes:
    """Many central-directory entries pointing at one compressed local file (declared sizes tell
    nothing: each 'member' decompresses to the same megabytes)."""
    data = bytes(member_mb * 1024 * 1024)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = compressor.compress(data) + compressor.flush()
    name, crc = b"scan.jpeg", zlib.crc32(data)
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(compressed), len(data), len(name), 0
    )
    central = b"".join(
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            8,
            0,
            0,
            crc,
            len(compressed),
            len(data),
            len(name),
            0,
            0,
            0,
            0,
            0,
            0,
        )
        + name
        for _ in range(entries)
    )
    local_file = local + name + compressed
    end = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, len(central), len(local_file), 0
    )
    return local_file + central + end


def too_many_members(count: int) -> bytes:
    return _zip([(f"{i:05d}.txt", b"x") for i in range(count)])


def nested(depth: int) -> bytes:
    """An image at every level; `depth` zips inside the outer one."""
    inner = _zip([(f"level{depth}.jpeg", jpeg_bytes())])
    for level in range(depth - 1, -1, -1):
        inner = _zip([(f"level{level}.jpeg", jpeg_bytes()), (f"level{level + 1}.zip", inner)])
    return inner


def encrypted_member() -> bytes:
    """The traditional-encryption flag set on a member (its bytes are not really encrypted)."""
    data = bytearray(_zip([("secret.jpeg", jpeg_bytes()), GOOD]))
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = data.find(signature)  # the first member's local and central headers
        struct.pack_into("<H", data, position + flag_offset, 0x1)
    return bytes(data)


def broken_central_directory() -> bytes:
    whole = _zip([GOOD, ("second.jpeg", jpeg_bytes())])
    return whole[: whole.find(b"PK\x01\x02") + 10]


def not_a_zip() -> bytes:
    return b"%PDF-1.4 this is a PDF saved as study.zip\n" * 100


def empty_zip() -> bytes:
    return _zip([])


def os_litter() -> bytes:
    return _zip(
        [
            ("__MACOSX/study/._good.jpeg", b"\x00\x05\x16\x07"),
            ("study/._good.jpeg", b"x"),
            (".DS_Store", b"x"),
            ("study/.hidden/a.jpeg", jpeg_bytes()),
            ("study/good.jpeg", jpeg_bytes()),
        ]
    )


def duplicate_and_unicode_names() -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate
        return _zip(
            [
                ("étude/Ωmega.jpeg", jpeg_bytes()),
                ("étude/Ωmega.jpeg", png_bytes()),
                ("例/x.jpeg", jpeg_bytes()),
            ]
        )


def lying_sizes() -> bytes:
    """A member whose headers declare 10 bytes but which holds a whole image."""
    data = bytearray(_zip([("liar.jpeg", jpeg_bytes()), GOOD]))
    for signature, size_offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        position = data.find(signature)
        struct.pack_into("<I", data, position + size_offset, 10)
    return bytes(data)


# Images -----------------------------------------------------------------------------------


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(gradient((400, 300)))
    return data[: len(data) // 3]


def zero_bytes() -> bytes:
    return b""


def text_named_jpeg() -> bytes:
    return b"Patient: REDACTED\nThis is a radiology report, not an image.\n"


def png_bomb(side: int = 20_000) -> bytes:
    """A valid PNG header declaring side x side pixels with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    row = b"\x00" + bytes(side)
    compressor = zlib.compressobj(9)
    idat = compressor.compress(row * 10) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def sixteen_bit_png() -> bytes:
    wide = np.linspace(0, 65535, 300 * 240).reshape(240, 300).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    return buffer.getvalue()


def mode_png(mode: str) -> bytes:
    buffer = io.BytesIO()
    gradient().convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def cmyk_jpeg() -> bytes:
    return jpeg_bytes(gradient().convert("CMYK"))


def exif_rotated_jpeg() -> tuple[bytes, bytes]:
    """(a landscape image stored sideways with EXIF Orientation 6, the same image upright)."""
    upright = Image.fromarray(np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (200, 1)))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera would store
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue(), jpeg_bytes(upright, quality=95)


def tiny_jpeg() -> bytes:
    return jpeg_bytes(gradient((10, 10)))


def huge_jpeg(side: int = 10_000) -> bytes:
    """A real, cheaply compressed side x side grayscale JPEG (100 M pixels at the default)."""
    return jpeg_bytes(Image.new("L", (side, side), 128), quality=10)


def slow_png(side: int = 8000) -> bytes:
    """A valid, small-on-disk PNG whose decoding takes a noticeable time (side^2 pixels)."""
    rows = np.linspace(0, 255, side, dtype=np.uint8)
    return png_bytes(Image.fromarray(np.tile(rows, (side, 1))))


def not_utf8_name(members: list[tuple[str, bytes]] | None = None) -> bytes:
    """A member whose name is flagged UTF-8 (general-purpose bit 11) but is not UTF-8, as some
    writers make them: zipfile refuses to read the archive's directory at all."""
    placeholder = "bad-@@.jpeg"
    data = bytearray(_zip([*(members or [GOOD]), (placeholder, jpeg_bytes())]))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        name_at = data.find(placeholder.encode())
        while name_at != -1:
            header = data.rfind(signature, 0, name_at)
            if header != -1 and header + (30 if flags_at == 6 else 46) == name_at:
                flags = struct.unpack_from("<H", data, header + flags_at)[0]
                struct.pack_into("<H", data, header + flags_at, flags | 0x800)
                data[name_at + 4 : name_at + 6] = b"\xff\xfe"
            name_at = data.find(placeholder.encode(), name_at + 1)
    return bytes(data)
