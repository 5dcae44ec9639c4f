"""Meta-training: per-op execution (no whole-net compiles), exact resume after kill -9, data parallelism, NaN guard."""
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from ghn_jax.hypernet.ghn import GHN
from ghn_jax.hypernet.predictor import init_params
from ghn_jax.nets import deepnets
from ghn_jax.train import executor, meta_train, targets
from ghn_jax.train.checkpointing import Checkpointer
from ghn_jax.train.config import load_config
from ghn_jax.train.meta_train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import test as test_config  # noqa: E402


def _config(**overrides):
    c = test_config.get_config()
    c.update(overrides)
    return c


def _ghn_params(workdir):
    from ghn_jax.hypernet.checkpoint import load_npz
    return load_npz(os.path.join(workdir, 'ghn.npz'))[0]


def _max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _max_abs(tree):
    return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree_util.tree_leaves(tree))


def _kept_buffers(pullback) -> dict[int, int]:
    """The distinct buffers a pullback holds for the backward pass: address -> bytes."""
    return {a.unsafe_buffer_pointer(): a.nbytes for a in jax.tree_util.tree_leaves(pullback)
            if isinstance(a, jax.Array)}


@pytest.mark.parametrize('arg, num_steps, batch_size', [(None, 3000, 64), ('4500', 4500, 64), ('6000,32', 6000, 32)])
def test_fashion_config_drops_the_learning_rate_at_two_thirds_and_five_sixths(arg, num_steps, batch_size):
    from configs import fashion_mnist_cpu
    config = fashion_mnist_cpu.get_config(arg)
    steps_per_epoch = 54_000 // config.batch_size   # Fashion-MNIST's 60,000 minus the 10% held out
    drops = [int(m * steps_per_epoch) for m in config.lr_milestones]   # as meta_train.make_optimizer places them
    assert (config.num_steps, config.batch_size) == (num_steps, batch_size)
    assert drops == pytest.approx([2 * num_steps / 3, 5 * num_steps / 6], abs=1)
    assert config.low_res_steps == round(0.6 * num_steps)   # the first 60% on 16x16 images
    # Tools outside the absl CLI take the same 'path.py:arg' form.
    path = os.path.join(ROOT, 'configs', 'fashion_mnist_cpu.py')
    assert load_config(path + (f':{arg}' if arg else '')).to_dict() == config.to_dict()


def test_learning_rate_schedules():
    config = _config(num_steps=100)
    config.lr_milestones = (5, 8)                                 # epochs of 10 steps: drops at steps 50 and 80
    step = meta_train.learning_rate_schedule(config, 10)
    assert [float(step(i)) for i in (0, 49, 50, 79, 80)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    config.lr_schedule = 'cosine'                                 # from the learning rate to 0 over the run
    cosine = meta_train.learning_rate_schedule(config, 10)
    assert [float(cosine(i)) for i in (0, 50, 100)] == pytest.approx([1e-3, 5e-4, 0.0], abs=1e-9)
    config.lr_schedule = 'linear'
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        meta_train.learning_rate_schedule(config, 10)


def test_downscale_averages_blocks_and_rejects_sizes_that_do_not_divide():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    small = meta_train.downscale(x, 2)
    assert small.shape == (2, 2, 2, 3)
    np.testing.assert_allclose(small[1, 0, 1], x[1, 0:2, 2:4].mean(axis=(0, 1)))
    with pytest.raises(ValueError, match='must divide'):
        meta_train.downscale(x, 3)


def test_low_resolution_phase_feeds_small_images_for_its_steps_only(tmp_path, monkeypatch):
    """Steps below low_res_steps run every net that takes any image size on 16x16 images, the rest on 32x32."""
    seen = []   # per net call: (takes any size, image side)
    run_net = meta_train.net_loss_and_grads

    def recording(module, params, x, *args):
        seen.append((meta_train.takes_any_image_size(module), x.shape[1]))
        return run_net(module, params, x, *args)

    monkeypatch.setattr(meta_train, 'net_loss_and_grads', recording)
    config = _config(num_steps=3, low_res_steps=2, eval_archs=0, meta_batch_size=4)
    summary = train_and_evaluate(config, str(tmp_path))
    first, last = seen[:8], seen[8:]
    assert [side for any_size, side in first] == [16 if any_size else 32 for any_size, _ in first]
    assert any(any_size for any_size, _ in first) and [side for _, side in last] == [32] * 4
    assert np.isfinite(summary['train_loss_last'])
    with pytest.raises(ValueError, match='grad_estimator=bp.*low_res_steps=0'):
        train_and_evaluate(_config(low_res_steps=2, grad_estimator='fg'), str(tmp_path / 'fg'))


def test_resuming_with_a_changed_config_keeps_the_previous_one(tmp_path, caplog):
    config = _config(num_steps=10)
    meta_train.save_config(config, str(tmp_path), 0)
    meta_train.save_config(config, str(tmp_path), 5)   # unchanged: nothing kept aside
    assert sorted(os.listdir(tmp_path)) == ['config.json']
    with caplog.at_level(logging.WARNING):
        meta_train.save_config(_config(num_steps=20), str(tmp_path), 7)
    assert 'num_steps: 10 -> 20' in caplog.text
    with open(tmp_path / 'config.before_step_7.json') as f:
        assert json.load(f)['num_steps'] == 10
    with open(tmp_path / 'config.json') as f:
        assert json.load(f)['num_steps'] == 20


def test_executor_matches_whole_net_jit():
    """Per-op execution (whatever each op keeps for its backward pass) gives whole-net jit's loss, logits and
    gradients."""
    config = _config()
    images = meta_train.load_image_data(config)
    x, y = (jnp.asarray(a) for a in images.batch(0, 0, 8))
    modules, _ = meta_train.sample_meta_batch(config, 0, meta_train.ghn_config(config))
    module = modules[0]
    params = module.init(jax.random.key(0), x)['params']
    loss, logits, grads = executor.loss_and_grads(module, params, x, y, targets.cross_entropy)
    grads_remat = {mode: executor.loss_and_grads(module, params, x, y, targets.cross_entropy, remat=mode)[2]
                   for mode in ('conv_outputs', 'full')}
    grads_remat['conv_outputs, 256 KB budget'] = executor.loss_and_grads(
        module, params, x, y, targets.cross_entropy, remat='conv_outputs', max_residual_bytes=2**18)[2]
    (loss_ref, logits_ref), grads_ref = jax.jit(jax.value_and_grad(
        lambda p: (targets.cross_entropy(module.apply({'params': p}, x), y), module.apply({'params': p}, x)),
        has_aux=True))(params)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-4, atol=1e-5)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(grads_ref)
    assert _max_abs_diff(grads, grads_ref) < 1e-4
    for mode, g in grads_remat.items():  # recomputing parts of each op in the backward pass changes nothing
        assert _max_abs_diff(g, grads) < 1e-5, mode


def test_remat_modes_keep_less_for_the_backward_pass():
    """What a net keeps between its forward and backward passes shrinks from 'none' to 'conv_outputs' to 'full'."""
    config = _config()
    x, y = (jnp.asarray(a) for a in meta_train.load_image_data(config).batch(0, 0, 8))
    module = meta_train.sample_meta_batch(config, 0, meta_train.ghn_config(config))[0][0]
    params = module.init(jax.random.key(0), x)['params']

    def kept_bytes(mode: str) -> int:
        def loss(p):
            with executor.per_op(mode):
                return targets.cross_entropy(module.apply({'params': p}, x), y)
        return sum(_kept_buffers(jax.vjp(loss, params)[1]).values())

    kept = {mode: kept_bytes(mode) for mode in executor.REMAT_MODES}
    assert kept['none'] > 1.5 * kept['conv_outputs'] > 1.5 * kept['full'], kept
    with pytest.raises(ValueError, match='remat mode'):
        kept_bytes('some')


def test_ops_keep_an_input_once_and_a_budget_drops_what_they_computed():
    """An input read by two ops (a cell state) is kept for their backward passes as it is: once, not copied per op.
    Under a zero ``ResidualBudget`` that is all the ops keep; their conv outputs are recomputed, same gradients."""
    class TwoReaders(nn.Module):
        @nn.compact
        def __call__(self, x):
            return deepnets.ReLUConvBN(4, 3, name='a')(x) + deepnets.ReLUConvBN(4, 3, name='b')(x)

    module = TwoReaders()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    params = module.init(jax.random.key(0), x)['params']
    params_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(params))

    def kept_bytes_and_grads(remat, budget=None):
        def loss(p, x):
            with executor.per_op(remat, budget):
                return module.apply({'params': p}, x).sum()
        _, pullback = jax.vjp(loss, params, x)
        kept = _kept_buffers(pullback)
        assert x.unsafe_buffer_pointer() in kept
        return sum(kept.values()), pullback(jnp.ones(()))

    kept, grads = kept_bytes_and_grads('full')
    assert kept == x.nbytes + params_bytes
    kept_conv, grads_conv = kept_bytes_and_grads('conv_outputs')
    assert kept_conv >= kept + 2 * x.nbytes   # two conv outputs of x's size
    budget = executor.ResidualBudget(0)
    kept_budget, grads_budget = kept_bytes_and_grads('conv_outputs', budget)
    assert kept_budget == kept and budget.bytes == 0 and budget.recomputed == 2
    assert _max_abs_diff(grads_budget, grads_conv) < 1e-6 and _max_abs_diff(grads, grads_conv) < 1e-6


@pytest.mark.parametrize('make_op, remat, extra_kept', [
    # attention's output (x's size) and row log-sum-exps (batch, tokens, heads, 1): attention never runs twice
    (lambda: deepnets.Transformer(16, name='op'), 'conv_outputs', lambda x: x.nbytes + 2 * 16 * 8 * 4),
    # the two batch norms' mean and gain; the depthwise and 1x1 convs' outputs are recomputed
    (lambda: deepnets.SepConv(16, 3, name='op'), 'conv_outputs', lambda x: 2 * 2 * 16 * 4),
    # ... unless 1x1 outputs are kept too
    (lambda: deepnets.SepConv(16, 3, name='op'), 'all_conv_outputs', lambda x: 2 * x.nbytes + 2 * 2 * 16 * 4),
    # a 3x3 conv's output and its norm's mean and gain
    (lambda: deepnets.ReLUConvBN(16, 3, name='op'), 'conv_outputs', lambda x: x.nbytes + 2 * 16 * 4),
    # a cell's input preprocessing (1x1 conv): its norm's mean and gain only
    (lambda: deepnets.ReLUConvBN(16, 1, name='op'), 'conv_outputs', lambda x: 2 * 16 * 4),
])
def test_what_an_op_keeps_under_conv_outputs(make_op, remat, extra_kept):
    """Under ``conv_outputs`` an op keeps its inputs and the named arrays of ``executor.KEPT_NAMES``, nothing else
    (``all_conv_outputs``: also its 1x1 convs' outputs); gradients equal keeping everything."""
    class Holder(nn.Module):
        @nn.compact
        def __call__(self, x):
            return make_op()(x)

    module = Holder()
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 16))
    params = module.init(jax.random.key(0), x)['params']

    def kept_bytes_and_grads(remat):
        def loss(p):
            with executor.per_op(remat):
                return (module.apply({'params': p}, x) ** 2).sum()
        _, pullback = jax.vjp(loss, params)
        return sum(_kept_buffers(pullback).values()), pullback(jnp.ones(()))

    kept_full, grads_full = kept_bytes_and_grads('full')
    kept_conv, grads_conv = kept_bytes_and_grads(remat)
    _, grads_all = kept_bytes_and_grads('none')
    assert kept_conv == kept_full + extra_kept(x)
    tolerance = 1e-6 * _max_abs(grads_all)
    assert _max_abs_diff(grads_conv, grads_all) < tolerance and _max_abs_diff(grads_full, grads_all) < tolerance


def test_backward_computes_no_cotangent_for_constant_inputs(monkeypatch):
    """The first conv's input is the images, a constant: its backward executable returns the filter gradient only.
    When the input is differentiated, its gradient is there and equals the plain one."""
    class Stem(nn.Module):
        @nn.compact
        def __call__(self, x):
            return deepnets.ReLUConvBN(4, 3, name='cell')(nn.Conv(4, (3, 3), name='stem')(x))

    module = Stem()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    params = module.init(jax.random.key(0), x)['params']
    returned = []
    cache = executor.OP_EXECUTABLES

    def recording_cache(fn, num_static, *args):
        out = cache(fn, num_static, *args)
        if fn is executor._op_backward:
            returned.extend(a.shape for a in out)
        return out
    monkeypatch.setattr(executor, 'OP_EXECUTABLES', recording_cache)

    def loss(p, x, per_op=True):
        with executor.per_op('conv_outputs') if per_op else contextlib.nullcontext():
            return (module.apply({'params': p}, x) ** 2).sum()
    jax.grad(loss)(params, x)
    assert returned and x.shape not in returned
    returned.clear()
    grads = jax.grad(loss, argnums=(0, 1))(params, x)
    assert x.shape in returned
    assert _max_abs_diff(grads, jax.grad(loss, argnums=(0, 1))(params, x, per_op=False)) < 1e-5 * _max_abs(grads)


def test_residual_budget_drops_the_earliest_ops_first():
    budget = executor.ResidualBudget(max_bytes=3 * 400)
    for key in range(5):
        budget.hold(key, [jnp.zeros(100, jnp.float32)])    # 400 bytes each
    assert budget.bytes == 1200
    assert [budget.take(key) is None for key in range(5)] == [True, True, False, False, False]
    assert budget.bytes == 0 and budget.recomputed == 2


class _CompileLog(logging.Handler):
    """Collects the names of the computations XLA compiles (from ``jax.log_compiles``)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith('Compiling '):
            self.names.append(msg.split()[1])


# What compiling a whole target network looks like (targets.py's whole-net back-end, or jitting module.apply/init).
WHOLE_NET_COMPILES = {'jit(loss_fn)', 'jit(apply)', 'jit(init)'}


def test_steady_state_compiles_no_whole_network():
    """After warm-up, 20 meta-steps of new architectures compile only op-level or GHN pieces, never a net."""
    config = _config(meta_batch_size=2)
    cfg = meta_train.ghn_config(config)
    ghn = GHN(cfg)
    params = init_params(cfg, jax.random.key(0))
    images = meta_train.load_image_data(config)
    x, y = (jnp.asarray(a) for a in images.batch(0, 0, 8))

    def step(s):
        modules, graphs = meta_train.sample_meta_batch(config, s, cfg)
        return meta_train.meta_step_grads(ghn, params, graphs, modules, x, y)

    for s in range(2):  # warm-up
        step(s)
    log = _CompileLog()
    logger = logging.getLogger('jax')
    logger.addHandler(log)
    calls0 = executor.STATS.calls
    try:
        with jax.log_compiles():
            for s in range(2, 22):
                assert np.isfinite(step(s).loss)
    finally:
        logger.removeHandler(log)
    assert executor.STATS.calls - calls0 > 20 * 2 * 5, 'the nets did not run through the per-op executor'
    whole_net = [n for n in log.names if n in WHOLE_NET_COMPILES]
    assert not whole_net, f'whole-network compiles in steady state: {whole_net}'

    # The detector itself works: the whole-net back-end does compile the network.
    targets.set_backend('whole_net')
    try:
        logger.addHandler(log)
        with jax.log_compiles():
            step(99)
    finally:
        targets.set_backend('per_op')
        logger.removeHandler(log)
    assert 'jit(loss_fn)' in log.names


def _wait_for_checkpoint(workdir, step, proc, timeout=600):
    path = os.path.join(workdir, 'checkpoints', str(step))
    t0 = time.time()
    while not os.path.isdir(path):
        if proc.poll() is not None:
            raise AssertionError(f'training exited early:\n{proc.stderr.read().decode()[-3000:]}')
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError('no checkpoint appeared in time')
        time.sleep(0.2)


def test_kill_minus_9_then_resume_equals_uninterrupted_run(tmp_path):
    overrides = ['--config.num_steps=5', '--config.checkpoint_every=1', '--config.eval_archs=0']
    killed = str(tmp_path / 'killed')
    proc = subprocess.Popen([sys.executable, '-m', 'ghn_jax.train.main', f'--config={ROOT}/configs/test.py',
                             f'--workdir={killed}', *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _wait_for_checkpoint(killed, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert Checkpointer(killed).latest_step() < 5, 'the run finished before it was killed'

    config = _config(num_steps=5, checkpoint_every=1, eval_archs=0)
    resumed = train_and_evaluate(config, killed)
    assert resumed['step'] == 5
    train_and_evaluate(config, str(tmp_path / 'straight'))
    assert _max_abs_diff(_ghn_params(killed), _ghn_params(str(tmp_path / 'straight'))) == 0.0


def test_sigterm_saves_a_checkpoint_after_the_current_step_and_exits(tmp_path):
    """``kill PID`` (a preemption notice) stops the run within a step, with a checkpoint of where it stopped."""
    workdir = str(tmp_path / 'run')
    overrides = ['--config.num_steps=200', '--config.checkpoint_every=1000', '--config.eval_archs=0']
    proc = subprocess.Popen([sys.executable, '-m', 'ghn_jax.train.main', f'--config={ROOT}/configs/test.py',
                             f'--workdir={workdir}', *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    metrics = os.path.join(workdir, 'metrics.jsonl')
    t0 = time.time()
    while not os.path.exists(metrics) or len(open(metrics).readlines()) < 3:   # log_every=1: a row per step
        assert proc.poll() is None, f'training exited early:\n{proc.stderr.read().decode()[-3000:]}'
        assert time.time() - t0 < 600, 'no steps logged in time'
        time.sleep(0.05)
    steps_before = len(open(metrics).readlines())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    saved = Checkpointer(workdir).latest_step()
    assert steps_before <= saved <= steps_before + 2, (steps_before, saved)
    assert f'preempted: checkpoint saved at step {saved}' in err.decode()


def test_each_metrics_row_averages_the_steps_since_the_previous_row_across_a_preemption(tmp_path, monkeypatch):
    """A run stopped at step 4 with log_every=3 logs steps 1-3, 4, then after resuming 5-6: no step twice or lost."""
    from ghn_jax.train.metrics import read_metrics
    config = _config(num_steps=6, checkpoint_every=100, eval_archs=0, export_npz=False, log_every=1)
    train_and_evaluate(config, str(tmp_path / 'straight'))
    loss = {r['step']: r['loss'] for r in read_metrics(str(tmp_path / 'straight')) if 'loss' in r}

    config.log_every = 3
    monkeypatch.setattr(Checkpointer, 'should_stop', lambda self, step: step == 4)
    stopped = str(tmp_path / 'stopped')
    assert train_and_evaluate(config, stopped) == {'step': 4, 'preempted': True}
    assert train_and_evaluate(config, stopped)['step'] == 6
    rows = {r['step']: r['loss'] for r in read_metrics(stopped) if 'loss' in r}
    assert sorted(rows) == [3, 4, 6]
    np.testing.assert_allclose(rows[3], np.mean([loss[1], loss[2], loss[3]]), rtol=1e-6)
    np.testing.assert_allclose(rows[4], loss[4], rtol=1e-6)
    np.testing.assert_allclose(rows[6], np.mean([loss[5], loss[6]]), rtol=1e-6)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    config = _config(num_steps=2, checkpoint_every=1, eval_archs=0, export_npz=False)
    workdir = str(tmp_path / 'run')
    train_and_evaluate(config, workdir)
    from ghn_jax.hypernet.predictor import GHN2
    step_1 = Checkpointer(workdir).restore(None, 1)['params']
    for root, _, files in os.walk(os.path.join(workdir, 'checkpoints', '2')):
        for f in files:
            with open(os.path.join(root, f), 'wb') as fh:
                fh.write(b'garbage')
    # Predicting from the workdir reads the newest readable checkpoint and leaves the files as they are.
    assert _max_abs_diff(GHN2.from_checkpoint(workdir).params, step_1) == 0.0
    assert not os.path.exists(os.path.join(workdir, 'checkpoints_unreadable'))
    with pytest.raises(FileNotFoundError, match='not a ghn_jax training workdir'):
        GHN2.from_checkpoint(str(tmp_path))
    config.num_steps = 3
    assert train_and_evaluate(config, workdir)['step'] == 3
    assert Checkpointer(workdir).latest_step() == 3
    assert os.listdir(os.path.join(workdir, 'checkpoints_unreadable')) == ['2']  # kept aside, not deleted


def test_nan_guard_skips_then_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    real = meta_train.meta_step_grads

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        out.grads = jax.tree_util.tree_map(lambda g: g * jnp.nan, out.grads)
        return out

    config = _config(num_steps=6, checkpoint_every=100, eval_archs=0, max_nonfinite_skips=2)
    monkeypatch.setattr(meta_train, 'meta_step_grads', poisoned)
    with pytest.raises(FloatingPointError, match='non-finite'):
        train_and_evaluate(config, str(tmp_path))
    from ghn_jax.train.checkpointing import load_ghn_from_train_dir
    from ghn_jax.train.metrics import read_metrics
    assert [r['skipped'] for r in read_metrics(str(tmp_path))] == [1, 1, 1]
    # Every step was skipped, so the saved parameters are still the initial ones.
    _, saved = load_ghn_from_train_dir(str(tmp_path))
    cfg = meta_train.ghn_config(config)
    assert _max_abs_diff(saved, init_params(cfg, jax.random.key(config.seed))) == 0.0


def test_four_simulated_devices_match_one_device():
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {ROOT!r})
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from configs import test as tc
        from ghn_jax.hypernet.ghn import GHN
        from ghn_jax.hypernet.predictor import init_params
        from ghn_jax.train import meta_train
        assert jax.device_count() == 4
        config = tc.get_config()
        cfg = meta_train.ghn_config(config)
        ghn = GHN(cfg)
        images = meta_train.load_image_data(config)
        x, y = images.batch(0, 0, 8)
        modules, graphs = meta_train.sample_meta_batch(config, 0, cfg)
        results = []
        for n in (1, 4):
            mesh = meta_train.make_mesh(n)
            params = jax.device_put(init_params(cfg, jax.random.key(0)), NamedSharding(mesh, P()))
            xs = jax.device_put(x, NamedSharding(mesh, P('data')))
            ys = jax.device_put(y, NamedSharding(mesh, P('data')))
            assert len(xs.sharding.device_set) == n
            res = meta_train.meta_step_grads(ghn, params, graphs, modules, xs, ys)
            results.append((res.loss, jax.tree_util.tree_leaves(jax.device_get(res.grads))))
        (l1, g1), (l4, g4) = results
        scale = max(1.0, max(float(np.max(np.abs(a))) for a in g1))
        print('LOSS_DIFF', abs(l1 - l4))
        print('GRAD_DIFF', max(float(np.max(np.abs(a - b))) for a, b in zip(g1, g4)) / scale)
    """)
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4')
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    values = dict(line.split() for line in out.stdout.splitlines() if line.startswith(('LOSS', 'GRAD')))
    assert float(values['LOSS_DIFF']) < 1e-5
    assert float(values['GRAD_DIFF']) < 1e-5  # the GHN update (relative to the largest gradient)


def test_evaluate_cli_reports_every_method(tmp_path, capsys):
    from ghn_jax.hypernet.predictor import GHN2
    from ghn_jax.train import evaluate
    config = _config()
    ghn_path = str(tmp_path / 'ghn.npz')
    GHN2(meta_train.ghn_config(config), init_params(meta_train.ghn_config(config), jax.random.key(0))).save(ghn_path)
    out = tmp_path / 'results.json'
    results = evaluate.main(['--ghn', ghn_path, '--config', os.path.join(ROOT, 'configs', 'test.py'), '--n', '2',
                             '--sgd-steps', '3', '--sgd-archs', '1', '--extra', 'bnfree', '--out', str(out),
                             '--plot', str(tmp_path / 'results.png')])
    summary = results['summary']
    assert set(summary) == {'random_init', 'ghn', 'sgd_3_clip5'}   # clipped at norm 5 by default, as the reference
    assert summary['ghn']['n'] == 2 and summary['sgd_3_clip5']['n'] == 1
    assert results['paired']['ghn - sgd_3_clip5']['n'] == 1 and results['paired']['ghn - random_init']['n'] == 2
    assert all(0.0 <= v['mean'] <= 100.0 for v in summary.values())
    assert 'bnfree' in results['extra'] and 'ghn' in results['extra']['bnfree']
    assert '"bnfree": {' in capsys.readouterr().out   # printed with the summary, not only written to --out
    assert out.exists() and (tmp_path / 'results.png').stat().st_size > 1000
    # without the random baseline (no whole-net init compile), under a named column (two checkpoints merge side by
    # side): only the GHN column, parameter counts unchanged
    quick = evaluate.main(['--ghn', ghn_path, '--config', os.path.join(ROOT, 'configs', 'test.py'), '--n', '1',
                           '--no-random-init', '--ghn-name', 'ghn_again'])
    assert set(quick['summary']) == {'ghn_again'} and 'ghn_again_seconds' in quick['per_arch'][0]
    assert quick['per_arch'][0]['n_params'] == results['per_arch'][0]['n_params']
    assert quick['per_arch'][0]['ghn_again'] == results['per_arch'][0]['ghn']
    # results so far after every net (the CLI rewrites --out with them): an interrupted evaluation keeps its nets
    parts = []
    final = evaluate.evaluate(GHN2.from_checkpoint(ghn_path), config, 'test', 2, random_init=False,
                              on_results=parts.append)
    assert [p['n_archs'] for p in parts] == [1, 2] and parts[-1] == final
    assert parts[0]['per_arch'][0]['ghn'] == results['per_arch'][0]['ghn']
    # the config's caps on the nets can be lifted (the wide and deep splits); results record them
    assert results['archs'] == {'max_cells': config.archs.max_cells, 'max_channels': config.archs.max_channels}
    wider = evaluate.main(['--ghn', ghn_path, '--config', os.path.join(ROOT, 'configs', 'test.py'), '--n', '1',
                           '--no-random-init', '--max-channels', '16'])
    assert wider['archs']['max_channels'] == 16 and wider['per_arch'][0]['n_params'] > quick['per_arch'][0]['n_params']
    with pytest.raises(SystemExit):   # a column that does not say it is a GHN's
        evaluate.main(['--ghn', ghn_path, '--ghn-name', 'cosine'])
    assert results['eval_batch_size'] == config.eval_batch_size


def test_extra_nets_are_zoo_models_the_first_bnfree_net_or_architecture_files(tmp_path):
    from ghn_jax.train import evaluate
    config = _config()
    for name, kind in (('resnet34', 'ResNet'), ('vit', 'Network'), ('bnfree', 'Network')):
        got, module, shape = evaluate.extra_net(name, config)
        assert got == name and type(module).__name__ == kind and shape == (1, 32, 32, 3)
    assert evaluate.extra_net('bnfree', config)[1].norm is None
    (tmp_path / 'my_net.json').write_text(json.dumps({'model': 'resnet18', 'adjust_net': True}))
    name, module, shape = evaluate.extra_net(str(tmp_path / 'my_net.json'), config)
    assert name == 'my_net' and module.num_classes == config.data.num_classes and shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="unknown extra net 'resnet9'.*known: .*resnet50"):
        evaluate.extra_net('resnet9', config)


def test_merge_joins_evaluation_shards_and_rejects_overlap(tmp_path, capsys):
    from ghn_jax.train import evaluate
    def part(start, accs, split='test', extra=None, batch=64):
        rows = [{'net': f'{split}/{start + i}', 'n_params': 10, 'random_init': 0.1, 'ghn': a} for i, a in enumerate(accs)]
        out = {'split': split, 'n_archs': len(rows), 'eval_batch_size': batch, 'summary': evaluate.summarise(rows),
               'per_arch': rows}
        return {**out, 'extra': extra} if extra else out
    resnet = {'net': 'resnet18', 'n_params': 99}
    merged = evaluate.merge([part(10, [0.3]), part(0, [0.1, 0.2]), part(0, [], extra={'resnet18': {**resnet, 'ghn': 0.5}}),
                             part(0, [], extra={'resnet18': {**resnet, 'sgd_100': 0.8}})])   # extra nets join too
    assert [r['net'] for r in merged['per_arch']] == ['test/0', 'test/1', 'test/10']
    assert merged['eval_batch_size'] == 64
    assert merged['summary']['ghn']['n'] == 3 and abs(merged['summary']['ghn']['mean'] - 20.0) < 1e-9
    assert merged['extra'] == {'resnet18': {**resnet, 'ghn': 0.5, 'sgd_100': 0.8}}
    noted = evaluate.merge([{**part(0, [0.1]), 'note': 'a', 'ghn_meta_steps': 9, 'by_trait': {'norm': {}}},
                            {**part(1, [0.2]), 'note': 'b'}])
    assert noted['ghn_meta_steps'] == 9 and noted['note'] == ['a', 'b'] and noted['n_archs'] == 2   # hand-written keys stay
    assert 'by_trait' not in noted   # computed from the rows: stale once rows join
    with pytest.raises(ValueError, match='overlap'):
        evaluate.merge([part(0, [0.1, 0.2]), part(1, [0.3])])
    with pytest.raises(ValueError, match='different splits'):
        evaluate.merge([part(0, [0.1]), part(5, [0.1], split='val')])
    with pytest.raises(ValueError, match='different batch sizes'):   # BN accuracies depend on the batch
        evaluate.merge([part(0, [0.1]), part(5, [0.1], batch=500)])
    (tmp_path / 'cut.json').write_text('{"split": "te')   # a file cut short, and one that is not there
    for path in (tmp_path / 'cut.json', tmp_path / 'missing.json'):
        with pytest.raises(SystemExit):
            evaluate.main(['--merge', str(path)])
        assert f'--merge {path}: cannot read it as evaluation results' in capsys.readouterr().err


def test_merge_joins_methods_evaluated_apart_and_pairs_them():
    """A GHN evaluated alone joins the baselines of the same nets; paired differences are taken net by net."""
    from ghn_jax.train import evaluate
    def part(rows, batch=64):
        return {'split': 'test', 'n_archs': len(rows), 'eval_batch_size': batch, 'per_arch': rows}
    ghn = part([{'net': f'test/{i}', 'n_params': 10 + i, 'ghn': a, 'ghn_seconds': 1.0}
                for i, a in enumerate([0.5, 0.7, 0.9])])
    baselines = part([{'net': 'test/0', 'n_params': 10, 'random_init': 0.1, 'sgd_100': 0.6},
                      {'net': 'test/2', 'n_params': 12, 'random_init': 0.1, 'sgd_100': 0.8}])
    merged = evaluate.merge([ghn, baselines])
    assert merged['per_arch'][0] == {'net': 'test/0', 'n_params': 10, 'ghn': 0.5, 'ghn_seconds': 1.0,
                                     'random_init': 0.1, 'sgd_100': 0.6}
    assert list(merged['summary']) == ['ghn', 'random_init', 'sgd_100']
    assert merged['summary']['ghn']['n'] == 3 and merged['summary']['sgd_100']['n'] == 2
    paired = merged['paired']['ghn - sgd_100']    # test/0: -10 points, test/2: +10 points
    assert paired['n'] == 2 and abs(paired['mean']) < 1e-9 and abs(paired['se'] - 10.0) < 1e-9
    assert paired['higher_on'] == 1
    assert abs(merged['paired']['ghn - random_init']['mean'] - 60.0) < 1e-9
    # a second GHN's column pairs with the first once, and with every baseline
    other = evaluate.merge([merged, part([{'net': 'test/0', 'n_params': 10, 'ghn_b': 0.7, 'ghn_b_seconds': 2.0}])])
    assert list(other['summary']) == ['ghn', 'random_init', 'sgd_100', 'ghn_b']
    assert abs(other['paired']['ghn - ghn_b']['mean'] + 20.0) < 1e-9 and 'ghn_b - ghn' not in other['paired']
    assert abs(other['paired']['ghn_b - sgd_100']['mean'] - 10.0) < 1e-9
    with pytest.raises(ValueError, match="overlap: test/2 has \\['ghn'\\]"):
        evaluate.merge([ghn, part([{'net': 'test/2', 'n_params': 12, 'ghn': 0.3}])])
    with pytest.raises(ValueError, match='architecture caps'):
        evaluate.merge([ghn, part([{'net': 'test/1', 'n_params': 99, 'sgd_100': 0.3}])])


def test_plot_splits_draws_one_ghn_over_splits_given_alone_or_collected(tmp_path, capsys):
    from ghn_jax.train import evaluate
    def results(split, accs):
        rows = [{'net': f'{split}/{i}', 'n_params': 10 ** (i + 3), 'ghn': a} for i, a in enumerate(accs)]
        return {'split': split, 'n_archs': len(rows), 'eval_batch_size': 64, 'summary': evaluate.summarise(rows),
                'per_arch': rows}
    collection = {'note': 'two splits', 'splits': {'bnfree': results('bnfree', [0.2]), 'deep': results('deep', [0.4, 0.5])}}
    splits = evaluate.by_split([collection, results('test', [0.7, 0.8])])
    assert list(splits) == ['test', 'deep', 'bnfree']   # DeepNets-1M's order, whatever the files' order
    with pytest.raises(ValueError, match="'test' given twice"):
        evaluate.by_split([results('test', [0.7]), results('test', [0.8])])
    paths = []
    for name, data in (('collection.json', collection), ('test.json', results('test', [0.7, 0.8]))):
        paths.append(str(tmp_path / name))
        (tmp_path / name).write_text(json.dumps(data))
    figure = tmp_path / 'splits.png'
    evaluate.main(['--plot-splits', *paths, '--plot', str(figure)])
    assert figure.read_bytes()[:4] == b'\x89PNG'
    with pytest.raises(ValueError, match="no split has results for 'ghn_other'"):
        evaluate.plot_splits(splits, str(figure), 'ghn_other')
    with pytest.raises(SystemExit):
        evaluate.main(['--plot-splits', *paths])
    assert '--plot-splits needs --plot' in capsys.readouterr().err


def test_by_trait_splits_the_paired_difference_over_groups_of_nets(tmp_path):
    """Every trait's groups hold all nets once, and their paired differences add up to the overall one."""
    from ghn_jax.train import evaluate
    from ghn_jax.train.meta_train import arch_description
    rows = [{'net': f'test/{i}', 'n_params': 10, 'ghn': 0.1 * i, 'sgd_100': 0.5} for i in range(8)]
    path = tmp_path / 'results.json'
    path.write_text(json.dumps({'split': 'test', 'n_archs': 8, 'eval_batch_size': 64, 'per_arch': rows}))
    results = evaluate.main(['--merge', str(path), '--by-trait', 'sgd_100',
                             '--config', os.path.join(ROOT, 'configs', 'test.py')])
    traits = results['by_trait']
    assert traits and all(len(groups) > 1 for groups in traits.values())   # only traits that split the nets
    overall = results['paired']['ghn - sgd_100']['mean']
    for groups in traits.values():
        assert sum(g['n'] for g in groups.values()) == 8
        assert abs(sum(g['n'] * g['mean'] for g in groups.values()) / 8 - overall) < 1e-9
        assert all(abs(g['ghn'] - g['sgd_100'] - g['mean']) < 1e-9 for g in groups.values())
    # a net is counted where its own description puts it
    config = test_config.get_config()
    used = [{op for cell in ('normal', 'reduce') for op, _ in arch_description(config, 'test', i)['genotype'][cell]}
            for i in range(8)]
    op_traits = [t for t in traits if t.startswith('op ')]
    assert op_traits
    for trait in op_traits:
        assert traits[trait]['with']['n'] == sum(trait[3:] in ops for ops in used)
    with pytest.raises(ValueError, match="no net has both 'ghn' and 'sgd_1000'"):
        evaluate.by_trait(rows, config, 'sgd_1000')


def test_metrics_of_a_resumed_run_keep_the_rows_of_the_run_that_went_on(tmp_path):
    """A crash after the last checkpoint makes the resumed run write those steps again."""
    from ghn_jax.train.metrics import read_metrics
    rows = [{'step': 10, 'loss': 1.0}, {'step': 20, 'loss': 2.0}, {'step': 30, 'loss': 3.0},   # crash after 30
            {'step': 20, 'loss': 2.5}, {'step': 30, 'loss': 3.5}, {'step': 30, 'val_accuracy': 0.5}]
    (tmp_path / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in rows))
    assert read_metrics(str(tmp_path)) == [rows[0], rows[3], rows[4], rows[5]]
