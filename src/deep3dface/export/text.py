"""Numeric tables as text: ``np.savetxt``'s output, written by a compiled loop.

OBJ files are text: a face mesh is ~35k vertex rows and ~70k face rows, and formatting them one
number at a time (``savetxt``, or one C-level ``%`` over all values) took ~0.17 s per mesh, three
OBJ files per face.  Here numpy decides every number's digits as an integer (its value times
10^N, rounded) and a numba loop writes the bytes.

Formats are printf-style: literal text and ``%d`` / ``%.Nf`` fields, e.g. ``"v %.6f %.6f %.6f"``.
``%.Nf`` rounds the exact binary value half to even; ``rint(|x| · 10^N)`` agrees except where the
product's own rounding (an ulp) crosses a half-way point, so values within a few ulps of one are
formatted by ``%`` itself.  Values that are not finite or too large for exact int64 arithmetic send
the whole table to the ``%`` path, which is the oracle (tests compare the two).
"""
from __future__ import annotations

import re

import numba
import numpy as np

_FIELD = re.compile(r"%(?:\.(\d+)f|d)")
_LIMIT = 2.0 ** 52  # |x| · 10^N below this: integer, exactly representable and exactly rounded
_MAX_DECIMALS = 15  # more go to ``%``: with the digits before the point they would pass 19 digits


def parse_format(fmt: str) -> tuple[list[str], list[int | None]]:
    """``"v %.6f %d"`` -> literals ``["v ", " ", ""]`` and decimals ``[6, None]`` (None: ``%d``)."""
    literals, decimals, at = [], [], 0
    for match in _FIELD.finditer(fmt):
        literals.append(fmt[at:match.start()])
        decimals.append(None if match.group(1) is None else int(match.group(1)))
        at = match.end()
    literals.append(fmt[at:])
    if "%" in "".join(literals):
        raise ValueError(f"unsupported format {fmt!r}: only %d and %.Nf fields")
    return literals, decimals


def format_rows(array: np.ndarray, fmt: str) -> str:
    """The text ``np.savetxt(·, array, fmt)`` writes: one ``fmt % row`` line per row, each ending in
    a newline.  ``array`` (rows, fields) of numbers; a ``%d`` field takes integers."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"expected a (rows, fields) array, got shape {array.shape}")
    literals, decimals = parse_format(fmt)
    if array.shape[1] != len(decimals):
        raise ValueError(f"{fmt!r} has {len(decimals)} fields, the array {array.shape[1]} columns")
    if len(array) == 0:
        return ""
    if any(d is not None and d > _MAX_DECIMALS for d in decimals):
        return _format_slowly(array, fmt)
    columns = [_scaled(array[:, k], d) for k, d in enumerate(decimals)]
    if any(c is None for c in columns):
        return _format_slowly(array, fmt)
    negative = np.stack([c[0] for c in columns], 1)
    magnitude = np.stack([c[1] for c in columns], 1)
    places = np.array([d or 0 for d in decimals], np.int64)
    texts = [t.encode("ascii") for t in literals[:-1]] + [literals[-1].encode("ascii") + b"\n"]
    literal_bytes = np.frombuffer(b"".join(texts), np.uint8)
    offsets = np.cumsum([0] + [len(t) for t in texts]).astype(np.int64)
    # a number is at most a sign, 19 digits (int64) and a point
    out = np.empty(len(array) * (int(offsets[-1]) + len(decimals) * 21), np.uint8)
    used = _write_rows(negative, magnitude, places, literal_bytes, offsets, out)
    return out[:used].tobytes().decode("ascii")


def _format_slowly(array: np.ndarray, fmt: str) -> str:
    """One C-level ``%`` over all values: any value, as ``%`` writes it (the oracle of the fast path)."""
    values = array.ravel().tolist()
    if array.dtype.kind in "iub":   # ints for %d; %.Nf accepts them as they are
        values = [int(v) for v in values]
    return (fmt + "\n") * len(array) % tuple(values)


def _scaled(column: np.ndarray, decimals: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(is negative, |value| · 10^decimals rounded as ``%`` rounds it, int64), or None when the
    fast path cannot reproduce ``%`` (not finite, too large, a float for ``%d``)."""
    if decimals is None:
        if column.dtype.kind not in "iub" or (column.dtype.kind == "u" and len(column) and column.max() >= 2**63):
            return None                                  # %d of a float truncates: leave it to %
        values = column.astype(np.int64)
        if len(values) and values.min() == np.iinfo(np.int64).min:
            return None                                  # its magnitude is not an int64
        return values < 0, np.abs(values)
    column = column.astype(np.float64)
    scaled = np.abs(column) * 10.0 ** decimals
    if not np.all(scaled < _LIMIT):                      # also False for NaN and inf
        return None
    rounded = np.rint(scaled)
    # ``%`` rounds the exact binary value; the product is off by an ulp or so, which matters only
    # next to a half-way point (2.5e-6 is a little above 2.5e-6: %.6f gives 3e-6, rint(2.5) 2)
    near = np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) <= 4 * np.spacing(scaled))
    for k in near.tolist():
        rounded[k] = int(("%.*f" % (decimals, abs(float(column[k])))).replace(".", ""))
    return np.signbit(column), rounded.astype(np.int64)


@numba.njit(cache=True)
def _write_rows(negative, magnitude, places, literals, offsets, out):  # pragma: no cover - compiled
    """Write each row's literals and numbers into ``out``; returns the number of bytes written."""
    rows, fields = magnitude.shape
    digits = np.empty(20, np.uint8)
    at = 0
    for r in range(rows):
        for k in range(fields + 1):
            for c in range(offsets[k], offsets[k + 1]):
                out[at] = literals[c]
                at += 1
            if k == fields:
                break
            if negative[r, k]:
                out[at] = 45                              # "-"
                at += 1
            value, count = magnitude[r, k], 0
            while True:                                  # digits, last first
                digits[count] = 48 + value % 10
                value //= 10
                count += 1
                if value == 0 and count > places[k]:
                    break
            for c in range(count - 1, -1, -1):
                if c == places[k] - 1:
                    out[at] = 46                          # "."
                    at += 1
                out[at] = digits[c]
                at += 1
    return at
