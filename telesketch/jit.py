"""The Numba settings of every kernel, in one place, and the decorators that apply them.

CPU kernels (``numba.njit``) all take :data:`CPU_FLAGS`: ``nogil=True`` (a kernel releases the GIL,
so ingest threads and the gRPC server run beside it), ``cache=True`` (machine code is kept in
Numba's on-disk cache, ``NUMBA_CACHE_DIR``, so a process reuses the previous one's compilation;
this needs the decorated function to be module-level) and ``fastmath=False`` (the sketches and
their GPU twins must agree bit for bit, so no reassociation of float arithmetic).

* ``@kernel`` -- ``njit`` with those flags; ``@kernel(signature, inline="always")`` or
  ``@kernel(parallel=True)`` spell out a deliberate difference at the kernel that has it.
* ``@twin(signature, inline=...)`` -- a scalar function written once as plain Python that is valid
  both on the CPU and on a CUDA device (hashes, coins, small bit helpers). It returns the CPU
  kernel; :func:`device_twin` builds the CUDA device function from the *same* Python function, with
  every twin it calls replaced by that twin's device version. So a hash is written once and the
  GPU modules cannot drift from the CPU ones. The arithmetic of a twin must keep every integer
  operand ``uint64`` (or every one signed): on the device a mix of signed and unsigned operands
  would promote to ``float64``.
* ``@gpu_kernel`` / ``@device`` -- ``numba.cuda.jit`` for kernels (``cache=True``) and device
  functions; :data:`THREADS_PER_BLOCK` is the launch block size (:func:`telesketch.gpu.core.launch`).

``numba.cuda`` is imported only when a GPU decorator runs (by the ``telesketch.gpu`` modules), so
CPU-only processes never load it, and ``NUMBA_ENABLE_CUDASIM`` keeps working when set before that.
"""
from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numba as nb

__all__ = ["CACHE", "CPU_FLAGS", "FASTMATH", "NOGIL", "THREADS_PER_BLOCK", "device", "device_twin", "gpu_kernel",
           "kernel", "twin"]

NOGIL = True
CACHE = True
FASTMATH = False
#: The flags of every CPU kernel (see the module docstring for why each one).
CPU_FLAGS: dict[str, Any] = {"nogil": NOGIL, "cache": CACHE, "fastmath": FASTMATH}
#: Threads per block of every GPU launch (a multiple of the 32-thread warp).
THREADS_PER_BLOCK = 128


def kernel(*args, **overrides):
    """``numba.njit`` with :data:`CPU_FLAGS`: ``@kernel``, or ``@kernel(signature, **overrides)``
    where ``overrides`` (``inline="always"``, ``parallel=True``) are the kernel's own settings."""
    if len(args) == 1 and not overrides and callable(args[0]) and not isinstance(args[0], str):
        return nb.njit(**CPU_FLAGS)(args[0])
    return nb.njit(*args, **{**CPU_FLAGS, **overrides})


# ---------------------------------------------------------------------------- CPU/GPU twins
#: CPU twin dispatcher -> (the plain Python function, inline its device version?)
_TWIN_SOURCES: dict[Any, tuple[Callable, bool]] = {}
#: CPU twin dispatcher -> its CUDA device function, built once.
_DEVICE_TWINS: dict[Any, Any] = {}


def twin(*signature, inline: bool = False, device_inline: bool | None = None):
    """Compile a plain Python function as a CPU kernel (returned) and remember it for
    :func:`device_twin`. ``inline``: ``inline="always"`` on the CPU and ``inline=True`` on the
    device; ``device_inline`` overrides the device side where the two deliberately differ."""

    def wrap(fn: Callable):
        cpu = kernel(*signature, inline="always") if inline else kernel(*signature)
        dispatcher = cpu(fn)
        _TWIN_SOURCES[dispatcher] = (fn, inline if device_inline is None else device_inline)
        return dispatcher

    return wrap


def _is_twin(value: Any) -> bool:
    try:
        return value in _TWIN_SOURCES
    except TypeError:  # unhashable globals (dicts, arrays) are never twins
        return False


def device_twin(cpu_twin):
    """The CUDA device function of a :func:`twin`: the same Python function, compiled by
    ``numba.cuda.jit(device=True)`` with every twin it calls (a module global) replaced by that
    twin's device function. Built once per twin; imports ``numba.cuda``."""
    built = _DEVICE_TWINS.get(cpu_twin)
    if built is not None:
        return built
    if not _is_twin(cpu_twin):
        raise TypeError(f"{cpu_twin!r} was not compiled with telesketch.jit.twin")
    fn, inline = _TWIN_SOURCES[cpu_twin]
    scope = dict(fn.__globals__)
    for name in fn.__code__.co_names:
        if _is_twin(scope.get(name)):
            scope[name] = device_twin(scope[name])
    clone = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__qualname__, clone.__doc__, clone.__module__ = fn.__qualname__, fn.__doc__, fn.__module__
    built = device(clone, inline=inline)
    _DEVICE_TWINS[cpu_twin] = built
    return built


# ---------------------------------------------------------------------------- GPU
def gpu_kernel(fn: Callable):
    """``numba.cuda.jit(cache=True)``: a GPU kernel, launched through :func:`telesketch.gpu.core.launch`."""
    from numba import cuda

    return cuda.jit(cache=CACHE)(fn)


def device(fn: Callable | None = None, *, inline: bool = False):
    """``numba.cuda.jit(device=True, inline=inline)``: a device function written for the GPU only."""
    from numba import cuda

    if fn is None:
        return lambda f: cuda.jit(device=True, inline=inline)(f)
    return cuda.jit(device=True, inline=inline)(fn)
