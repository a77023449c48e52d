"""Kaggle run-length codecs: one implementation of each flavour.

Absolute form (most Kaggle competitions): ``"start length start length ..."``. Starts are
1-indexed positions in the flattened image; ``order`` states how the image is flattened:
``"F"`` column-major (top to bottom, then left to right: the usual Kaggle order) or ``"C"``
row-major. The empty mask is ``""``.

SIIM relative form (SIIM-ACR Pneumothorax): ``"gap length gap length ..."``. Each gap counts the
pixels between the end of the previous run (the start of the image for the first run) and the
start of this one, column-major. The empty mask is ``"-1"``.

Masks are 2-D arrays of shape (height, width) holding bool, 0/1 or 0/255 values; decoders return
C-contiguous uint8 0/1 arrays. Malformed strings raise ``ValueError`` naming the fault and the pair.
"""

from __future__ import annotations

import math

import numba
import numpy as np

SIIM_EMPTY = "-1"
SIIM_SHAPE = (1024, 1024)
ORDERS = ("F", "C")

# Kernel status codes; the Python wrappers turn them into messages.
_OK = 0
_BAD_CHAR = 1
_TOO_LONG = 2
_BAD_START = 3
_OVERLAP = 4
_BAD_LENGTH = 5
_PAST_END = 6
_BAD_VALUE = 7
_NEGATIVE_GAP = 8

_MAX_DIGITS = 18  # stays inside int64


@numba.njit(cache=True, nogil=True)
def _tokenize(buf):
    """Parse whitespace-separated integers (optional leading '-') from ASCII bytes.

    Returns (values, count, status, index of the offending token).
    """
    values = np.empty(buf.size // 2 + 1, dtype=np.int64)
    count = 0
    i = 0
    n = buf.size
    while i < n:
        c = buf[i]
        if c == 32 or c == 9 or c == 10 or c == 13:
            i += 1
            continue
        negative = False
        if c == 45:  # '-'
            negative = True
            i += 1
        digits = 0
        value = 0
        while i < n:
            c = buf[i]
            if c == 32 or c == 9 or c == 10 or c == 13:
                break
            if c < 48 or c > 57:
                return values, count, _BAD_CHAR, count
            digits += 1
            if digits > _MAX_DIGITS:
                return values, count, _TOO_LONG, count
            value = value * 10 + (c - 48)
            i += 1
        if digits == 0:
            return values, count, _BAD_CHAR, count
        values[count] = -value if negative else value
        count += 1
    return values, count, _OK, 0


@numba.njit(cache=True, nogil=True)
def _fill_runs(tokens, count, relative, fortran, height, width, y0, x0, out):
    """Paint the runs of a (height, width) mask that fall in the zeroed window ``out`` whose
    top-left pixel is (y0, x0); every run is checked, inside the window or not.

    Returns (status, pair index). Absolute starts are 1-indexed; relative starts are gaps.
    """
    total = height * width
    line_len = height if fortran else width  # a line is a column (F) or a row (C)
    first_line = x0 if fortran else y0
    n_lines = out.shape[1] if fortran else out.shape[0]
    lo = y0 if fortran else x0  # the window's offsets along a line
    hi = lo + (out.shape[0] if fortran else out.shape[1])
    whole = out.shape[0] == height and out.shape[1] == width
    flat = out.reshape(-1)
    end = 0  # 0-based, exclusive end of the previous run
    for pair in range(count // 2):
        first = tokens[2 * pair]
        length = tokens[2 * pair + 1]
        if relative:
            if first < 0:
                return _NEGATIVE_GAP, pair
            start = end + first
        else:
            if first < 1:
                return _BAD_START, pair
            start = first - 1
            if start < end:
                return _OVERLAP, pair
        if length <= 0:
            return _BAD_LENGTH, pair
        if start + length > total:
            return _PAST_END, pair
        end = start + length
        if whole and not fortran:
            flat[start:end] = 1
            continue
        if whole:  # column-major over the whole image: walk the run, no window arithmetic
            col = start // height
            row = start - col * height
            for _ in range(length):
                out[row, col] = 1
                row += 1
                if row == height:
                    row = 0
                    col += 1
            continue
        line = start // line_len
        offset = start - line * line_len
        while line < first_line + n_lines and line * line_len + offset < end:
            stop = min(end - line * line_len, line_len)  # this run's end on this line
            if line >= first_line:
                a, b = max(offset, lo), min(stop, hi)
                if fortran:
                    for k in range(a, b):
                        out[k - lo, line - first_line] = 1
                elif a < b:
                    out[line - first_line, a - lo : b - lo] = 1
            line += 1
            offset = 0
    return _OK, 0


@numba.njit(cache=True, nogil=True)
def _bounding_box(mask):
    """(row0, row1, col0, col1), inclusive, of the non-zero pixels of a C-contiguous mask.

    One contiguous pass of OR-reductions that LLVM vectorises; row0 > row1 when the mask is empty.
    """
    height, width = mask.shape
    col_any = np.zeros(width, dtype=np.uint8)
    row0, row1 = height, -1
    for i in range(height):
        acc = np.uint8(0)
        for j in range(width):
            v = mask[i, j]
            acc |= v
            col_any[j] |= v
        if acc:
            if row0 == height:
                row0 = i
            row1 = i
    col0, col1 = width, -1
    for j in range(width):
        if col_any[j]:
            if col0 == width:
                col0 = j
            col1 = j
    return row0, row1, col0, col1


@numba.njit(cache=True, nogil=True)
def _find_runs(mask, fortran, starts, lengths):
    """Write 0-based run starts and lengths of the non-zero pixels of a C-contiguous uint8 mask.

    Only the bounding box is scanned in pixel order; a run goes on while the flat positions of
    set pixels are consecutive, which also joins runs across column (or row) boundaries.
    Returns (number of runs, status, offending value). Values other than 0, 1 and 255 are refused.
    """
    height, width = mask.shape
    row0, row1, col0, col1 = _bounding_box(mask)
    n_runs = 0
    run_end = -1  # exclusive end of the open run; -1 when none is open
    if fortran:
        outer0, outer1, inner0, inner1, outer_step = col0, col1, row0, row1, height
    else:
        outer0, outer1, inner0, inner1, outer_step = row0, row1, col0, col1, width
    for a in range(outer0, outer1 + 1):
        base = a * outer_step
        for b in range(inner0, inner1 + 1):
            v = mask[b, a] if fortran else mask[a, b]
            if v == 0:
                continue
            if v != 1 and v != 255:
                return n_runs, _BAD_VALUE, v
            pos = base + b
            if pos != run_end:
                if run_end >= 0:
                    lengths[n_runs] = run_end - starts[n_runs]
                    n_runs += 1
                starts[n_runs] = pos
            run_end = pos + 1
    if run_end >= 0:
        lengths[n_runs] = run_end - starts[n_runs]
        n_runs += 1
    return n_runs, _OK, 0


@numba.njit(cache=True, nogil=True)
def _format_pairs(firsts, lengths, n):
    """ASCII bytes of 'first length first length ...' for the first n pairs."""
    buf = np.empty(n * 2 * 21, dtype=np.uint8)
    pos = 0
    digits = np.empty(20, dtype=np.uint8)
    for k in range(2 * n):
        value = firsts[k // 2] if k % 2 == 0 else lengths[k // 2]
        if k > 0:
            buf[pos] = 32
            pos += 1
        nd = 0
        while True:
            digits[nd] = 48 + value % 10
            value //= 10
            nd += 1
            if value == 0:
                break
        for d in range(nd - 1, -1, -1):
            buf[pos] = digits[d]
            pos += 1
    return buf[:pos]


def _check_shape(shape) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"shape must be positive, got {shape!r}")
    return height, width


def _check_order(order: str) -> bool:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return order == "F"


def _as_uint8_mask(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask.view(np.uint8)
    if mask.dtype == np.uint8:
        return mask
    valid = (mask == 0) | (mask == 1) | (mask == 255)
    if not valid.all():
        bad = mask[~valid].flat[0]
        raise ValueError(f"mask values must be 0/1 or 0/255 (or bool), found {bad!r}")
    return (mask != 0).view(np.uint8)


def _runs(mask, fortran: bool) -> tuple[np.ndarray, np.ndarray]:
    mask = np.ascontiguousarray(_as_uint8_mask(mask))
    capacity = mask.size // 2 + 1
    starts = np.empty(capacity, dtype=np.int64)
    lengths = np.empty(capacity, dtype=np.int64)
    n, status, value = _find_runs(mask, fortran, starts, lengths)
    if status != _OK:
        raise ValueError(f"mask values must be 0/1 or 0/255 (or bool), found {value}")
    return starts[:n], lengths[:n]


def _format(firsts: np.ndarray, lengths: np.ndarray) -> str:
    return _format_pairs(firsts, lengths, len(firsts)).tobytes().decode("ascii")


def _tokens(rle: str, what: str) -> np.ndarray:
    try:
        buf = np.frombuffer(rle.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        raise ValueError(f"{what}: non-ASCII character in {rle[:40]!r}") from None
    values, count, status, index = _tokenize(buf)
    if status != _OK:
        token = rle.split()[index]
        reason = "has too many digits" if status == _TOO_LONG else "is not an integer"
        raise ValueError(f"{what}: token {index + 1} ({token[:30]!r}) {reason}")
    if count % 2:
        raise ValueError(f"{what}: odd number of tokens ({count}); expected start/length pairs")
    return values[:count]


def _decode(tokens, shape, relative: bool, fortran: bool, what: str, window=None) -> np.ndarray:
    y0, y1, x0, x1 = window or (0, shape[0], 0, shape[1])
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    status, pair = _fill_runs(tokens, len(tokens), relative, fortran, *shape, y0, x0, out)
    if status == _OK:
        return out
    first, length = tokens[2 * pair], tokens[2 * pair + 1]
    where = f"{what}: pair {pair + 1} ({first} {length})"
    if status == _BAD_START:
        raise ValueError(f"{where}: start must be >= 1 (starts are 1-indexed)")
    if status == _NEGATIVE_GAP:
        raise ValueError(
            f"{where}: gap must be >= 0 (a negative gap means overlapping or unordered runs)"
        )
    if status == _OVERLAP:
        raise ValueError(
            f"{where}: run begins before the previous run ends (overlapping or unordered runs)"
        )
    if status == _BAD_LENGTH:
        raise ValueError(f"{where}: run length must be positive")
    raise ValueError(f"{where}: run goes past the end of the {shape[0]}x{shape[1]} image")


def _is_missing(rle) -> bool:
    return rle is None or (isinstance(rle, float) and math.isnan(rle))


def rle_encode(mask, order: str = "F") -> str:
    """Absolute RLE of a (height, width) mask: 1-indexed starts, pixels flattened in ``order``."""
    starts, lengths = _runs(mask, _check_order(order))
    return _format(starts + 1, lengths)


def rle_decode(rle, shape, order: str = "F") -> np.ndarray:
    """Decode an absolute RLE into a (height, width) uint8 0/1 mask.

    ``""``, whitespace, ``None`` and NaN (a missing CSV field) decode to the empty mask.
    """
    fortran = _check_order(order)
    shape = _check_shape(shape)
    if _is_missing(rle):
        return np.zeros(shape, dtype=np.uint8)
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    return _decode(_tokens(rle, "RLE"), shape, relative=False, fortran=fortran, what="RLE")


@numba.njit(cache=True, nogil=True)
def _block_column_runs(block, y0, cols, rows, lengths):
    """Vertical runs of a (h, W) uint8 row block (any non-zero is set), scanned row by row with
    one open run per column: (column, first row + y0, length), ordered by where each ends."""
    height, width = block.shape
    open_at = np.full(width, -1, dtype=np.int64)
    count_only = len(cols) == 0  # a first pass sizes the arrays: memory stays in runs
    n = 0
    for r in range(height):
        for c in range(width):
            if block[r, c] != 0:
                if open_at[c] < 0:
                    open_at[c] = r
            elif open_at[c] >= 0:
                if not count_only:
                    cols[n], rows[n], lengths[n] = c, open_at[c] + y0, r - open_at[c]
                n += 1
                open_at[c] = -1
    for c in range(width):
        if open_at[c] >= 0:
            if not count_only:
                cols[n], rows[n], lengths[n] = c, open_at[c] + y0, height - open_at[c]
            n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _merge_touching(starts, lengths):
    """Sorted runs, runs that touch joined (in place); returns the count, or -1 - i if run i
    overlaps the one before it."""
    n = 0
    for i in range(len(starts)):
        if n > 0 and starts[i] < starts[n - 1] + lengths[n - 1]:
            return -1 - i
        if n > 0 and starts[i] == starts[n - 1] + lengths[n - 1]:
            lengths[n - 1] += lengths[i]
        else:
            starts[n], lengths[n] = starts[i], lengths[i]
            n += 1
    return n


class ColumnRunWriter:
    """The absolute column-major RLE (``rle_encode(mask, order="F")``) of a (height, width)
    mask that is never held whole: give it row blocks (full width, in any order, each row once)
    with ``add``; it keeps only the runs, so memory grows with the number of runs, not pixels.
    Runs that cross block edges, or go on from the bottom of one column to the top of the next,
    are joined as in the whole-mask encoding."""

    def __init__(self, height: int, width: int):
        self.height, self.width = _check_shape((height, width))
        self._covered = np.zeros(self.height, dtype=bool)
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, y0: int, block) -> None:
        """Rows ``y0 .. y0 + len(block)`` of the mask: a (h, width) array of 0/1, 0/255 or bool."""
        block = np.ascontiguousarray(_as_uint8_mask(block))
        height, width = block.shape
        if width != self.width or y0 < 0 or y0 + height > self.height:
            raise ValueError(
                f"block of {height}x{width} at row {y0} does not fit the "
                f"{self.height}x{self.width} mask"
            )
        if self._covered[y0 : y0 + height].any():
            raise ValueError(f"rows {y0}..{y0 + height - 1}: some were already added")
        self._covered[y0 : y0 + height] = True
        none = np.empty(0, dtype=np.int64)
        n = _block_column_runs(block, y0, none, none, none)
        cols, rows, lengths = (np.empty(n, dtype=np.int64) for _ in range(3))
        _block_column_runs(block, y0, cols, rows, lengths)
        self._parts.append((cols * self.height + rows, lengths))

    def encode(self) -> str:
        """The RLE string (``""`` when empty); every row must have been added."""
        if not self._covered.all():
            missing = int(np.argmin(self._covered))
            raise ValueError(f"row {missing} of the {self.height}x{self.width} mask was not added")
        if not self._parts:
            return ""
        starts = np.concatenate([p[0] for p in self._parts])
        lengths = np.concatenate([p[1] for p in self._parts])
        order = np.argsort(starts, kind="stable")
        starts, lengths = starts[order], lengths[order]
        n = _merge_touching(starts, lengths)
        if n < 0:  # cannot happen while each row is added once; kept as a guard
            raise ValueError(f"run {-1 - n} overlaps the run before it")
        return _format(starts[:n] + 1, lengths[:n])


class RleWindows:
    """Windows of the mask one absolute RLE of a (height, width) image describes, its string
    parsed once: ``window((y0, y1, x0, x1))`` decodes rows ``y0:y1`` and columns ``x0:x1``
    without the whole mask in memory (a tile of a 2-gigapixel slide). Every run is checked, as
    ``rle_decode`` checks them, at each window."""

    def __init__(self, rle, shape, order: str = "F"):
        self.fortran = _check_order(order)
        self.shape = _check_shape(shape)
        if _is_missing(rle):
            self.tokens = None
        elif not isinstance(rle, str):
            raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
        else:
            self.tokens = _tokens(rle, "RLE")

    def window(self, window) -> np.ndarray:
        y0, y1, x0, x1 = (int(v) for v in window)
        if not (0 <= y0 < y1 <= self.shape[0] and 0 <= x0 < x1 <= self.shape[1]):
            raise ValueError(
                f"window {tuple(window)} is not inside the {self.shape[0]}x{self.shape[1]} image"
            )
        if self.tokens is None:
            return np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        return _decode(self.tokens, self.shape, False, self.fortran, "RLE", window=(y0, y1, x0, x1))


def rle_decode_window(rle, shape, window, order: str = "F") -> np.ndarray:
    """Rows ``y0:y1`` and columns ``x0:x1`` (``window = (y0, y1, x0, x1)``) of the mask an
    absolute RLE describes (``RleWindows``, for one window)."""
    return RleWindows(rle, shape, order).window(window)


def rle_runs(rle, shape, order: str = "F") -> tuple[np.ndarray, np.ndarray]:
    """The runs of an absolute RLE as int64 arrays (0-indexed first pixel in ``order``,
    length), checked as ``rle_decode`` checks them, without decoding the mask."""
    fortran = _check_order(order)
    shape = _check_shape(shape)
    if _is_missing(rle):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    tokens = _tokens(rle, "RLE")
    _decode(tokens, shape, False, fortran, "RLE", window=(0, 1, 0, 1))  # every run checked
    return tokens[0::2].astype(np.int64) - 1, tokens[1::2].astype(np.int64)


def siim_rle_encode(mask) -> str:
    """SIIM relative RLE of a (height, width) mask, column-major; ``"-1"`` when empty."""
    starts, lengths = _runs(mask, fortran=True)
    if len(starts) == 0:
        return SIIM_EMPTY
    gaps = np.empty_like(starts)
    gaps[0] = starts[0]
    gaps[1:] = starts[1:] - (starts[:-1] + lengths[:-1])
    return _format(gaps, lengths)


def siim_rle_decode(rle, shape=SIIM_SHAPE) -> np.ndarray:
    """Decode a SIIM relative RLE (``"-1"``, with any surrounding whitespace, is empty)."""
    shape = _check_shape(shape)
    if _is_missing(rle) or not isinstance(rle, str) or not rle.strip():
        raise ValueError(
            f"SIIM RLE: missing value {rle!r}; an empty mask is written {SIIM_EMPTY!r}"
        )
    if rle.strip() == SIIM_EMPTY:
        return np.zeros(shape, dtype=np.uint8)
    tokens = _tokens(rle, "SIIM RLE")
    return _decode(tokens, shape, relative=True, fortran=True, what="SIIM RLE")
