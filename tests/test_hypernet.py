"""The hypernetwork: parity with the reference (golden outputs), compilation counts, variants, checkpoints."""
import json
import os
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ghn_jax import nets
from ghn_jax.graphs import ArchGraph
from ghn_jax.hypernet import checkpoint as ckpt
from ghn_jax.hypernet.batch import Budget, BudgetExceededError
from ghn_jax.hypernet.ghn import GHNConfig
from ghn_jax.hypernet.predictor import GHN2, _apply, apply_ghn
from tests.conftest import GOLDEN, GOLDEN_ARCHS, golden_json, requires_golden

pytestmark = requires_golden


@pytest.mark.parametrize('arch', GOLDEN_ARCHS)
def test_embeddings_match_reference(golden_ghn, arch):
    graph = ArchGraph.from_reference_json(golden_json(arch, 'graph.json'))
    batch, _ = golden_ghn.pack([graph])
    out = apply_ghn(golden_ghn.module, golden_ghn.params, batch)
    ref = np.load(GOLDEN / arch / 'embeddings.npz')
    n = graph.n_nodes
    np.testing.assert_array_equal(batch.shape_ind[0, :n], ref['shape_ind'])
    np.testing.assert_allclose(out['node_init'][0, :n], ref['node_init'], atol=1e-6)
    np.testing.assert_allclose(out['gnn_out'][0, :n], ref['gnn_out'], atol=1e-4)
    np.testing.assert_allclose(out['embeddings'][0, :n], ref['embeddings'], atol=1e-4)


def _stats(a):
    a = np.asarray(a, np.float64)
    return np.array([a.mean(), a.std(), np.sqrt((a ** 2).sum()), a.min(), a.max()])


@pytest.mark.parametrize('arch', GOLDEN_ARCHS)
def test_predicted_parameters_and_logits_match_reference(golden_ghn, arch):
    module, shape = nets.from_arch_json(golden_json(arch, 'arch.json'))
    params = golden_ghn.predict(module, shape)
    state = nets.to_torch_state_dict(params)
    subset = not (GOLDEN / arch / 'predicted.npz').exists()
    ref = np.load(GOLDEN / arch / ('predicted_subset.npz' if subset else 'predicted.npz'))
    assert set(ref.files) <= set(state)
    for name in ref.files:
        mine = state[name][:2] if (subset and state[name].ndim >= 2) else state[name]
        scale = max(1.0, float(np.abs(ref[name]).max()))
        np.testing.assert_allclose(mine, ref[name], atol=1e-4 * scale, err_msg=name)
    stats = golden_json(arch, 'predicted_stats.json')
    stats = stats.get('tensors', stats)
    for name, s in stats.items():
        if not isinstance(s, dict) or 'mean' not in s:
            continue
        want = np.array([s['mean'], s['std'], s['l2'], s['min'], s['max']])
        np.testing.assert_allclose(_stats(state[name]), want, rtol=1e-4, atol=1e-5, err_msg=name)
    logits = np.load(GOLDEN / arch / 'logits.npz')
    out = jax.jit(module.apply)({'params': params}, jnp.asarray(logits['x']).transpose(0, 2, 3, 1))
    rel = np.abs(np.asarray(out) - logits['logits']).max() / np.abs(logits['logits']).max()
    assert rel < 1e-3


def _random_archs(n, seed=0):
    rng = np.random.default_rng(seed)
    ops = [o for o in nets.deepnets.OP_NAMES if o not in ('none', 'msa')]
    out = []
    for _ in range(n):
        pick = lambda k: tuple((str(rng.choice(ops)), int(rng.integers(0, 2 + i // 2))) for i in range(k))
        steps = int(rng.integers(1, 3))
        concat = tuple(range(2, 2 + steps))
        geno = nets.Genotype(pick(2 * steps), concat, pick(2 * steps), concat)
        out.append(nets.Network(geno, C=8, n_cells=int(rng.integers(2, 5)), C_mult=int(rng.integers(1, 3)),
                                fc_layers=int(rng.integers(1, 3)), fc_dim=16, stem_type=int(rng.integers(0, 2))))
    return out


def test_twenty_architectures_one_budget_compile_the_ghn_once(golden_ghn):
    budget = Budget(nodes=128, positions=2048, graphs=1)
    archs = _random_archs(20)
    before = _apply._cache_size()
    seen_shapes = set()
    for module in archs:
        params = golden_ghn.predict(module, (1, 32, 32, 3), budget=budget)
        seen_shapes.add(tuple(sorted(str(p.shape) for p in jax.tree_util.tree_leaves(params))))
    assert len(seen_shapes) == 20                         # really 20 different architectures
    assert _apply._cache_size() - before <= 1             # one GHN compile for all of them


def test_over_budget_graph_raises_clear_error(golden_ghn):
    with pytest.raises(BudgetExceededError, match='nodes but the budget allows'):
        golden_ghn.predict(nets.resnet18(10, cifar=True), (1, 32, 32, 3), budget=Budget(nodes=16, positions=4096))
    # without a budget the GHN picks one that fits
    params = golden_ghn.predict(nets.SmallCNN((8,), 10), (1, 16, 16, 3))
    assert params['classifier']['kernel'].shape == (8, 10)


def test_sweep_steps_budget(golden_ghn):
    """Sweeps budgeted to the graphs' schedule rows (auto) give the embeddings of full-length sweeps; too few steps
    is a clear error; the node and position ladder pads by at most 50%."""
    from ghn_jax.hypernet.batch import auto_budget, budget_ladder
    graphs = [ArchGraph.from_reference_json(golden_json(a, 'graph.json')) for a in GOLDEN_ARCHS[1:4]]
    auto = auto_budget(graphs, golden_ghn.config.max_spatial)
    assert auto.steps is not None and auto.steps < auto.nodes
    full = Budget(nodes=auto.nodes, positions=auto.positions, graphs=auto.graphs)   # steps=None: N steps
    out_auto = apply_ghn(golden_ghn.module, golden_ghn.params, golden_ghn.pack(graphs, auto)[0])
    out_full = apply_ghn(golden_ghn.module, golden_ghn.params, golden_ghn.pack(graphs, full)[0])
    np.testing.assert_allclose(out_auto['embeddings'], out_full['embeddings'], atol=1e-6)
    with pytest.raises(BudgetExceededError, match='GNN sweep'):
        golden_ghn.pack(graphs, Budget(nodes=auto.nodes, positions=auto.positions, graphs=3, steps=8))
    assert [budget_ladder(v, 64) for v in (10, 65, 97, 129, 193, 257, 385)] == [64, 96, 128, 192, 256, 384, 512]


def test_ghn_gradients_do_not_depend_on_padding_and_keep_no_node_masks(golden_ghn):
    """The GNN's gradients through its padded sweeps (trash rows, idle steps, padded nodes) equal those of a tighter
    packing, and what jax.vjp keeps for them holds no per-step boolean masks of all node states (scatters with
    unique indices)."""
    from ghn_jax.hypernet.batch import auto_budget
    graphs = [ArchGraph.from_reference_json(golden_json(a, 'graph.json')) for a in GOLDEN_ARCHS[1:4]]
    auto = auto_budget(graphs, golden_ghn.config.max_spatial)
    loose = Budget(nodes=2 * auto.nodes, positions=auto.positions, graphs=auto.graphs, width=2 * auto.width)
    weights = [np.random.default_rng(b).standard_normal((g.n_nodes, golden_ghn.config.hid)).astype(np.float32)
               for b, g in enumerate(graphs)]

    def grads(budget):
        batch = golden_ghn.pack(graphs, budget)[0]

        def loss(p):
            emb = apply_ghn(golden_ghn.module, p, batch)['embeddings']
            return sum(jnp.sum(emb[b, :g.n_nodes] * w) for b, (g, w) in enumerate(zip(graphs, weights)))
        _, pullback = jax.vjp(loss, golden_ghn.params)
        # (steps, graphs, rows, hid) boolean masks: per sweep step, ReLU masks of the W updated nodes only
        masks = [a.shape for a in jax.tree_util.tree_leaves(pullback) if getattr(a, 'dtype', None) == bool]
        assert not [m for m in masks if len(m) == 4 and m[2] > budget.width], masks
        return pullback(jnp.float32(1.0))[0]

    # float32 sums in another order (other widths): differences of ~1e-4 on gradients of order 1
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4),
                           grads(auto), grads(loose))


def test_meta_batch_prediction_equals_single_predictions(golden_ghn):
    archs = _random_archs(3, seed=1)
    many = golden_ghn.predict_many([(m, (1, 32, 32, 3)) for m in archs])
    for module, pred in zip(archs, many):
        single = golden_ghn.predict(module, (1, 32, 32, 3))
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), pred.params, single)


def test_keep_classifier_and_return_embeddings(golden_ghn):
    module = nets.SmallCNN((8, 16), 100)
    pred = golden_ghn.predict(module, (1, 16, 16, 3), predict_class_layers=False, return_embeddings=True,
                              rng=jax.random.key(3))
    init = jax.jit(module.init)(jax.random.key(3), jnp.zeros((1, 16, 16, 3)))['params']
    np.testing.assert_array_equal(pred.params['classifier']['kernel'], init['classifier']['kernel'])
    assert not np.allclose(pred.params['features.0']['kernel'], init['features.0']['kernel'])
    assert pred.embeddings.shape == (pred.graph.n_nodes, 32)
    # the classifier node is shape-encoded with the GHN's own class count (10), not 100
    assert pred.graph.nodes[-2].shape[0] == 10


@pytest.mark.parametrize('config', [GHNConfig.ghn1(), GHNConfig.mlp(), GHNConfig.ghn2(num_classes=100,
                                                                                     max_spatial=16)])
def test_variants_predict_every_parameter(config):
    ghn = GHN2.init(config, seed=0)
    module = nets.SmallCNN((8, 16), config.num_classes)
    params = ghn.predict(module, (1, 16, 16, 3))
    want = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(want)
    jax.tree_util.tree_map(lambda a, b: a.shape == b.shape or pytest.fail(str(a.shape)), params, want)
    gains = np.asarray(params['features.1']['scale'])
    if config.weight_norm:
        assert (gains > 0).all() and (gains < 2).all()
    n_ghn = sum(p.size for p in jax.tree_util.tree_leaves(ghn.params))
    expected = {('gatedgnn', False): 1_620_668, ('mlp', True): 1_614_396}.get((config.hypernet, config.ve))
    if config.max_spatial == 11 and expected:
        assert n_ghn == expected


def test_ghn2_imagenet_parameter_count():
    ghn = GHN2.init(GHNConfig(num_classes=1000, max_spatial=16))
    assert sum(p.size for p in jax.tree_util.tree_leaves(ghn.params)) == 2_319_720


def test_checkpoint_round_trip_and_errors(golden_ghn, tmp_path):
    path = str(tmp_path / 'ghn.npz')
    golden_ghn.save(path, note='test')
    again = GHN2.from_checkpoint(path)
    assert again.config == golden_ghn.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, golden_ghn.params)
    state, _ = ckpt.load_npz(path)
    np.savez(tmp_path / 'missing.npz', **{k: v for k, v in state.items() if k != 'gnn.gru.bias_hh'})
    with pytest.raises(ckpt.CheckpointError, match='gnn/gru/hh/bias'):
        GHN2.from_checkpoint(str(tmp_path / 'missing.npz'))
    np.savez(tmp_path / 'shape.npz', **dict(state, **{'ln.weight': np.zeros(31, np.float32)}))
    with pytest.raises(ckpt.CheckpointError, match='ln'):
        GHN2.from_checkpoint(str(tmp_path / 'shape.npz'))
    (tmp_path / 'corrupt.npz').write_bytes(open(path, 'rb').read()[:5000])
    with pytest.raises(ckpt.CheckpointError, match='unreadable'):
        GHN2.from_checkpoint(str(tmp_path / 'corrupt.npz'))
    with pytest.raises(FileNotFoundError):
        GHN2.from_checkpoint(str(tmp_path / 'nope.npz'))


def test_torch_state_dict_conversion_round_trip(golden_ghn):
    state = dict(np.load(GOLDEN / 'ghn2_cifar10_random.npz'))
    back = ckpt.flax_to_torch(ckpt.torch_to_flax(state))
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)


def test_reference_pt_checkpoint_is_read_without_torch(tmp_path):
    fixture = os.path.join(os.path.dirname(__file__), 'data', 'tiny_torch_checkpoint.pt')
    obj = ckpt.load_torch_checkpoint(fixture)
    assert obj['config']['num_classes'] == 10 and obj['epoch'] == 7
    sd = obj['state_dict']
    np.testing.assert_array_equal(sd['a'], np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(sd['a_t'], np.arange(12, dtype=np.float32).reshape(3, 4).T)  # strided view
    assert sd['i'].dtype == np.int64 and sd['i'].tolist() == [1, 2, 3]
    bad = tmp_path / 'bad.pt'
    with zipfile.ZipFile(bad, 'w') as z:
        z.writestr('archive/data.pkl', b'\x80\x02cos\nsystem\nq\x00.')
    with pytest.raises(ckpt.CheckpointError, match='not allowed'):
        ckpt.load_torch_checkpoint(str(bad))


def test_predict_cli_twice_with_a_compilation_cache(tmp_path):
    """The user's command in fresh processes: the first run fills the persistent cache, the second loads the GHN
    executable from it (jax logs the cache hit) and writes the same, reference-parity tensors."""
    cache = tmp_path / 'xla'
    ref = np.load(GOLDEN / 'dn_train_017_bnfree' / 'predicted.npz')
    env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}  # conftest sets one
    env['JAX_LOG_COMPILES'] = '1'
    logs = []
    for run in range(2):
        out = tmp_path / f'pred{run}.npz'
        proc = subprocess.run([sys.executable, '-m', 'ghn_jax.predict', '--ghn', str(GOLDEN / 'ghn2_cifar10_random.npz'),
                               '--arch', str(GOLDEN / 'dn_train_017_bnfree' / 'arch.json'), '--out', str(out),
                               '--reference-names', '--compilation-cache', str(cache)],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])['params'] == 123_818
        mine = np.load(out)
        for k in ref.files:
            np.testing.assert_allclose(mine[k], ref[k], atol=1e-4 * max(1, np.abs(ref[k]).max()))
        logs.append(proc.stderr)
    assert any(cache.iterdir())
    hit = "Persistent compilation cache hit for 'jit__apply'"
    assert hit not in logs[0] and hit in logs[1]


def test_reference_pt_of_the_golden_ghn_loads_identically(golden_ghn, tmp_path):
    torch = pytest.importorskip('torch')
    state = {k: torch.from_numpy(v) for k, v in np.load(GOLDEN / 'ghn2_cifar10_random.npz').items()}
    cfg = json.load(open(GOLDEN / 'ghn2_cifar10_random.json'))['config']
    torch.save({'state_dict': state, 'config': cfg, 'epoch': 0, 'optimzer': None}, tmp_path / 'ghn.pt')
    ghn = GHN2.from_checkpoint(str(tmp_path / 'ghn.pt'))
    assert ghn.config == golden_ghn.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, ghn.params, golden_ghn.params)


def test_host_assembly_equals_jitted_assembly(golden_ghn):
    """Prediction and training tile on the host (numpy, nothing to compile); the jitted, differentiable
    ``assemble`` gives the same tensors (indexing exact, sigmoid/tanh to float32 rounding) and the same VJP."""
    from ghn_jax.hypernet.ghn import HOST_OUTPUTS, assemble, assemble_host, assemble_host_vjp, param_specs
    models = [(nets.vit(10, C=16, n_cells=4), (1, 32, 32, 3)), (_random_archs(1, seed=4)[0], (1, 32, 32, 3)),
              (nets.SmallCNN((8, 16), 10), (1, 16, 16, 3))]
    graphs = [golden_ghn.graph(m, s) for m, s in models]
    batch, layouts = golden_ghn.pack(graphs)
    out = apply_ghn(golden_ghn.module, golden_ghn.params, batch)
    host = {k: np.asarray(out[k]) for k in HOST_OUTPUTS}
    kinds = set()
    for b, (g, layout) in enumerate(zip(graphs, layouts)):
        specs = param_specs(g, layout)
        kinds |= {s.kind for s in specs}
        for normalize in (True, False):
            want = assemble(out, specs, b, normalize)
            got = assemble_host(host, specs, b, normalize)
            assert set(got) == set(want)
            for path in want:
                assert got[path].shape == want[path].shape and got[path].dtype == np.float32
                assert got[path].ctypes.data % 64 == 0  # aligned: jax.device_put on CPU wraps instead of copying
                np.testing.assert_allclose(got[path], want[path], rtol=1e-6, atol=1e-7, err_msg=str(path))
            # The tensors are carved from one block (tiling.Arena): they must never overlap.
            spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in got.values())
            assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
            # Training folds parameter gradients back on the host: the same VJP as the jitted assembly's.
            rng = np.random.default_rng(b)
            grads = {p: rng.standard_normal(np.shape(v)).astype(np.float32) for p, v in want.items()}
            (want_cot,) = jax.vjp(lambda o: assemble(o, specs, b, normalize), out)[1](grads)
            cot = {k: np.zeros_like(v) for k, v in host.items()}
            assemble_host_vjp(host, specs, b, normalize, grads, cot)
            for k in HOST_OUTPUTS:
                np.testing.assert_allclose(cot[k], want_cot[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert {'conv', 'dense', 'classifier', 'pos_enc', 'gain', 'shift', 'bias', 'classifier_bias'} <= kinds


def test_prediction_memory_is_reused_only_once_nothing_refers_to_it(golden_ghn):
    """GHN2 hands the output block of an earlier prediction out again (no page faults) only when every tensor of
    that prediction has been dropped: held predictions are never overwritten."""
    module, shape = nets.SmallCNN((8, 16), 10), (1, 16, 16, 3)
    leaves = lambda p: jax.tree_util.tree_leaves(p)  # noqa: E731
    block = lambda p: min(x.unsafe_buffer_pointer() for x in leaves(p))  # noqa: E731
    first = golden_ghn.predict(module, shape)
    kept = [np.array(x) for x in leaves(first)]
    second = golden_ghn.predict(module, shape)      # `first` is alive: a new block
    assert block(second) != block(first)
    first_block = block(first)
    del first
    third = golden_ghn.predict(module, shape)       # `first` dropped: its block is taken again
    assert block(third) == first_block
    for a, b, c in zip(kept, leaves(second), leaves(third)):
        np.testing.assert_array_equal(np.asarray(b), a)   # `second` untouched by the third prediction
        np.testing.assert_array_equal(np.asarray(c), a)
    view = np.asarray(leaves(third)[0])             # a numpy view keeps the block taken, too
    del third
    assert block(golden_ghn.predict(module, shape)) not in (first_block, block(second))
    del view


def test_prediction_compiles_nothing_but_the_ghn(golden_ghn, caplog):
    """Once a budget is compiled, predicting for new architectures that fit it compiles nothing at all
    (no per-shape tiling functions, no eager array conversions)."""
    import logging
    budget = Budget(nodes=128, positions=2048, graphs=1)
    archs = _random_archs(4, seed=7)
    golden_ghn.predict(archs[0], (1, 32, 32, 3), budget=budget)
    jax.config.update('jax_log_compiles', True)
    try:
        with caplog.at_level(logging.WARNING, logger='jax'):
            for module in archs[1:]:
                jax.block_until_ready(golden_ghn.predict(module, (1, 32, 32, 3), budget=budget))
    finally:
        jax.config.update('jax_log_compiles', False)
    compiles = [r.getMessage() for r in caplog.records if 'Finished XLA compilation' in r.getMessage()]
    assert compiles == []


def test_put_on_default_device_matches_device_put(monkeypatch):
    """The batched host-to-device transfer of predictions gives jax.device_put's arrays, with or without its fast
    path (and jax.device_put for what the fast path does not handle)."""
    from ghn_jax.hypernet import transfer
    rng = np.random.default_rng(0)
    tensors = {('a', 'kernel'): rng.standard_normal((3, 3, 4, 8)).astype(np.float32),
               ('a', 'bias'): np.zeros(8, np.float32), ('b',): np.arange(5, dtype=np.int32)}
    expected = jax.device_put(tensors)
    for fast in (None, False):
        monkeypatch.setattr(transfer, '_fast', fast)
        got = transfer.put_on_default_device(tensors)
        assert sorted(got) == sorted(tensors)
        for k in tensors:
            assert isinstance(got[k], jax.Array) and got[k].sharding == expected[k].sharding
            np.testing.assert_array_equal(np.asarray(got[k] * 2), np.asarray(expected[k] * 2))
    assert transfer._fast is False
    monkeypatch.setattr(transfer, '_fast', None)
    transfer.put_on_default_device(tensors)
    assert transfer._fast is True    # the check passes on the JAX this project pins
    doubles = transfer.put_on_default_device({'x': np.ones(3)})   # float64: canonicalised as device_put does
    assert doubles['x'].dtype == jax.device_put(np.ones(3)).dtype
