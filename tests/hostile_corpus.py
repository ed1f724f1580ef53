"""The torture corpus of issue #11: hostile and unlucky inputs, built at test time in a folder (nothing large committed).

``build_corpus(folder)`` writes every file (crafted headers, never real giant pixel buffers; the whole corpus is a
few MB and builds in about a second) and returns one :class:`Item` per input: what it is and what aigi must do with
it, either score it (``verdict``) or give it a per-file reason (``reason``). Layout::

    folder/walk/{0_real,1_fake}/...   met by walking ``folder/walk`` (also eval's labelled layout)
    folder/named/...                  named one by one on the command line
    folder/secret.txt                 the target of the XXE items: must never be opened

``run_corpus`` runs ``aigi detect --json``, ``aigi inspect --json``, ``aigi eval`` and a table ``aigi detect`` on it
in-process (typer's CliRunner) under :class:`Guard`, and ``problems`` lists every item that was not handled as
promised, one line each. The test (tests/test_hostile_corpus.py) and the benchmark (benchmarks/hostile.py) share them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import socket
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from aigi.api import SCORED_VERDICTS
from aigi.names import shown

SECRET = "secret.txt"
SECRET_TEXT = "hostile-corpus-secret-7f3a"
UNSUPPORTED = ("unsupported",)
LARGE_TEXT = 2_000_000  # inflates past PIL's PngImagePlugin.MAX_TEXT_CHUNK (1 MiB)


@dataclass(frozen=True)
class Item:
    """One input. ``name``: path relative to the corpus folder (bytes: a name that is not UTF-8)."""

    name: str | bytes
    what: str
    expect: str  # "verdict": must be scored; "reason": must get a per-file reason; "any": either, cleanly
    reason: tuple[str, ...] = ()  # the reason must contain one of these (any case)
    defect: str = ""  # the defect of issue #11 it checks ("" = a case that passed before the issue)
    problem: str = ""  # `aigi inspect` must list a problem containing this
    no_declaration: bool = False  # `aigi inspect` must not read a generator declaration in it
    same_as: str = ""  # must be handled the same way (scored or not) as this other item
    denied: bool = False  # opening it fails with a permission error (injected by Guard: tests may run as root)

    @property
    def named(self) -> bool:
        return self.text.startswith("named/")

    @property
    def text(self) -> str:
        return os.fsdecode(self.name)

    def path(self, folder: Path) -> Path:
        return Path(os.fsdecode(os.path.join(os.fsencode(folder), os.fsencode(self.name))))


# -- byte builders ---------------------------------------------------------------------------------------------------
def picture(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.cumsum(rng.integers(0, 40, (h, w, 3)), axis=1) % 256
    return Image.fromarray(a.astype(np.uint8))


def encoded(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(w: int, h: int, depth: int, color: int, idat: bytes, before_idat: list[bytes] = ()) -> bytes:
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(before_idat) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zeros_zlib(row_bytes: int, rows: int) -> bytes:
    """A zlib stream of ``rows`` all-zero PNG rows (filter byte 0), built without holding the raw bytes: after a full
    flush the compressor forgets the past, so every block after the first compresses to the same bytes."""
    block_rows = min(rows, max(1, 2**20 // row_bytes))  # blocks of about 1 MB
    block = bytes(row_bytes * block_rows)
    c = zlib.compressobj(9)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    repeat = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    n_blocks, rest = divmod(rows, block_rows)
    tail = c.compress(bytes(row_bytes * rest)) + c.flush(zlib.Z_FULL_FLUSH) if rest else b""
    total = row_bytes * rows
    adler = ((total % 65521) << 16) | 1  # adler32 of `total` zero bytes
    return first + repeat * (n_blocks - 1) + tail + b"\x03\x00" + struct.pack(">I", adler)  # \x03\x00: last block


def jpeg_with_segment(marker: int, payload: bytes, base: bytes | None = None) -> bytes:
    base = base or encoded(picture(), "JPEG")
    return base[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + base[2:]


def jpeg_claiming(w: int, h: int) -> bytes:
    data = bytearray(encoded(picture(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def gif_claiming(w: int, h: int) -> bytes:
    screen = struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x4c\x01\x00"
    return b"GIF89a" + screen + frame + b";"


def bmp_claiming(w: int, h: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + bytes(16)


def tiff_claiming(w: int, h: int) -> bytes:
    tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 4, h), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    return b"II*\x00" + struct.pack("<I", 24) + bytes(16) + ifd + bytes(4)


def webp_claiming(w: int, h: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (w - 1).to_bytes(3, "little")
    vp8x += (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def exif_jpeg(ifd: bytes) -> bytes:
    return jpeg_with_segment(0xE1, b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd)


def ifd(entries: list[tuple[int, int, int, int]], next_offset: int, count: int | None = None) -> bytes:
    body = b"".join(struct.pack("<HHII", *e) for e in entries)
    return struct.pack("<H", len(entries) if count is None else count) + body + struct.pack("<I", next_offset)


def laughs(levels: int = 10) -> tuple[str, str]:
    """The billion laughs: entity definitions and the reference that expands to 10**levels "lol"s."""
    ents = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels)]
    return "".join(ents), f"&lol{levels - 1};"


def xmp(entities: str, value: str) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE x:xmpmeta [{entities}]><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
        f"<Iptc4xmpExt:DigitalSourceType>{value}</Iptc4xmpExt:DigitalSourceType>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


def xmp_jpeg(packet: bytes) -> bytes:
    return jpeg_with_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet)


def png_with(*chunks: bytes) -> bytes:
    raw = encoded(picture(), "PNG")
    return raw[:33] + b"".join(chunks) + raw[33:]  # after the 8-byte signature and the 25-byte IHDR


def itxt(keyword: bytes, text: bytes, compressed: bool) -> bytes:
    body = zlib.compress(text) if compressed else text
    return chunk(b"iTXt", keyword + b"\x00" + bytes([int(compressed), 0]) + b"\x00\x00" + body)


def fits(w: int = 64, h: int = 48) -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2"]
    cards += [f"NAXIS1  = {w:20d}", f"NAXIS2  = {h:20d}", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    data = bytes(range(256)) * (w * h // 256 + 1)
    return header + data[: w * h].ljust(2880 * (w * h // 2880 + 1), b"\x00")


def psd(w: int = 64, h: int = 48) -> bytes:
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3) + struct.pack(">III", 0, 0, 0)
    return head + struct.pack(">H", 0) + bytes(range(256)) * (3 * w * h // 256)


def pcd() -> bytes:
    return bytes(2048) + b"PCD_IPI" + bytes(2048 * 3)


def eps() -> bytes:
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 512 512\n%%EndComments\n"
        b"newpath 0 0 moveto 512 512 lineto stroke\nshowpage\n%%EOF\n"
    )


def animated(fmt: str, **options) -> bytes:
    frames = [picture(seed=s) for s in range(3)]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], **options)


# -- the corpus ------------------------------------------------------------------------------------------------------
REAL, FAKE, NAMED = "walk/0_real/", "walk/1_fake/", "named/"


def file_items(secret: Path) -> list[tuple[Item, bytes]]:
    """Every regular file of the corpus and its bytes."""
    lol_entities, lol = laughs()
    xxe = f'<!ENTITY xxe SYSTEM "file://{secret}">'
    big_text = b"A" * LARGE_TEXT
    bomb = "claims 60000x60000 pixels (decompression bomb)"
    v, r, a = "verdict", "reason", "any"
    return [
        # plain images: every supported format is scored (and eval gets both labels)
        (Item(REAL + "plain.jpg", "plain JPEG", v), encoded(picture(seed=1), "JPEG")),
        (Item(REAL + "plain.png", "plain PNG", v), encoded(picture(seed=2), "PNG")),
        (Item(REAL + "plain.bmp", "plain BMP", v), encoded(picture(seed=3), "BMP")),
        (Item(FAKE + "plain.webp", "plain WebP", v), encoded(picture(seed=4), "WEBP")),
        (Item(FAKE + "plain.tif", "plain TIFF", v), encoded(picture(seed=5), "TIFF")),
        (Item(FAKE + "plain.gif", "plain GIF", v), encoded(picture(seed=6), "GIF")),
        (Item(FAKE + "plain.ppm", "plain PPM", v), encoded(picture(seed=7), "PPM")),
        # bombs: headers claiming 3.6 gigapixels, and a PNG whose IDAT inflates far past its 64x64 pixels
        (Item(FAKE + "bomb.png", f"PNG {bomb}", r, ("too large",)), png(60000, 60000, 8, 2, zlib.compress(b"\0" * 99))),
        (Item(FAKE + "bomb.gif", f"GIF {bomb}", r), gif_claiming(60000, 60000)),
        (Item(FAKE + "bomb.bmp", f"BMP {bomb}", r), bmp_claiming(60000, 60000)),
        (Item(FAKE + "bomb.tif", f"TIFF {bomb}", r), tiff_claiming(60000, 60000)),
        (Item(FAKE + "bomb.webp", f"WebP {bomb}", r), webp_claiming(60000, 60000)),
        (Item(FAKE + "bomb.jpg", f"JPEG {bomb}", r, ("too large",)), jpeg_claiming(60000, 60000)),
        (Item(FAKE + "bomb.ppm", f"PPM {bomb}", r), b"P6\n60000 60000\n255\n" + bytes(64)),
        (
            Item(FAKE + "zlib_bomb.png", "64x64 PNG whose IDAT inflates to 52 MB", a),
            png(64, 64, 8, 0, zeros_zlib(65, 800_064)),
        ),
        # 16-bit images just under the 120 MP cap: a few hundred KB on disk, ~1 GB if decoded carelessly
        (
            Item(FAKE + "grey16.png", "16-bit grey PNG 10000x11900 (119 MP)", a, defect="6"),
            png(10000, 11900, 16, 0, zeros_zlib(20001, 11900)),
        ),
        (
            Item(FAKE + "rgba16.png", "16-bit RGBA PNG 10000x11900 (119 MP)", a, defect="6"),
            png(10000, 11900, 16, 6, zeros_zlib(80001, 11900)),
        ),
        # metadata torture: the pixels are fine, so the file is scored
        (
            Item(REAL + "exif_loop.jpg", "EXIF IFDs pointing at themselves", v),
            exif_jpeg(ifd([(0x112, 3, 1, 6), (0x8769, 4, 1, 8)], 8)),
        ),
        (
            Item(REAL + "exif_huge.jpg", "EXIF entry of 2**31 values at offset 4 GB", v),
            exif_jpeg(ifd([(0x10E, 2, 0x7FFFFFFF, 0xFFFFFF00)], 0xFFFFFFF0)),
        ),
        (
            Item(REAL + "exif_count.jpg", "EXIF IFD claiming 65535 entries", v),
            exif_jpeg(ifd([(0x112, 3, 1, 1)], 0, count=65535)),
        ),
        (Item(REAL + "xmp_laughs.jpg", "XMP with a billion-laughs entity", v), xmp_jpeg(xmp(lol_entities, lol))),
        (Item(REAL + "xmp_xxe.jpg", "XMP with an XXE entity reading a local file", v), xmp_jpeg(xmp(xxe, "&xxe;"))),
        (
            Item(REAL + "xmp_laughs.png", "PNG iTXt XMP with a billion-laughs entity", v),
            png_with(itxt(b"XML:com.adobe.xmp", xmp(lol_entities, lol), False)),
        ),
        (
            Item(REAL + "xmp_xxe.png", "PNG iTXt XMP with an XXE entity", v),
            png_with(itxt(b"XML:com.adobe.xmp", xmp(xxe, "&xxe;"), True)),
        ),
        (
            Item(REAL + "icc_garbage.jpg", "JPEG with a garbage ICC profile", v),
            encoded(picture(), "JPEG", icc_profile=b"\x13garbage" * 64),
        ),
        (
            Item(REAL + "icc_garbage.png", "PNG with a garbage ICC profile", v),
            encoded(picture(), "PNG", icc_profile=b"\x13garbage" * 64),
        ),
        (
            Item(REAL + "ztxt_large.png", "zTXt chunk inflating past PIL's text limit", v, defect="3", problem="chunk"),
            png_with(chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(big_text))),
        ),
        (
            Item(
                REAL + "itxt_parameters.png",
                "compressed iTXt `parameters` past the limit",
                v,
                defect="3",
                problem="chunk",
                no_declaration=True,
            ),
            png_with(itxt(b"parameters", big_text, True)),
        ),
        # animated and multi-page files: the first frame is scored
        (Item(REAL + "animated.gif", "animated GIF", v), animated("GIF", duration=50, loop=0)),
        (Item(REAL + "animated.png", "animated PNG", v), animated("PNG", duration=50)),
        (Item(REAL + "animated.webp", "animated WebP", v), animated("WEBP", duration=50)),
        (Item(REAL + "pages.tif", "multi-page TIFF", v), animated("TIFF")),
        (Item(REAL + "tall.png", "1x65500 PNG", a), encoded(Image.new("L", (1, 65500), 128), "PNG")),
        (Item(REAL + "wide.png", "65500x1 PNG", a), encoded(Image.new("L", (65500, 1), 128), "PNG")),
        # broken and impostor files
        (Item(FAKE + "truncated.jpg", "JPEG cut in half", r, ("truncated",)), encoded(picture(), "JPEG")[:700]),
        (Item(FAKE + "truncated.png", "PNG cut in half", r), encoded(picture(), "PNG")[:2000]),
        (Item(FAKE + "empty.png", "zero-byte file", r, ("empty",)), b""),
        (Item(FAKE + "text.png", "text file named .png", r, ("not an image",) + UNSUPPORTED), b"just some text\n" * 20),
        (Item(FAKE + "page.png", "HTML named .png", r), b"<!DOCTYPE html><html><body><img src=x></body></html>"),
        (
            Item(FAKE + "vector.png", "SVG named .png", r),
            b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        ),
        # formats aigi does not decode: refused as unsupported, never handed to a plugin (EPS runs Ghostscript)
        (Item(FAKE + "postscript.jpg", "EPS named .jpg (PIL would run Ghostscript)", r, UNSUPPORTED, "1"), eps()),
        (Item(NAMED + "postscript.eps", "EPS named on the command line", r, UNSUPPORTED, "1"), eps()),
        (Item(FAKE + "fits.jpg", "FITS named .jpg", r, UNSUPPORTED, "1"), fits()),
        (Item(FAKE + "photoshop.png", "PSD named .png", r, UNSUPPORTED, "1"), psd()),
        (Item(FAKE + "directdraw.png", "DDS named .png", r, UNSUPPORTED, "1"), encoded(picture(), "DDS")),
        (
            Item(FAKE + "spider.tif", "SPIDER named .tif", r, UNSUPPORTED, "1"),
            encoded(picture().convert("F"), "SPIDER"),
        ),
        (Item(FAKE + "photocd.jpg", "PhotoCD header named .jpg", r, UNSUPPORTED, "1"), pcd()),
        (Item(FAKE + "jpeg2000.jpg", "JPEG 2000 named .jpg", r, UNSUPPORTED, "1"), encoded(picture(), "JPEG2000")),
        (Item(FAKE + "pcx.png", "PCX named .png", r, UNSUPPORTED, "1"), encoded(picture(), "PCX")),
        # AVIF: the same answer whether named or met by a walk
        (
            Item(FAKE + "photo.avif", "AVIF met by a walk", a, defect="10", same_as=NAMED + "photo.avif"),
            encoded(picture(), "AVIF"),
        ),
        (
            Item(NAMED + "photo.avif", "AVIF named on the command line", a, defect="10", same_as=FAKE + "photo.avif"),
            encoded(picture(), "AVIF"),
        ),
        # file names that would rewrite a terminal, reorder a line, or not be UTF-8 at all
        (
            Item(REAL + "esc\x1b[2J\x1b]0;owned\x07.png", "ESC sequences in the name", v, defect="4"),
            encoded(picture(seed=8), "PNG"),
        ),
        (
            Item(REAL + "report\u202egnp.jpg", "bidi override U+202E in the name", v, defect="4"),
            encoded(picture(seed=9), "JPEG"),
        ),
        (Item(REAL + "new\nline.jpg", "newline in the name", v, defect="4"), encoded(picture(seed=10), "JPEG")),
        (
            Item(REAL.encode() + b"caf\xe9.jpg", "non-UTF-8 (Latin-1) name", v, defect="7"),
            encoded(picture(seed=11), "JPEG"),
        ),
        (
            Item(FAKE.encode() + b"bad\xff\x1b.png", "non-UTF-8 + ESC name, not an image", r, defect="7"),
            b"not an image",
        ),
        (
            Item(
                FAKE.encode() + b"notes\xfe\x1b[31m.txt", "non-UTF-8 + ESC name, not an image extension", r, defect="7"
            ),
            b"text",
        ),
        (
            Item(NAMED.encode() + b"named\xe9.jpg", "non-UTF-8 name named", v, defect="7"),
            encoded(picture(seed=12), "JPEG"),
        ),
        # permission denied (injected: root reads anything), met by a walk and named
        (
            Item(FAKE + "denied.jpg", "unreadable file met by a walk", r, ("permission",), "10", denied=True),
            encoded(picture(), "JPEG"),
        ),
        (
            Item(NAMED + "denied.jpg", "unreadable file named", r, ("permission",), "10", denied=True),
            encoded(picture(), "JPEG"),
        ),
    ]


def special_items() -> list[tuple[Item, str, str]]:
    """Filesystem oddities, not regular files: (item, kind, link target) with kind fifo, socket, link or none."""
    not_regular = ("fifo", "pipe", "socket", "not a regular file", "special file")
    loop = ("symbolic link", "loop")
    r = "reason"
    return [
        (Item(FAKE + "pipe.png", "FIFO met by a walk (must not block)", r, not_regular, "10"), "fifo", ""),
        (Item(FAKE + "socket.png", "Unix socket met by a walk", r, not_regular, "10"), "socket", ""),
        (Item(FAKE + "loop_a.png", "symbolic link loop (a -> b -> a)", r, loop), "link", "loop_b.png"),
        (Item(FAKE + "loop_b.png", "symbolic link loop (b -> a -> b)", r, loop), "link", "loop_a.png"),
        (
            Item(FAKE + "dangling.png", "dangling symbolic link", r, ("not found", "no such", "dangling")),
            "link",
            "gone.png",
        ),
        (Item(REAL + "cycle", "folder link back to its parent (cycle)", r, ("already walked", "cycle")), "link", ".."),
        (Item(NAMED + "missing.jpg", "nonexistent file named", r, ("not found", "no such"), "10"), "none", ""),
    ]


def make_special(path: Path, kind: str, target: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link":
        os.symlink(target, path)
    elif kind == "socket":
        with contextlib.chdir(path.parent), socket.socket(socket.AF_UNIX) as s:
            s.bind(path.name)  # relative: a Unix socket path is limited to 108 bytes


def build_corpus(folder: str | os.PathLike) -> list[Item]:
    """Write the corpus into ``folder`` (created) and return its items, files first."""
    folder = Path(folder)
    for sub in (REAL, FAKE, NAMED):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / SECRET).write_text(SECRET_TEXT)
    items = []
    for item, data in file_items(folder.resolve() / SECRET):
        item.path(folder).write_bytes(data)
        items.append(item)
    for item, kind, target in special_items():
        make_special(item.path(folder), kind, target)
        items.append(item)
    return items


# -- the guard: no program run, no network, no forbidden file opened, no FIFO blocking ---------------------------------
FORBIDDEN_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "pty.spawn",
        "socket.connect",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyname_ex",
        "socket.gethostbyaddr",
        "urllib.Request",
    }
)
_active: Guard | None = None  # audit hooks cannot be removed: the one hook acts only while a Guard is active
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    guard = _active
    if guard is None:
        return
    if event in FORBIDDEN_EVENTS:
        guard.events.append(f"{event} {str(args)[:200]}")
    elif event == "open" and args and isinstance(args[0], (str, bytes)):
        name = os.path.abspath(os.fsdecode(args[0]))
        if name in guard.never_open:
            guard.events.append(f"open {name}")
        if name in guard.denied:
            raise PermissionError(13, "Permission denied", name)


@dataclass
class Guard:
    """While active: records forbidden audit events (programs, network) and opens of ``never_open``; makes opening a
    path in ``denied`` fail as a permission error; unblocks (and records) any reader blocked on one of ``fifos``."""

    never_open: set[str] = field(default_factory=set)
    denied: set[str] = field(default_factory=set)
    fifos: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Guard:
        global _active, _hook_installed
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True
        self._stop.clear()
        self._watchdog = threading.Thread(target=self._unblock_fifos, daemon=True)
        self._watchdog.start()
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        self._stop.set()
        self._watchdog.join()

    def _unblock_fifos(self) -> None:
        while not self._stop.wait(0.5):
            for fifo in self.fifos:
                try:  # succeeds only when a reader is waiting in open(): it then reads end-of-file
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    continue
                self.events.append(f"a reader blocked on the FIFO {shown(fifo)}")


def guard_for(folder: Path, items: list[Item]) -> Guard:
    return Guard(
        never_open={str(folder.resolve() / SECRET)},
        denied={os.path.abspath(item.path(folder)) for item in items if item.denied},
        fifos=[str(item.path(folder)) for item in items if item.text.endswith("pipe.png")],
    )


# -- peak memory of this process ---------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak() -> int:
    """Reset the process's peak resident memory (VmHWM) to its current size (Linux: /proc/self/clear_refs, writable by
    the process's owner) and return that size in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def peak_kib() -> int:
    return _status_kib("VmHWM")


# -- running the CLI on the corpus ---------------------------------------------------------------------------------------
@dataclass
class Run:
    """One CLI command on the corpus: what it printed and what it said about each path (keyed as printed)."""

    command: str
    exit_code: int
    stdout: str
    output: str
    exception: BaseException | None
    seconds: float
    peak_kib: int  # the process's peak resident memory during the command
    peak_growth_kib: int  # ... less its resident memory when the command started
    rows: dict[str, dict] = field(default_factory=dict)  # {"kind": verdict|reason, "reason", "problems", "findings"}


# Every input fits one batch, so torch's DataLoader loads in this process (num_workers=0, see
# aigi.engine.features.extract): no worker process is forked, and the guard allows no fork at all.
ONE_BATCH = ["--batch-size", "1024"]


def warm_up() -> None:
    """Import what the commands import lazily, before a guard is armed: matplotlib builds its font cache once (and may
    ask fontconfig, a program, to list the fonts): that is set-up, not a file running a program."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.font_manager  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import sklearn.metrics  # noqa: F401


def commands(folder: Path, items: list[Item]) -> dict[str, list[str]]:
    walk = str(folder / "walk")
    named = [str(item.path(folder)) for item in items if item.named]
    return {
        "detect --json": ["detect", "--json", *ONE_BATCH, walk, *named],
        "inspect --json": ["inspect", "--json", walk, *named],
        "eval": ["eval", "--data", walk, "--out", str(folder.parent / "eval_report"), *ONE_BATCH],
        "detect (table)": ["detect", *ONE_BATCH, walk, *named],
        "inspect (table)": ["inspect", walk, *named],
    }


def invoke(command: str, args: list[str], out_dir: Path) -> Run:
    from typer.testing import CliRunner

    from aigi.cli import app

    start_rss = reset_peak()
    start = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - start
    peak = peak_kib()
    run = Run(
        command, result.exit_code, result.stdout, result.output, result.exception, seconds, peak, peak - start_rss
    )
    if command == "eval":
        run.rows = eval_rows(out_dir)
    elif "--json" in command and result.stdout.lstrip().startswith("{"):
        run.rows = json_rows(json.loads(result.stdout))
    return run


def json_rows(payload: dict) -> dict[str, dict]:
    rows = {}
    for r in payload["results"]:
        if "verdict" in r:  # detect
            scored = r["verdict"] in SCORED_VERDICTS
            rows[r["path"]] = {"kind": "verdict" if scored else "reason", "reason": r.get("error") or r["basis"]}
            r = {"path": r["path"], **r.get("provenance", {})}
        else:  # inspect
            kind = "reason" if r["problems"] else "verdict"
            rows[r["path"]] = {"kind": kind, "reason": "; ".join(r["problems"])}
        rows[r["path"]].update(problems=r.get("problems", []), findings=r.get("findings", []))
    for s in payload["skipped"]:
        rows[s["path"]] = {"kind": "reason", "reason": s["reason"], "skipped": True}
    return rows


def eval_rows(out_dir: Path) -> dict[str, dict]:
    rows = {}
    if not (out_dir / "report_scores.csv").is_file():
        return rows
    with open(out_dir / "report_scores.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        for r in csv.DictReader(f):
            scored = r["prob_generated"] != ""
            rows[r["path"]] = {"kind": "verdict" if scored else "reason", "reason": r["error"]}
    report = json.loads((out_dir / "report.json").read_text(encoding="utf-8", errors="surrogateescape"))
    for s in report["skipped"]:
        rows[s["path"]] = {"kind": "reason", "reason": s["reason"], "skipped": True}
    return rows


def run_corpus(folder: Path, items: list[Item], only: tuple[str, ...] = ()) -> tuple[list[Run], Guard]:
    """Run every command (or those in ``only``) on the corpus under one guard."""
    runs = []
    with guard_for(folder, items) as guard:
        for command, args in commands(folder, items).items():
            if not only or command in only:
                runs.append(invoke(command, args, folder.parent / "eval_report"))
    return runs, guard


# -- judging the runs ------------------------------------------------------------------------------------------------
SCORING = ("detect --json", "eval")  # commands whose rows say scored or not, with the reason


def raw_characters(text: str) -> str:
    """The characters of ``text`` that :func:`aigi.names.shown` would have escaped (a line break is layout)."""
    return "".join(sorted({c for c in text if c != "\n" and shown(c) != c}))


def run_problems(run: Run) -> list[str]:
    """What is wrong with a command as a whole: exit code, traceback, characters a file name let through."""
    found = []
    if run.exit_code != 0:
        found.append(f"{run.command}: exit code {run.exit_code}")
    if run.exception is not None and not isinstance(run.exception, SystemExit):
        found.append(f"{run.command}: raised {type(run.exception).__name__}: {str(run.exception)[:200]}")
    if run.command.endswith("--json") or run.command == "eval":
        if not run.rows:
            found.append(f"{run.command}: reported on no file (no JSON / no report written)")
    if "Traceback" in run.output:
        found.append(f"{run.command}: a traceback was printed")
    if raw := raw_characters(run.output):
        found.append(f"{run.command}: printed raw control/bidi/undecodable characters {raw!r}")
    return found


def row_problems(item: Item, run: Run, path: Path) -> list[str]:
    """What is wrong with what one command said about one item ([] when it kept every promise, or when the command
    reported on no file at all: :func:`run_problems` says so once)."""
    if (item.named and run.command == "eval") or not run.rows:
        return []
    row = run.rows.get(shown(path))
    if row is None:
        unescaped = os.fsdecode(path) in run.rows
        return [f"{run.command}: " + ("its path was printed unescaped" if unescaped else "no row and no skipped entry")]
    found = []
    if run.command in SCORING:
        found += kind_problems(item, run.command, row)
    if run.command.startswith("inspect"):
        found += inspect_problems(item, row)
    return found


def kind_problems(item: Item, command: str, row: dict) -> list[str]:
    if item.expect == "verdict" and row["kind"] != "verdict":
        return [f"{command}: not scored ({row['reason']})"]
    if item.expect == "reason" and row["kind"] != "reason":
        return [f"{command}: scored, but it must get a reason"]
    if not (row["reason"] or "").strip() and row["kind"] == "reason":
        return [f"{command}: no reason given"]
    wanted = item.reason if row["kind"] == "reason" else ()
    if wanted and not any(w in row["reason"].lower() for w in wanted):
        return [f"{command}: reason {row['reason']!r} says none of {' / '.join(wanted)}"]
    return []


def inspect_problems(item: Item, row: dict) -> list[str]:
    found = []
    if item.problem and not any(item.problem in p.lower() for p in row["problems"]):
        found.append(f"inspect --json: no problem about a {item.problem} (problems: {row['problems']})")
    if item.no_declaration and any(f["claim"] in ("generated", "ai-edited") for f in row["findings"]):
        found.append("inspect --json: an unreadable chunk was taken as a generator declaration")
    return found


def problems(folder: Path, items: list[Item], runs: list[Run], guard: Guard) -> dict[str, list[str]]:
    """Every broken promise, by item (its name as shown; ``*`` for the runs as a whole); empty when all went well."""
    found: dict[str, list[str]] = {"*": [f"guard: {e}" for e in guard.events]}
    for run in runs:
        found["*"] += run_problems(run)
    detect = next((run for run in runs if run.command == "detect --json"), None)
    for item in items:
        path = item.path(folder)
        key = shown(item.text)
        found[key] = [
            p for run in runs if "--json" in run.command or run.command == "eval" for p in row_problems(item, run, path)
        ]
        if item.same_as and detect is not None:
            mine, theirs = (detect.rows.get(shown(p), {}).get("kind") for p in (path, folder / item.same_as))
            if mine != theirs:
                found[key].append(f"detect --json: {mine} here but {theirs} for {item.same_as}")
    return {k: v for k, v in found.items() if v}
