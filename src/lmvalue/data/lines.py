"""Reading text files one record per line, exactly as ``\n`` splits them.

Every reader of one-record-per-line text goes through :func:`iter_lines`. Files are read in binary
and split on ``\n`` only, then decoded line by line: Python's ``str.splitlines`` and text-mode
iteration would also split on U+0085, U+2028, U+2029 and other separators that real corpora carry
inside their lines, so rows would no longer match input lines. A decoding error names the byte offset
and line of the first bad byte and how to fix it.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterator
from pathlib import Path

from lmvalue.errors import DataError, option, with_option

__all__ = ["iter_lines", "read_lines", "split_lines"]


def split_lines(data: bytes) -> list[bytes]:
    """``data`` cut at ``\n`` only (a final ``\n`` ends the last line, it does not start a new one)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def read_lines(source: str | Path, *, encoding: str = "utf-8", errors: str = "strict") -> list[str]:
    """All lines of a file, or of standard input for ``-``, without their line ends."""
    if str(source) == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        out = []
        offset = 0
        for lineno, raw in enumerate(split_lines(data), 1):
            try:
                line = raw.decode(encoding, errors)
            except UnicodeDecodeError as e:
                raise _decode_error("standard input", encoding, offset + e.start, lineno, e, None) from None
            offset += len(raw) + 1
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            out.append(line.rstrip("\r"))
        return out
    return [line for _, line in iter_lines(Path(source), encoding, errors)]


_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"PK\x03\x04": "zip",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"(\xb5/\xfd": "zstd",
}


def _is_wide(encoding: str) -> bool:
    name = codecs.lookup(encoding).name
    return name.startswith(("utf-16", "utf-32"))


def _check_not_binary(path: Path, encoding: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file permissions") from None
    if _is_wide(encoding):
        return
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise DataError(
                f"{path} is a {kind}-compressed file, not text; decompress it first "
                "(compressed files are not read directly)"
            )
    nul = head.find(b"\x00")
    if nul >= 0:
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            hint = "it starts with a UTF-16 byte-order mark: set encoding='utf-16'" + with_option(
                "data.encoding", "utf-16"
            )
        else:
            hint = "expected a text file (.txt, .csv, .tsv, .jsonl, .json) or a .parquet file"
        raise DataError(f"{path} looks like a binary file (NUL byte at byte offset {nul}), not text; {hint}")


def _suggest_encoding(path: Path, encoding: str) -> str:
    """A codec that decodes the start of the file cleanly, to suggest in the error message."""
    try:
        with open(path, "rb") as f:
            sample = f.read(1 << 16)
    except OSError:
        return ""
    if len(sample) == 1 << 16 and b"\n" in sample:
        sample = sample[: sample.rfind(b"\n") + 1]
    current = codecs.lookup(encoding).name
    for candidate in ("utf-8", "gb18030", "big5", "shift_jis", "cp1252"):
        if codecs.lookup(candidate).name == current:
            continue
        try:
            sample.decode(candidate)
        except UnicodeDecodeError:
            continue
        return candidate
    return ""


def _decode_error(
    path: Path | str,
    encoding: str,
    offset: int,
    lineno: int,
    exc: UnicodeDecodeError,
    guess_from: Path | None,
) -> DataError:
    bad = exc.object[exc.start : min(exc.end, exc.start + 4)]
    guess = _suggest_encoding(guess_from, encoding) if guess_from is not None else ""
    if guess:
        flag = option("data.encoding", guess)
        fix = f"set the file's encoding ({flag + ': ' if flag else ''}its start decodes as {guess})"
    else:
        fix = f"set the file's encoding{with_option('data.encoding', 'ENCODING')}"
    return DataError(
        f"{path}: not valid {encoding} text at byte offset {offset} (line {lineno}): "
        f"bad byte(s) {bad.hex(' ')} ({exc.reason}). Fix: {fix}, or replace the bad bytes with U+FFFD"
        f"{with_option('data.errors', 'replace')}"
    )


def iter_lines(path: Path, encoding: str, errors: str, keepends: bool = False) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)``; decoded line by line so that errors know their byte offset."""
    _check_not_binary(path, encoding)
    if _is_wide(encoding):
        yield from _iter_lines_wide(path, encoding, errors, keepends)
        return
    offset = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file permissions") from None
    try:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding, errors)
            except UnicodeDecodeError as e:
                raise _decode_error(path, encoding, offset + e.start, lineno, e, path) from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            offset += len(raw)
            yield lineno, (line if keepends else line.rstrip("\r\n"))
    finally:
        f.close()


def _iter_lines_wide(path: Path, encoding: str, errors: str, keepends: bool) -> Iterator[tuple[int, str]]:
    lineno = 0
    try:
        with open(path, encoding=encoding, errors=errors, newline="") as f:
            for lineno, line in enumerate(f, 1):  # noqa: B007 - used in the error message
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, (line if keepends else line.rstrip("\r\n"))
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid {encoding} text near line {lineno + 1} ({e.reason}); set the file's encoding"
            f"{with_option('data.encoding', 'ENCODING')}, or replace the bad bytes with U+FFFD"
            f"{with_option('data.errors', 'replace')}"
        ) from None
