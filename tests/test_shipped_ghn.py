"""The GHN-2 that ships in checkpoints/: it loads, predicts by default and still gives its documented accuracy."""
import json
import os

import pytest

from ghn_jax import predict
from ghn_jax.hypernet.predictor import GHN2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_ghn_reproduces_its_documented_accuracy_on_a_test_net():
    """Predicted parameters for test/0 on the 1,984 evaluation images, against docs/results/fashion_mnist_eval.json."""
    from ghn_jax.train import evaluate
    from ghn_jax.train.config import load_config
    with open(os.path.join(REPO, 'docs', 'results', 'fashion_mnist_eval.json')) as f:
        documented = json.load(f)['per_arch'][0]
    assert documented['net'] == 'test/0'
    config = load_config(os.path.join(REPO, 'configs', 'fashion_mnist_cpu.py'))
    results = evaluate.evaluate(GHN2.from_checkpoint(predict.SHIPPED_GHN), config, 'test', 1, random_init=False)
    row = results['per_arch'][0]
    assert row['n_params'] == documented['n_params']
    # Float rounding differs between CPU generations: allow two of the 1,984 images to flip.
    assert abs(row['ghn'] - documented['ghn']) <= 2 / 1984 + 1e-9, (row['ghn'], documented['ghn'])
    assert row['ghn'] > 0.5   # chance is 0.1


def test_predict_cli_uses_the_shipped_ghn_without_ghn_flag(tmp_path, monkeypatch, capsys):
    arch = tmp_path / 'resnet18.json'
    arch.write_text(json.dumps({'model': 'resnet18', 'adjust_net': True, 'num_classes': 10}))
    out = tmp_path / 'predicted.npz'
    summary = predict.main(['--arch', str(arch), '--out', str(out), '--compilation-cache', ''])
    assert summary['params'] == 11_173_962 and out.exists()
    monkeypatch.setattr(predict, 'SHIPPED_GHN', str(tmp_path / 'missing.npz'))   # a non-editable install
    with pytest.raises(SystemExit):
        predict.main(['--arch', str(arch), '--out', str(out), '--compilation-cache', ''])
    assert 'the shipped GHN is not at' in capsys.readouterr().err
