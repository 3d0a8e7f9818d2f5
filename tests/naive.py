"""Slow, readable reference models of every algorithm, written from the specs in ../shared/specs.

Each implementation (Numba in ``telesketch.sketches``, CuPy/CUDA in ``telesketch.gpu``) is tested
against these. One module per algorithm keeps them readable; this module gathers them.
"""
