"""GPU sketches: the CPU classes' parameters, verbs and results, with state in device arrays.

CuPy arrays on a CUDA device (``pip install 'telesketch[gpu]'``), or numpy arrays under Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1`` set before ``numba.cuda`` is first imported), which runs the
same kernels on the CPU for tests. Constructing a sketch with neither raises
:class:`GpuUnavailableError` saying so.
"""
from telesketch.gpu.gapfilter import (
    GapFilterAO,
    GapFilterSO,
    GpuUnavailableError,
    backend,
    device_hash_5tuple,
    hash64_5tuple_device,
)
from telesketch.gpu.hiddensketch import HiddenSketch, device_hash_key_words, hash64_u32_device, hash_key_device
from telesketch.gpu.llmsketch import LLMSketch

__all__ = ["GapFilterAO", "GapFilterSO", "GpuUnavailableError", "HiddenSketch", "LLMSketch", "backend",
           "device_hash_5tuple", "device_hash_key_words", "hash64_5tuple_device", "hash64_u32_device",
           "hash_key_device"]
