"""Graph construction: equality with the reference graphs, special nodes, arbitrary Flax models, formats."""
import json
import threading
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ghn_jax import nets
from ghn_jax.graphs import PRIMITIVES, ArchGraph, UnsupportedLayerWarning, build_graph, canonical_form
from tests.conftest import GOLDEN_ARCHS, golden_json, requires_golden


def prims(graph):
    return [n.primitive for n in graph.nodes]


@requires_golden
@pytest.mark.parametrize('arch', GOLDEN_ARCHS)
def test_graph_equals_reference_up_to_node_order(arch):
    module, shape = nets.from_arch_json(golden_json(arch, 'arch.json'))
    graph = build_graph(module, shape, ve_cutoff=50)
    mine, ref = graph.to_reference_json(), golden_json(arch, 'graph.json')
    for key in ('n_nodes', 'n_edges_real', 'n_edges_virtual', 'max_s', 'primitives'):
        assert mine[key] == ref[key], key
    assert canonical_form(mine) == canonical_form(ref)
    # Reference conventions: input first, classifier weight and bias last, pruned dead ops.
    assert mine['nodes'][0]['primitive'] == 'input'
    assert [n.get('role') for n in mine['nodes'][-2:]] == ['classifier_weight', 'classifier_bias']
    pruned = golden_json(arch, 'params_shapes.json')['pruned']
    assert sorted(nets.torch_name(p) for p in graph.pruned) == sorted(pruned)


@requires_golden
def test_resnet50_figures():
    g = build_graph(nets.resnet50(10, cifar=True), (1, 32, 32, 3))
    assert (g.n_nodes, len(g.real_edges), len(g.edges) - len(g.real_edges)) == (126, 141, 7686)
    assert g.edges[:, 2].max() == 32


def test_virtual_edges_are_shortest_paths_with_cutoff():
    g = build_graph(nets.resnet18(10, cifar=True), (1, 32, 32, 3), ve_cutoff=5)
    import networkx as nx
    dag = nx.DiGraph([tuple(e) for e in g.real_edges[:, :2].tolist()])
    lengths = dict(nx.all_pairs_shortest_path_length(dag, cutoff=5))
    expected = sorted((u, v, d) for u, row in lengths.items() for v, d in row.items() if d >= 1)
    assert sorted(map(tuple, g.edges.tolist())) == expected
    assert build_graph(nets.resnet18(10, cifar=True), (1, 32, 32, 3), ve_cutoff=1).edges[:, 2].max() == 1


def test_msa_and_pos_enc_nodes_are_emitted():
    g = build_graph(nets.vit(10, C=16, n_cells=4), (1, 32, 32, 3))  # cells 1, 2 are pooling cells
    p = prims(g)
    assert p.count('msa') == 2 and p.count('pos_enc') == 1 and p.count('ln') == 4
    src = {int(s) for s, d, k in g.edges if k == 1}
    dst_of = lambda i: {int(d) for s, d, k in g.edges if k == 1 and s == i}
    pos = p.index('pos_enc')
    assert pos not in {int(d) for d in g.real_edges[:, 1]}                     # a source node
    assert [g.nodes[d].primitive for d in dst_of(pos)] == ['sum']
    for m in [i for i, q in enumerate(p) if q == 'msa']:                        # qkv conv -> msa -> out conv
        preds = [g.nodes[s].param[-2] for s, d, k in g.edges if k == 1 and d == m]
        assert preds == ['to_qkv'] and [g.nodes[d].param[-2] for d in dst_of(m)] == ['to_out.0']
    assert 0 in src


def test_cse_block_subgraph():
    geno = nets.Genotype((('cse', 0), ('conv_3x3', 1)), (2,), (('cse', 0), ('max_pool_3x3', 1)), (2,))
    g = build_graph(nets.Network(geno, C=8, n_cells=3), (1, 32, 32, 3))
    p = prims(g)
    assert p.count('cse') == 3 and p.count('glob_avg') == 1        # squeeze means are not glob_avg nodes
    for c in [i for i, q in enumerate(p) if q == 'cse']:
        preds = {g.nodes[s].primitive for s, d, k in g.edges if k == 1 and d == c}
        assert preds == {'bias', 'bn'}                                # fc2 bias and the block input


class HandWritten(nn.Module):
    """A model written without ghn_jax helpers: residual, concat, dense head, dropout-free, LayerNorm."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), name='conv_a')(x))
        y = nn.Conv(16, (3, 3), feature_group_count=16, name='dw')(x)
        y = nn.BatchNorm(use_running_average=True, name='bn')(y)
        x = jnp.concatenate([x + y, nn.Conv(8, (1, 1), use_bias=False, name='proj')(x)], -1)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.mean((1, 2))
        x = nn.LayerNorm(name='ln')(x)
        return nn.Dense(5, name='head')(x)


def test_hand_written_flax_model():
    g = build_graph(HandWritten(), (1, 16, 16, 3))
    p = prims(g)
    assert p == ['input', 'conv', 'bias', 'sep_conv', 'bias', 'bn', 'sum', 'conv', 'concat', 'max_pool', 'glob_avg',
                 'ln', 'conv', 'bias'] or sorted(p) == sorted(
        ['input', 'conv', 'bias', 'sep_conv', 'bias', 'bn', 'sum', 'conv', 'concat', 'max_pool', 'glob_avg', 'ln',
         'conv', 'bias'])
    by_name = {n.param[0]: i for i, n in enumerate(g.nodes) if n.param is not None and n.param[-1] != 'bias'}
    real = {(int(s), int(d)) for s, d in g.real_edges[:, :2]}
    assert (0, by_name['conv_a']) in real
    assert g.nodes[by_name['bn']].shift == ('bn', 'bias')
    assert g.nodes[-2].role == 'classifier_weight' and g.nodes[-1].role == 'classifier_bias'
    assert g.nodes[p.index('max_pool')].shape == (1, 1, 2, 2)
    assert g.nodes[by_name['dw']].shape == (16, 1, 3, 3)      # PyTorch layout


class WithEmbedding(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name='conv')(x)
        x = nn.GroupNorm(num_groups=2, name='gn')(x)
        return nn.Dense(3, name='fc')(x.mean((1, 2)))


def test_unsupported_layers_warn_and_are_listed():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        g = build_graph(WithEmbedding(), (1, 8, 8, 3), cache=False)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UnsupportedLayerWarning)]
    assert msgs and 'gn' in msgs[0] and '8 parameters' in msgs[0]
    assert sorted(g.unsupported) == [('gn', 'bias'), ('gn', 'scale')]


def test_dead_ops_are_pruned():
    geno = nets.Genotype((('none', 0), ('conv_1x1', 1)), (2,), (('none', 0), ('conv_1x1', 1)), (2,))
    g = build_graph(nets.Network(geno, C=8, n_cells=2), (1, 32, 32, 3))
    assert ('cells.0', 'preprocess0', 'op.1', 'kernel') in g.pruned
    assert all(n.param is None or n.param[1] != 'preprocess0' for n in g.nodes)


def test_formats_round_trip(tmp_path):
    g = build_graph(nets.SmallCNN((8, 16), 10), (1, 16, 16, 3))
    d = g.to_reference_json()
    assert d['nodes'][1]['name'] == 'features.0.weight' and d['nodes'][1]['shape'] == [8, 3, 3, 3]
    module = nets.SmallCNN((8, 16), 10)
    names = nets.name_map(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params'])
    g2 = ArchGraph.from_reference_json(json.loads(json.dumps(d)), names)
    assert [n.param for n in g2.nodes] == [n.param for n in g.nodes]
    assert canonical_form(g2.to_reference_json()) == canonical_form(d)
    gt = g.to_graphs_tuple()
    assert int(gt.n_node[0]) == g.n_nodes and len(gt.senders) == len(g.edges)
    assert set(np.asarray(gt.nodes['primitive']).tolist()) <= set(range(len(PRIMITIVES)))
    g.plot(str(tmp_path / 'g.png'))
    assert (tmp_path / 'g.png').stat().st_size > 1000


def test_graph_cli(tmp_path):
    from ghn_jax.graphs.__main__ import main
    arch = tmp_path / 'arch.json'
    arch.write_text(json.dumps({'model': 'resnet18', 'num_classes': 10, 'adjust_net': True}))
    main(['--arch', str(arch), '--out', str(tmp_path / 'graph.json'), '--png', str(tmp_path / 'graph.png')])
    d = json.loads((tmp_path / 'graph.json').read_text())
    assert d['n_nodes'] == len(d['nodes']) > 40 and (tmp_path / 'graph.png').exists()


@pytest.mark.parametrize('which', ['resnet18', 'cse_net', 'vit'])
def test_fast_parameter_placeholders_give_the_same_graph(which, monkeypatch):
    """Tracing with the shortcuts of trace.FAST_TRACE (placeholder parameters, stand-in layers, no re-registration of
    plain module fields) and without them gives one graph."""
    from ghn_jax.graphs import trace
    if which == 'resnet18':
        module, shape = nets.resnet18(10, cifar=True), (1, 32, 32, 3)
    elif which == 'vit':
        module, shape = nets.vit(10, C=16, n_cells=4), (1, 32, 32, 3)   # PosEnc: a normal() closure, traced as is
    else:
        geno = nets.Genotype((('cse', 0), ('sep_conv_3x3', 1)), (2,), (('max_pool_3x3', 0), ('dil_conv_3x3', 1)), (2,))
        module, shape = nets.Network(geno, C=8, n_cells=3), (1, 32, 32, 3)
    fast = build_graph(module, shape, cache=False)
    monkeypatch.setattr(trace, 'FAST_TRACE', False)
    slow = build_graph(module, shape, cache=False)
    assert fast.to_reference_json() == slow.to_reference_json()
    assert fast.param_shapes == slow.param_shapes and fast.pruned == slow.pruned
    assert fast.unsupported == slow.unsupported


class RepeatedBlocks(nn.Module):
    """Equal blocks with an unsupported layer inside, a block called twice (shared weights), an equal block on another
    input shape, and a module with a non-array output: what the replay of repeated submodule calls must get right."""

    class Block(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x):
            y = nn.Conv(self.features, (3, 3), name='conv')(x)
            y = nn.GroupNorm(num_groups=2, name='gn')(y)
            return x + nets.BatchNorm(self.features, name='bn')(nn.relu(y))

    class Tagged(nn.Module):   # a non-array output: never replayed
        @nn.compact
        def __call__(self, x):
            return nn.Conv(8, (1, 1), name='conv')(x), 'tag'

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), name='stem')(x)
        x = self.Tagged(name='t1')(x)[0] + self.Tagged(name='t2')(x)[0]
        shared = self.Block(8, name='shared')
        x = shared(x) + shared(nn.relu(x))
        x = self.Block(8, name='b1')(x)
        x = self.Block(8, name='b2')(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = self.Block(8, name='b3')(x)      # same configuration, another input shape: not a replay of b1
        # Layers whose parameter and output shapes the tracer works out without running them: every padding form.
        x = nn.Conv(8, (3, 3), strides=2, padding='VALID', name='valid')(jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))))
        x = nn.Conv(8, (3, 3), kernel_dilation=2, feature_group_count=8, use_bias=False, name='dil')(x)
        x = nn.Conv(16, (2, 3), strides=(2, 1), padding=((1, 0), (0, 1)), name='explicit')(x)
        return nn.Dense(10, name='fc')(x.reshape(x.shape[0], -1))   # its kernel shape shows the spatial size


def _reuse_cases():
    from ghn_jax.nets import deepnets_generator
    cases = [('resnet50', nets.resnet50(10, cifar=True), (1, 32, 32, 3)),
             ('vit', nets.vit(10, C=16, n_cells=4), (1, 32, 32, 3)),
             ('repeated', RepeatedBlocks(), (1, 16, 16, 3))]
    for i in range(6):
        module, shape = nets.from_arch_json(deepnets_generator.sample('test', i))
        cases.append((f'test/{i}', module, shape))
    return cases


_REUSE_CASES = _reuse_cases()


@pytest.mark.parametrize('name,module,shape', _REUSE_CASES, ids=[c[0] for c in _REUSE_CASES])
def test_repeated_submodules_are_replayed_into_the_same_graph(name, module, shape, monkeypatch):
    """Replaying repeated submodule calls (trace.REUSE_SUBMODULES) gives the graph of running every call, and it
    does replay calls."""
    from ghn_jax.graphs import trace
    replays = []
    original = trace._CallShortcuts._replay
    monkeypatch.setattr(trace._CallShortcuts, '_replay', lambda self, rec, module, path, *a: (
        replays.append(path), original(self, rec, module, path, *a))[1])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UnsupportedLayerWarning)
        fast = build_graph(module, shape, cache=False)
        monkeypatch.setattr(trace, 'REUSE_SUBMODULES', False)
        n_replays = len(replays)
        plain = build_graph(module, shape, cache=False)
    assert n_replays > 0 and len(replays) == n_replays
    assert fast.to_reference_json() == plain.to_reference_json()
    assert fast.param_shapes == plain.param_shapes and list(fast.param_shapes) == list(plain.param_shapes)
    assert fast.pruned == plain.pruned and fast.unsupported == plain.unsupported
    assert [n.scope for n in fast.nodes] == [n.scope for n in plain.nodes]
    if name == 'repeated':
        assert ('b2',) in replays and ('b3',) not in replays and ('t2',) not in replays
        assert ('b2', 'gn', 'scale') in fast.unsupported


def test_graph_trace_mode_is_thread_local():
    """Meta-training builds graphs in a background thread while nets run: the stand-in layers of a graph trace
    must stay in the tracing thread."""
    from ghn_jax.nets import layers
    seen = {}
    with layers.graph_trace_mode():
        other = threading.Thread(target=lambda: seen.setdefault('other', layers.in_graph_trace()))
        other.start()
        other.join()
        seen['this'] = layers.in_graph_trace()
    assert seen == {'this': True, 'other': False} and not layers.in_graph_trace()


def test_placeholders_never_leak_into_real_initialisation():
    """After a graph build, module.init outside the tracer still draws real (random, non-zero) parameters."""
    module = nets.SmallCNN((8,), 10)
    before = module.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))['params']
    build_graph(module, (1, 16, 16, 3), cache=False)
    after = module.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))['params']
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    assert np.abs(np.asarray(after['features.0']['kernel'])).min() > 0
