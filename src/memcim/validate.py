"""The one validation module: every check of a user value, named by its parameter.

Each check returns the cleaned value or raises ``ValueError("<name>: <what is wrong>; <what is
allowed>")``. The library names *parameters* (``chips``, ``device.g_max``); the CLI maps a
parameter to its flag (``--chips``) through :data:`memcim.commands._shared.FLAGS`, so the same
message serves both.

Examples
--------
>>> integer("chips", 3, lo=1)
3
>>> integer("chips", 0, lo=1)
Traceback (most recent call last):
...
ValueError: chips: 0 is not allowed; must be an integer >= 1
>>> number("sigma", float("nan"))
Traceback (most recent call last):
...
ValueError: sigma: nan is not finite; a finite number is required
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

#: Largest seed numpy and torch both accept.
MAX_SEED = 2**63 - 1


def number(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite real number in [lo, hi] (open ends with ``lo_open`` / ``hi_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: {value!r} is not finite; a finite number is required")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name}: {value!r} is not allowed; must be {'>' if lo_open else '>='} {lo:g}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name}: {value!r} is not allowed; must be {'<' if hi_open else '<='} {hi:g}")
    return v


def integer(name: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer in [lo, hi]; a float with an integral value is accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name}: expected an integer, got {value!r}")
    value = int(value)
    if lo is not None and value < lo:
        bound = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
        raise ValueError(f"{name}: {value!r} is not allowed; must be {bound}")
    if hi is not None and value > hi:
        bound = f"an integer <= {hi}" if lo is None else f"an integer in {lo}..{hi}"
        raise ValueError(f"{name}: {value!r} is not allowed; must be {bound}")
    return value


def boolean(name: str, value: Any) -> bool:
    """``True`` or ``False`` (no truthy strings or numbers)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    return bool(value)


def choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """One of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not allowed; choose one of {', '.join(allowed)}")
    return value


def seed(value: Any, name: str = "seed") -> int:
    """A random seed: an integer in 0..2**63-1."""
    return integer(name, value, lo=0, hi=MAX_SEED)


def existing_file(name: str, path: str | os.PathLike) -> Path:
    """A path to an existing regular file."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{name}: file not found: {p}")
    if not p.is_file():
        raise ValueError(f"{name}: {p} is a directory; a file is required")
    return p


def out_dir(name: str, path: str | os.PathLike) -> Path:
    """A directory that can be written: created if missing, checked before any work starts."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name}: {p} exists and is not a directory; give a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{name}: cannot create directory {p} ({e.strerror or e})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: directory {p} is not writable")
    return p


def floats(name: str, text: str, *, n: int | None = None) -> list[float]:
    """A comma-separated list of finite numbers (exactly ``n`` of them when given)."""
    parts = [t.strip() for t in str(text).split(",")]
    try:
        vals = [float(t) for t in parts if t]
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a comma-separated list of numbers") from None
    if not vals or any(not math.isfinite(v) for v in vals):
        raise ValueError(f"{name}: {text!r} must hold finite numbers")
    if n is not None and len(vals) != n:
        raise ValueError(f"{name}: {text!r} has {len(vals)} number(s); {n} are required")
    return vals


# ------------------------------------------------------------------ memory
#: Without ``MEMCIM_MAX_MEMORY``, work may use this fraction of the memory available when it starts.
MEMORY_FRACTION = 0.5
#: The limit when the available memory cannot be read (no /proc/meminfo, no sysconf).
FALLBACK_MEMORY = 4 * 2**30
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_bytes(name: str, text: Any) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"``, ``1000000`` -> bytes (a positive integer)."""
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    try:
        v = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ValueError(f"{name}: {text!r} is not a size; give bytes or a number with K, M, G or T "
                         "(e.g. 8G)") from None
    if not math.isfinite(v) or v < 1:
        raise ValueError(f"{name}: {text!r} is not allowed; a size must be positive")
    return int(v)


def available_memory() -> int | None:
    """Bytes of memory available to new work now (``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


#: The limit given on the command line (``--max-memory``): ``(bytes, its text)``, or None.
_cli_limit: tuple[int, str] | None = None


def set_memory_limit(text: Any | None) -> int | None:
    """Set (or, with None, clear) the limit of ``--max-memory SIZE``; it wins over
    ``MEMCIM_MAX_MEMORY``. Returns the bytes (None when cleared)."""
    global _cli_limit
    if text is None:
        _cli_limit = None
        return None
    n = parse_bytes("max_memory", text)
    _cli_limit = (n, str(text))
    return n


def memory_limit() -> tuple[int, str]:
    """``(bytes, where the limit comes from)``: ``--max-memory`` (:func:`set_memory_limit`) when
    given, else ``MEMCIM_MAX_MEMORY`` (e.g. ``8G``) when set, else :data:`MEMORY_FRACTION` of the
    available memory."""
    if _cli_limit is not None:
        return _cli_limit[0], f"--max-memory {_cli_limit[1]}"
    env = os.environ.get("MEMCIM_MAX_MEMORY")
    if env:
        return parse_bytes("MEMCIM_MAX_MEMORY", env), f"MEMCIM_MAX_MEMORY={env}"
    avail = available_memory()
    if avail is None:
        return FALLBACK_MEMORY, "the default when the free memory is unknown; set --max-memory or MEMCIM_MAX_MEMORY to change it"
    return int(avail * MEMORY_FRACTION), (f"{MEMORY_FRACTION:.0%} of the {format_bytes(avail)} available; "
                                          "set --max-memory (or MEMCIM_MAX_MEMORY), e.g. 8G, to change it")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def memory(name: str, nbytes: float, what: str = "this run") -> None:
    """Refuse, before anything is allocated, work whose estimated memory ``nbytes`` exceeds
    :func:`memory_limit`: ``"<name>: <what> needs about 37 GiB, more than the limit 11 GiB (...)"``."""
    limit, source = memory_limit()
    if not math.isfinite(float(nbytes)) or nbytes > limit:
        raise ValueError(f"{name}: {what} needs about {format_bytes(float(nbytes))} of memory, more than the "
                         f"limit {format_bytes(limit)} ({source}); use a smaller value")
