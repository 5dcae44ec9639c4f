"""A persistent XLA compilation cache for ghn_jax's entry points.

Compiling the GHN for a padding budget (about 1-1.5 s on a 2-core CPU) and the
per-op target-net executables dominate a fresh process. With the cache on disk,
later processes (a second `python -m ghn_jax.predict`, a resumed training run)
load those executables instead of compiling them again. Call `enable` before
the first compilation of the process.
"""
from __future__ import annotations

import os

import jax

DEFAULT_DIR = '~/.cache/ghn_jax/xla'


def enable(directory: str = DEFAULT_DIR) -> str:
    """Keeps every compiled executable under ``directory``; returns the directory in use.

    A directory already configured (e.g. by ``JAX_COMPILATION_CACHE_DIR``) is kept, with its settings.
    """
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(directory))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    return jax.config.jax_compilation_cache_dir
