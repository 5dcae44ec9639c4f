"""Host memory of long CPU runs: a caching allocator, and memory handed back between meta-steps.

Two costs measured on XLA:CPU (docs/meta_training.md, "Host memory"):

* **Page faults.** Every XLA buffer is a fresh ``malloc``. glibc serves large ones with new mappings that the
  kernel zero-fills page by page when they are first written, about 1.6 us per 4 KiB page on a VM: adding two
  16 MB maps took 8 ms instead of 1.4 ms. tcmalloc keeps freed pages for reuse; under it a meta-step of 8 target
  nets runs 1.5x faster (its forward 2x). :func:`use_tcmalloc` restarts a command-line entry point under it.
* **Lowering caches.** jax keeps the MLIR module of every lowered computation (about 2.3 MB each, 13 of the 16 MB
  an op signature of a target net costs) in caches keyed by jaxpr, long after the executable is compiled and
  cached elsewhere. :func:`release` empties them; nothing is compiled again, since the executables stay cached.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
from typing import Callable

#: Set to 0 to keep the default allocator in command-line entry points.
ENV_SWITCH = 'GHN_JAX_TCMALLOC'
_LIBRARIES = ('libtcmalloc_minimal.so.4', 'libtcmalloc.so.4')
_DIRS = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib', '/usr/local/lib')


def find_tcmalloc() -> str | None:
    """Path of an installed tcmalloc (Debian/Ubuntu: ``apt install libtcmalloc-minimal4``), or None."""
    for directory in _DIRS:
        for name in _LIBRARIES:
            path = os.path.join(directory, name)
            if os.path.exists(path):
                return path
    found = ctypes.util.find_library('tcmalloc_minimal') or ctypes.util.find_library('tcmalloc')
    return found


def _process_symbol(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None


def tcmalloc_active() -> bool:
    """True when this process allocates with tcmalloc (e.g. started under ``LD_PRELOAD``, as Colab does)."""
    return _process_symbol('MallocExtension_ReleaseFreeMemory') is not None


def use_tcmalloc() -> bool:
    """Restart this command-line process under tcmalloc when it is installed and not yet in use.

    Call it first thing in a ``main``: the process is replaced (``os.execv``) with the same command line and
    ``LD_PRELOAD`` naming tcmalloc, so nothing done before survives. Returns False (and changes nothing) when
    tcmalloc is active already, not installed, disabled by ``GHN_JAX_TCMALLOC=0``, or the platform is not Linux.
    """
    if (not sys.platform.startswith('linux') or os.environ.get(ENV_SWITCH, '1') == '0' or tcmalloc_active()
            or not getattr(sys, 'orig_argv', None)):
        return False
    path = find_tcmalloc()
    if path is None:
        return False
    preload = ' '.join(p for p in (os.environ.get('LD_PRELOAD', ''), path) if p)
    env = dict(os.environ, LD_PRELOAD=preload, **{ENV_SWITCH: '0'})  # '0': the new process does not restart again
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
    return True  # not reached


def clear_lowering_caches() -> None:
    """Drop the MLIR modules jax keeps for computations it has already compiled (compiled code stays cached)."""
    from jax._src import pjit  # noqa: private caches, no public API to trim them
    from jax._src.interpreters import pxla
    for cache in (getattr(pjit, '_pjit_lower', None), getattr(pxla, '_cached_lowering_to_hlo', None)):
        if cache is not None and hasattr(cache, 'cache_clear'):
            cache.cache_clear()


def memory_map_usage() -> tuple[int, int] | None:
    """(memory mappings of this process, the kernel's per-process limit ``vm.max_map_count``); None off Linux."""
    try:
        with open('/proc/sys/vm/max_map_count') as f:
            limit = int(f.read())
        with open('/proc/self/maps', 'rb') as f:
            used = f.read().count(b'\n')
    except (OSError, ValueError):
        return None
    return used, limit


#: Drop compiled executables when the process holds this fraction of ``vm.max_map_count`` mappings ...
MAP_LIMIT_FRACTION = 0.8
#: ... down to this fraction, least recently used first.
MAP_TARGET_FRACTION = 0.7
#: Callables that drop a fraction of a cache's least recently used executables and return how many went
#: (:mod:`ghn_jax.train.executor` registers its op cache). Tried before emptying all of jax's caches.
EVICTORS: list[Callable[[float], int]] = []
_release_calls = 0
_lru_eviction_warned = False
_RAISE_THE_LIMIT = ('Dropped executables are compiled again (or read from the persistent cache) when next needed; if '
                    'this repeats every few steps, raise the limit, which running processes see at once: '
                    'sudo sysctl -w vm.max_map_count=262144')


def keep_under_map_limit(fraction: float = MAP_LIMIT_FRACTION, target: float = MAP_TARGET_FRACTION) -> bool:
    """Drop compiled executables when this process is close to the kernel's limit on memory mappings.

    Every fused kernel XLA:CPU compiles holds about three mappings (an op of a target net 20-60). A long
    meta-training run compiles thousands of op signatures; past the limit (65,530 by default) the next compile
    fails ("LLVM compilation error: Cannot allocate memory") and the process crashes: it happened here after 640
    steps of a resumed Fashion-MNIST run. Above ``fraction`` of the limit, the least recently used executables of
    the :data:`EVICTORS` go, a tenth at a time, until the process is under ``target``; only if that is not enough
    are all of jax's compiled executables dropped. Dropped executables are compiled again, or read from the
    persistent compilation cache, when next needed. Past ~2,000 Fashion-MNIST steps the working set outgrows the
    default limit and evictions come every 10-20 steps (1.5x slower steps), so the first eviction of a process
    warns with the command that raises the limit. Returns True when it dropped any."""
    global _lru_eviction_warned
    usage = memory_map_usage()
    if usage is None or usage[0] < fraction * usage[1]:
        return False
    before = usage[0]
    for evict in EVICTORS:
        while usage[0] >= target * usage[1] and evict(0.1):
            gc.collect()
            usage = memory_map_usage()
    if usage[0] < fraction * usage[1]:
        # Once per process as a warning: a run whose working set outgrows the limit evicts every few steps.
        log = logging.info if _lru_eviction_warned else logging.warning
        _lru_eviction_warned = True
        log('%d memory mappings, close to the limit vm.max_map_count=%d: dropped the least recently used op '
            'executables (%d mappings now). %s', before, usage[1], usage[0], _RAISE_THE_LIMIT)
        return True
    import jax
    jax.clear_caches()
    gc.collect()
    after = memory_map_usage()
    logging.warning('%d memory mappings, close to the limit vm.max_map_count=%d: dropped jax\'s compiled '
                    'executables (%s mappings now). %s', before, usage[1], after[0] if after else '?',
                    _RAISE_THE_LIMIT)
    return True


def release(return_pages: bool = False) -> None:
    """Free what long runs accumulate between steps: jax's lowering caches (costs ~4 ms per computation lowered
    since the last call, nothing once op signatures stop being new), every tenth call compiled executables when
    the process nears its limit of memory mappings (:func:`keep_under_map_limit`), and with ``return_pages`` the
    allocator's free pages too (which the next step then faults in again: ~1.6 s per 4 GB here)."""
    global _release_calls
    clear_lowering_caches()
    _release_calls += 1
    if _release_calls % 10 == 0:
        keep_under_map_limit()
    if not return_pages:
        return
    gc.collect()
    release_tcmalloc = _process_symbol('MallocExtension_ReleaseFreeMemory')
    if release_tcmalloc is not None:
        release_tcmalloc()
        return
    trim = _process_symbol('malloc_trim')   # glibc
    if trim is not None:
        trim(0)


def allocator_name() -> str:
    return 'tcmalloc' if tcmalloc_active() else 'default'
