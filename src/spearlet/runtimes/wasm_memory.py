"""Linear memories of WASM guests, allocated by the node so that it knows when it refused a growth.

wasmtime's own store limiter refuses a `memory.grow` past the cap silently (the guest sees -1), so
a guest that then aborts (a trap, the way Rust and C programs end on an allocation failure) looks
like any other trap. Here the engine asks us for every linear memory (wasmtime's host memory
creator): each is an anonymous mapping reserved up front (with the guard region the compiled code
relies on) and made accessible as it grows, and a growth past the call's budget is refused and
noted on the budget. A trap after such a refusal is OUT_OF_MEMORY.

The budget of the call that instantiates a module is taken from the instantiating thread (each call
runs on one worker thread); a memory keeps its call's budget for its whole life.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _bindings as ffi

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_PAGE = mmap.PAGESIZE
_PROT_NONE = 0
_MAP_NORESERVE = 0x4000  # Linux: reserve address space only; pages come as they are touched


@dataclass(slots=True)
class MemoryBudget:
    """The linear memory a call may use, and whether a growth past it was refused."""

    cap: int
    refused: bool = False


@dataclass(slots=True)
class _Linear:
    base: int
    mapped: int  # the whole mapping, guard region included
    capacity: int  # bytes that may become accessible without moving
    size: int
    budget: MemoryBudget | None


_memories: dict[int, _Linear] = {}
_ids = itertools.count(1)
_current = threading.local()


def instantiating(budget: MemoryBudget | None) -> None:
    """Memories created on this thread from now on (by an instantiation) belong to `budget`."""
    _current.budget = budget


def _error(message: str) -> int:
    error = ffi.wasmtime_error_new(ctypes.create_string_buffer(message.encode()))
    return ctypes.cast(error, ctypes.c_void_p).value or 0


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


def _new_memory(
    env: object,
    memory_type: object,
    minimum: int,
    maximum: int,
    reserved: int,
    guard: int,
    out: ctypes._Pointer[ffi.wasmtime_linear_memory_t],
) -> int:
    try:
        budget: MemoryBudget | None = getattr(_current, "budget", None)
        limit = maximum if budget is None else min(maximum, budget.cap)
        if minimum > limit:
            return _error(f"the module needs {_mib(minimum)} of memory at start, more than its limit of {_mib(limit)}")
        # A reservation (static memory) must never move, so all of it is mapped now; a memory
        # without one is mapped up to its limit, and never moves either.
        capacity = reserved or -(-limit // _PAGE) * _PAGE
        mapped = capacity + guard
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        base = _libc.mmap(None, mapped, _PROT_NONE, flags, -1, 0)
        if base in (None, _MAP_FAILED):
            return _error(f"cannot reserve {_mib(mapped)} for a linear memory: {os.strerror(ctypes.get_errno())}")
        if minimum and _libc.mprotect(base, minimum, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
            _libc.munmap(base, mapped)
            return _error(f"cannot map {_mib(minimum)} of linear memory: {os.strerror(ctypes.get_errno())}")
        key = next(_ids)
        _memories[key] = _Linear(base, mapped, capacity, minimum, budget)
        memory: Any = out.contents  # typed by the bindings as pointers throughout
        memory.env = key
        memory.get_memory = _GET
        memory.grow_memory = _GROW
        memory.finalizer = _FREE
        return 0
    except BaseException as exc:  # nothing may unwind into wasmtime
        return _error(f"cannot create a linear memory: {exc}")


def _get_memory(env: int, size: ctypes._Pointer[ctypes.c_size_t], capacity: ctypes._Pointer[ctypes.c_size_t]) -> int:
    memory = _memories[env]
    size[0] = memory.size
    capacity[0] = memory.capacity
    return memory.base


def _grow_memory(env: int, new_size: int) -> int:
    try:
        memory = _memories[env]
        budget = memory.budget
        if budget is not None and new_size > budget.cap:
            budget.refused = True
            return _error(f"memory.grow to {_mib(new_size)} refused: over the limit of {_mib(budget.cap)}")
        if new_size > memory.capacity:
            return _error(f"memory.grow to {_mib(new_size)} refused: over the reservation of {_mib(memory.capacity)}")
        if _libc.mprotect(memory.base, new_size, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
            return _error(f"memory.grow to {_mib(new_size)} failed: {os.strerror(ctypes.get_errno())}")
        memory.size = new_size
        return 0
    except BaseException as exc:
        return _error(f"memory.grow failed: {exc}")


def _free_memory(env: int) -> None:
    memory = _memories.pop(env, None)
    if memory is not None:
        _libc.munmap(memory.base, memory.mapped)


_NEW = ffi.wasmtime_new_memory_callback_t(_new_memory)
_GET = ffi.wasmtime_memory_get_callback_t(_get_memory)
_GROW = ffi.wasmtime_memory_grow_callback_t(_grow_memory)
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_free_memory)
_CREATOR = ffi.wasmtime_memory_creator_t(None, _NEW)  # no finalizer: it lives as long as the process


def allocate_memories_here(config: wasmtime.Config) -> None:
    """Let engines made from `config` take every linear memory from this module."""
    ffi.wasmtime_config_host_memory_creator_set(config.ptr(), ctypes.byref(_CREATOR))
    # Copy-on-write images of data segments need wasmtime's own mappings: data is copied in instead.
    ffi.wasmtime_config_memory_init_cow_set(config.ptr(), False)
