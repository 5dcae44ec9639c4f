"""Host memory: freeing jax's lowering caches recompiles nothing; restarting under tcmalloc; memory it frees."""
import gc
import json
import logging
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ghn_jax import host_memory
from ghn_jax.nets import deepnets
from ghn_jax.train import executor, targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.names = []

    def emit(self, record):
        if record.getMessage().startswith('Finished XLA compilation'):
            self.names.append(record.getMessage())


def _lowering_cache_sizes():
    from jax._src import pjit
    from jax._src.interpreters import pxla
    return pjit._pjit_lower.cache_info().currsize, pxla._cached_lowering_to_hlo.cache_info().currsize


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return deepnets.SepConv(10, 3, name='op')(x).mean(axis=(1, 2))


def test_release_empties_lowering_caches_and_compiles_nothing_again():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 12)), jnp.float32)
    y = jnp.zeros(4, jnp.int32)
    net = _Net()
    params = net.init(jax.random.key(0), x)['params']
    calls = executor.STATS.calls
    loss, _, grads = targets.net_loss_and_grads(net, params, x, y)
    assert executor.STATS.calls > calls          # the net ran op by op
    assert min(_lowering_cache_sizes()) > 0
    host_memory.release()
    assert _lowering_cache_sizes() == (0, 0)

    handler = _Compiles()
    logging.getLogger('jax').addHandler(handler)
    try:
        with jax.log_compiles(True):
            loss2, _, grads2 = targets.net_loss_and_grads(net, params, x, y)
    finally:
        logging.getLogger('jax').removeHandler(handler)
    assert handler.names == []                   # the executables stayed cached
    np.testing.assert_array_equal(loss, loss2)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads2)):
        np.testing.assert_array_equal(a, b)


def test_use_tcmalloc_respects_opt_out(monkeypatch):
    monkeypatch.setenv(host_memory.ENV_SWITCH, '0')
    assert host_memory.use_tcmalloc() is False   # returns instead of replacing the test process


_CHILD = textwrap.dedent('''
    import ctypes, json, sys
    from ghn_jax import host_memory
    host_memory.use_tcmalloc()
    import jax, jax.numpy as jnp
    def allocated():
        v = ctypes.c_size_t(0)
        ctypes.CDLL(None).MallocExtension_GetNumericProperty(b'generic.current_allocated_bytes', ctypes.byref(v))
        return v.value
    f = jax.jit(lambda x: x * 2 + 1)
    f(jnp.ones(3))
    before = allocated()
    for n in range(4, 24):
        f(jnp.ones(n))
    compiled = allocated()
    host_memory.release()
    print(json.dumps({'active': host_memory.tcmalloc_active(), 'argv': sys.argv[1:],
                      'per_executable_mb': (compiled - before) / 20 / 2**20,
                      'after_release_mb': (allocated() - before) / 20 / 2**20}))
''')


@pytest.mark.skipif(host_memory.find_tcmalloc() is None, reason='tcmalloc is not installed (libtcmalloc-minimal4)')
def test_restart_under_tcmalloc_and_memory_freed():
    env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', host_memory.ENV_SWITCH)}
    env['PYTHONPATH'] = ROOT
    out = subprocess.run([sys.executable, '-c', _CHILD, 'an-argument'], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res['active'] is True            # the child replaced itself with a tcmalloc process
    assert res['argv'] == ['an-argument']   # same command line
    # Each compiled executable kept ~2.5 MB of lowering caches; releasing them leaves a fraction of that.
    assert res['per_executable_mb'] > 1.0
    assert res['after_release_mb'] < 0.5 * res['per_executable_mb']


@pytest.mark.skipif(host_memory.memory_map_usage() is None, reason='needs /proc (Linux)')
def test_executables_are_dropped_near_the_memory_map_limit(monkeypatch, caplog):
    """Each compiled executable holds memory mappings; near the kernel's per-process limit (a long run crashed at
    it) they are dropped, and the functions still work (compiled again when called)."""
    fns = [jax.jit(lambda x, k=k: jnp.sin(x) * k) for k in range(200)]
    for f in fns:
        f(jnp.ones(3)).block_until_ready()
    used, limit = host_memory.memory_map_usage()
    assert not host_memory.keep_under_map_limit()          # far below the real limit: nothing happens
    # A limit just above what the process holds now: above 80% of it, so the executables go.
    monkeypatch.setattr(host_memory, 'memory_map_usage',
                        lambda real=host_memory.memory_map_usage: (real()[0], int(used * 1.1)))
    with caplog.at_level(logging.WARNING):
        assert host_memory.keep_under_map_limit()
    monkeypatch.undo()
    after, _ = host_memory.memory_map_usage()
    assert after < used - 300            # ~3 mappings per executable, 200 of them
    assert 'vm.max_map_count' in caplog.text
    np.testing.assert_allclose(np.asarray(fns[5](jnp.ones(3))), np.sin(1.0) * 5, rtol=1e-6)


def _compiles_during(fn):
    handler = _Compiles()
    logging.getLogger('jax').addHandler(handler)
    try:
        with jax.log_compiles(True):
            out = fn()
    finally:
        logging.getLogger('jax').removeHandler(handler)
    return out, len(handler.names)


def test_op_executable_cache_evicts_the_least_recently_used_first():
    cache = executor.ExecutableCache()
    scaled = jax.jit(lambda k, x: jnp.sin(x) * k, static_argnums=0)
    xs = {n: jnp.ones(n) for n in (3, 4, 5)}
    for n in (3, 4, 5):
        cache(scaled, 1, 2.0, xs[n])
    cache(scaled, 1, 2.0, xs[3])                     # 3 is now the most recent, 4 the least
    assert len(cache) == 3
    assert cache.evict(0.3) == 1 and len(cache) == 2
    out, compiles = _compiles_during(lambda: cache(scaled, 1, 2.0, xs[3]))
    assert compiles == 0                             # kept
    out, compiles = _compiles_during(lambda: cache(scaled, 1, 2.0, xs[4]))
    assert compiles == 1                             # evicted, so compiled again
    np.testing.assert_allclose(np.asarray(out), 2 * np.sin(np.ones(4)), rtol=1e-6)
    # A weakly typed argument or another static value is another executable; tracers take jax.jit's own path.
    cache(scaled, 1, 2.0, jnp.asarray(1.0)), cache(scaled, 1, 2.0, 1.0), cache(scaled, 1, 3.0, xs[3])
    assert len(cache) == 6
    grad = jax.grad(lambda x: cache(scaled, 1, 2.0, x).sum())(xs[5])
    np.testing.assert_allclose(np.asarray(grad), 2 * np.cos(np.ones(5)), rtol=1e-6)
    assert len(cache) == 6
    assert cache.evict(1.0) == 6 and cache.evict(0.5) == 0


@pytest.mark.skipif(host_memory.memory_map_usage() is None, reason='needs /proc (Linux)')
def test_evicted_op_executables_free_their_memory_mappings():
    cache = executor.ExecutableCache()
    op = jax.jit(lambda m, x, w: jax.nn.relu(nn.Conv(8, (3, 3)).apply({'params': w}, x)), static_argnums=0)
    for c in range(4, 24):
        x = jnp.ones((2, 8, 8, c))
        w = nn.Conv(8, (3, 3)).init(jax.random.key(0), x)['params']
        cache(op, 1, None, x, w)
    gc.collect()
    before, _ = host_memory.memory_map_usage()
    cache.evict(1.0)
    gc.collect()
    after, _ = host_memory.memory_map_usage()
    assert after < before - 20, (before, after)


def test_near_the_map_limit_evictors_go_first_and_jax_caches_stay(monkeypatch, caplog):
    """Under the limit after evicting the coldest op executables: nothing else is dropped (no recompile storm)."""
    f = jax.jit(lambda x: x + 1)
    f(jnp.ones(2))
    used = [90]
    calls = []

    def evict(fraction):
        calls.append(fraction)
        used[0] -= 20
        return 1
    monkeypatch.setattr(host_memory, 'memory_map_usage', lambda: (used[0], 100))
    monkeypatch.setattr(host_memory, 'EVICTORS', [evict])
    monkeypatch.setattr(host_memory, '_lru_eviction_warned', False)
    assert not host_memory.keep_under_map_limit(fraction=0.95, target=0.6)   # under the threshold: nothing
    with caplog.at_level(logging.INFO):
        assert host_memory.keep_under_map_limit(fraction=0.8, target=0.6)
        assert used[0] == 50 and len(calls) == 2    # 90 -> 70 -> 50: until under the target
        assert f._cache_size() == 1                  # jax's own caches untouched
        used[0] = 90
        assert host_memory.keep_under_map_limit(fraction=0.8, target=0.6)
    # The first eviction tells how to raise the limit as a warning; later ones only at INFO.
    ours = [r for r in caplog.records if 'memory mappings' in r.getMessage()]
    assert [r.levelno for r in ours] == [logging.WARNING, logging.INFO]
    assert 'sysctl -w vm.max_map_count' in ours[0].getMessage()
    # An evictor with nothing left to drop: then all of jax's executables go, as before.
    used[0] = 90
    monkeypatch.setattr(host_memory, 'EVICTORS', [lambda fraction: 0])
    assert host_memory.keep_under_map_limit(fraction=0.8, target=0.6)
    assert f._cache_size() == 0
