"""Small LLVM intrinsics for Numba kernels that Numba does not expose.

``prefetch(array, index)`` asks the CPU to start loading the cache line of ``array[index]`` (a
1-D array, any dtype) into all cache levels, without waiting for it and without faulting on any
index. A kernel that visits a large table in a data-dependent order (a hash table bigger than the
caches) prefetches the entry of the packet a few iterations ahead, so the loads of several
packets overlap instead of each waiting for memory in turn. It changes no result.

``mulhi_u64(a, b)`` is the high word of the full ``uint64 x uint64`` product, which Numba has no
128-bit integer type to spell.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["mulhi_u64", "prefetch"]


@intrinsic
def prefetch(typingctx, array, index):
    """Prefetch the cache line holding ``array[index]`` (read, high temporal locality)."""
    if not isinstance(array, types.Array) or array.ndim != 1 or not isinstance(index, types.Integer):
        return None
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        arrty, idxty = signature.args
        arr = context.make_array(arrty)(context, builder, args[0])
        idx = context.cast(builder, args[1], idxty, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, arrty, arr, [idx], wraparound=False, boundscheck=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep, data cache
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def mulhi_u64(typingctx, a, b):
    """The high 64 bits of the 128-bit product of two ``uint64`` (one ``mul`` on x86-64): what a
    modulo by a run-time constant needs (:func:`telesketch.sketches.hiddensketch._fastmod`)."""
    if not (isinstance(a, types.Integer) and isinstance(b, types.Integer)):
        return None
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i64, i128 = ir.IntType(64), ir.IntType(128)
        x = builder.zext(context.cast(builder, args[0], signature.args[0], types.uint64), i128)
        y = builder.zext(context.cast(builder, args[1], signature.args[1], types.uint64), i128)
        return builder.trunc(builder.lshr(builder.mul(x, y), ir.Constant(i128, 64)), i64)

    return sig, codegen
