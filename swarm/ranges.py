"""HTTP Range requests for the source file, as a pure function (RFC 9110, section 14).

A peer's ffmpeg reads the source over HTTP and seeks with ``Range: bytes=N-``; we serve one
range per request (never multipart), which is all ffmpeg asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RemoteProtocolError

__all__ = ["ByteRange", "parse_range"]


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive, as Content-Range writes it
    partial: bool  # answer 206 with Content-Range, else 200 with the whole file

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The bytes of a ``size``-byte file a request asks for with ``header`` (its Range).

    Returns the whole file without a header, and None for a range the file cannot satisfy
    (start at or past the end, end before start): that is a 416 with ``bytes */size``.
    A header we do not read (another unit, several ranges, not numbers) raises
    RemoteProtocolError with status 416.
    """
    if header is None:
        return ByteRange(0, size - 1, partial=False)
    try:
        unit, _, spec = header.partition("=")
        first, _, last = spec.strip().partition("-")
        if unit.strip() != "bytes" or "," in spec:
            raise ValueError(header)
        start = int(first) if first else size - int(last)  # "-N": the last N bytes
        end = int(last) if (first and last) else size - 1
    except ValueError:
        raise RemoteProtocolError("bad Range header", status_code=416) from None
    if not 0 <= start < size or end < start:
        return None
    return ByteRange(start, min(end, size - 1), partial=True)
