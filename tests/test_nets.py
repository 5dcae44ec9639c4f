"""Target networks: arch-json loading, PyTorch name/layout mapping, zoo forward passes, stable names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ghn_jax import nets
from ghn_jax.nets import torch_names
from tests.conftest import GOLDEN_ARCHS, golden_json, requires_golden


def abstract_params(module, shape):
    return jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape))['params']


def init_params(module, shape, seed=0):
    return jax.jit(module.init)(jax.random.key(seed), jnp.zeros(shape))['params']


@requires_golden
@pytest.mark.parametrize('arch', GOLDEN_ARCHS)
def test_every_reference_tensor_has_one_counterpart(arch):
    module, shape = nets.from_arch_json(golden_json(arch, 'arch.json'))
    params = abstract_params(module, shape)
    ref = {p['name']: tuple(p['shape']) for p in golden_json(arch, 'params_shapes.json')['params']}
    names = torch_names.name_map(params)          # raises on collisions (two paths -> one name)
    assert set(names) == set(ref)
    flat = torch_names.flat_paths(params)
    for name, path in names.items():
        assert torch_names.to_torch_shape(path, flat[path].shape) == ref[name]
        assert int(np.prod(flat[path].shape)) == int(np.prod(ref[name]))
    assert sum(int(np.prod(s)) for s in ref.values()) == golden_json(arch, 'arch.json')['n_params']


def test_state_dict_round_trip_both_directions():
    module = nets.resnet18(10, cifar=True)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                                    abstract_params(module, (1, 32, 32, 3)))
    state = nets.to_torch_state_dict(params)
    assert state['conv1.weight'].shape == (64, 3, 3, 3)           # OIHW
    assert state['fc.weight'].shape == (10, 512)                  # (out, in)
    assert state['layer2.0.downsample.1.weight'].shape == (128,)  # BN gain
    back = nets.from_torch_state_dict(state, params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, jax.tree_util.tree_map(np.asarray, params))
    with pytest.raises(KeyError):
        nets.from_torch_state_dict({k: v for k, v in state.items() if k != 'fc.bias'}, params)
    bad = dict(state, **{'fc.weight': np.zeros((10, 3))})
    with pytest.raises(ValueError, match='fc.weight'):
        nets.from_torch_state_dict(bad, params)


@pytest.mark.parametrize('factory,shape,n_out', [
    (lambda: nets.resnet18(10, cifar=True), (2, 8, 8, 3), 10),
    (lambda: nets.SmallCNN((8, 16), 5), (2, 16, 16, 1), 5),
    (lambda: nets.vit(10, C=16, n_cells=1), (2, 32, 32, 3), 10),
    (lambda: nets.darts(10, C=8, n_cells=2), (2, 16, 16, 3), 10),
])
def test_zoo_forward(factory, shape, n_out):
    module = factory()
    params = init_params(module, shape)
    out = jax.jit(module.apply)({'params': params}, jax.random.normal(jax.random.key(1), shape))
    assert out.shape == (shape[0], n_out)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize('factory,shape,n_params', [
    (lambda: nets.resnet18(1000), (1, 224, 224, 3), 11_689_512),   # torchvision counts
    (lambda: nets.resnet34(1000), (1, 224, 224, 3), 21_797_672),
    (lambda: nets.resnet50(1000), (1, 224, 224, 3), 25_557_032),
])
def test_zoo_parameter_counts_match_torchvision(factory, shape, n_params):
    params = abstract_params(factory(), shape)
    assert sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params)) == n_params


def test_vit_parameter_names_follow_reference():
    names = torch_names.name_map(abstract_params(nets.vit(10, C=16, n_cells=2), (1, 32, 32, 3)))
    for expected in ['stem0.weight', 'pos_enc.weight', 'cells.0._ops.1.to_qkv.weight', 'cells.0._ops.1.to_out.0.bias',
                     'cells.0._ops.1.ln1.weight', 'cells.0._ops.1.ff.net.3.weight', 'classifier.0.weight']:
        assert expected in names, expected
    assert 'cells.0._ops.1.to_qkv.bias' not in names


def test_layer_names_do_not_depend_on_construction_order():
    """Two genotypes that differ in one op share the paths (and shapes) of every other layer."""
    g1 = nets.Genotype((('conv_3x3', 0), ('sep_conv_3x3', 1)), (2,), (('max_pool_3x3', 0), ('conv_1x1', 1)), (2,))
    g2 = nets.Genotype((('dil_conv_3x3', 0), ('sep_conv_3x3', 1)), (2,), (('max_pool_3x3', 0), ('conv_1x1', 1)), (2,))
    p1 = torch_names.flat_paths(abstract_params(nets.Network(g1, C=8, n_cells=3), (1, 32, 32, 3)))
    p2 = torch_names.flat_paths(abstract_params(nets.Network(g2, C=8, n_cells=3), (1, 32, 32, 3)))
    shared = {p for p in p1 if p[1] != '_ops.0'} | {p for p in p2 if p[1] != '_ops.0'}
    assert shared and all(p in p1 and p in p2 and p1[p].shape == p2[p].shape for p in shared)
    assert ('cells.0', '_ops.1', 'op.1', 'kernel') in p1


def test_sequential_description_builds_and_maps_names():
    layers = [{'name': 'features.0', 'type': 'Conv2d', 'out_channels': 8, 'kernel_size': [3, 3], 'padding': [1, 1],
               'bias': False},
              {'name': 'features.1', 'type': 'BatchNorm2d', 'num_features': 8},
              {'name': 'features.2', 'type': 'ReLU'},
              {'name': 'features.3', 'type': 'MaxPool2d', 'kernel_size': 2, 'stride': 2},
              {'name': 'pool', 'type': 'AdaptiveAvgPool2d', 'output_size': 1},
              {'name': 'fc', 'type': 'Linear', 'out_features': 4}]
    module, shape = nets.from_arch_json({'layers': layers, 'input_size': [3, 16, 16]})
    params = init_params(module, shape)
    assert set(nets.to_torch_state_dict(params)) == {'features.0.weight', 'features.1.weight', 'features.1.bias',
                                                     'fc.weight', 'fc.bias'}
    assert jax.jit(module.apply)({'params': params}, jnp.ones((2, 16, 16, 3))).shape == (2, 4)
    with pytest.raises(ValueError, match='unsupported type'):
        nets.from_arch_json({'layers': [{'name': 'x', 'type': 'LSTM'}]})[0].init(jax.random.key(0), jnp.zeros(shape))


def test_unknown_description_raises_clear_error():
    with pytest.raises(ValueError, match='genotype'):
        nets.from_arch_json({'foo': 1})
    with pytest.raises(ValueError, match='unknown zoo model'):
        nets.from_arch_json({'model': 'alexnet'})


def test_positional_encoding_resamples_its_table_for_maps_of_another_size():
    """A ViT-stem net takes 16x16 images (a 6x6 map after the stem, an 11x11 table): the table is resized."""
    pos = nets.PosEnc(4, 11)
    x11 = jnp.zeros((2, 11, 11, 4))
    params = pos.init(jax.random.key(0), x11)
    table = params['params']['weight']
    np.testing.assert_array_equal(pos.apply(params, x11), jnp.broadcast_to(table, x11.shape))
    out = pos.apply(params, jnp.zeros((2, 6, 6, 4)))
    np.testing.assert_allclose(out[0], jax.image.resize(table, (1, 6, 6, 4), 'bilinear')[0], rtol=1e-6)
    vit = nets.vit(10, C=16, n_cells=2)
    logits = vit.apply(vit.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))), jnp.ones((2, 16, 16, 3)))
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
