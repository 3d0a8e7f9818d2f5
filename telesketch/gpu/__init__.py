"""GPU sketches: the CPU classes' parameters, verbs and results, with state in device arrays.

CuPy arrays on a CUDA device (``pip install 'telesketch[gpu]'``), or numpy arrays under Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1`` set before ``numba.cuda`` is first imported), which runs the
same kernels on the CPU for tests. Constructing a sketch with neither raises
:class:`GpuUnavailableError` saying so.

The service and ``analyze`` reach these classes through ``device = "gpu"`` (per sketch, or
service-wide: ``serve --device gpu``, ``analyze --device gpu``; see
:mod:`telesketch.service.sketchset`), which never falls back to the CPU.
"""
from telesketch.gpu.core import GpuUnavailableError, backend, device_hash_5tuple, hash64_5tuple_device
from telesketch.gpu.gapfilter import GapFilterAO, GapFilterSO
from telesketch.gpu.hiddensketch import HiddenSketch, device_hash_key_words, hash64_u32_device, hash_key_device
from telesketch.gpu.llmsketch import LLMSketch
from telesketch.gpu.residualsketch import CocoSketch, ResidualSketch, bob_hash_device, device_bob_hash, rand32_device

__all__ = ["CocoSketch", "GapFilterAO", "GapFilterSO", "GpuUnavailableError", "HiddenSketch", "LLMSketch",
           "ResidualSketch", "backend", "bob_hash_device", "device_bob_hash", "device_hash_5tuple",
           "device_hash_key_words", "hash64_5tuple_device", "hash64_u32_device", "hash_key_device",
           "rand32_device"]
