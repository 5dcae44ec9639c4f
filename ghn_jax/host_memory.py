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
import os
import sys

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


def release(return_pages: bool = False) -> None:
    """Free what long runs accumulate between steps: jax's lowering caches (costs ~4 ms per computation lowered
    since the last call, nothing once op signatures stop being new), and with ``return_pages`` the allocator's free
    pages too (which the next step then faults in again: ~1.6 s per 4 GB here)."""
    clear_lowering_caches()
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
