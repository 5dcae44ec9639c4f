"""The README's prediction example runs as written (with the shipped checkpoint) and does what it says."""
import re

import numpy as np

from tests.conftest import REPO


def _python_blocks(path) -> list[str]:
    return re.findall(r'```python\n(.*?)```', path.read_text(), flags=re.S)


def test_readme_prediction_example_runs(monkeypatch):
    block = next(b for b in _python_blocks(REPO / 'README.md') if 'ghn.predict(' in b)
    monkeypatch.chdir(REPO)   # the example names checkpoints/ relative to the repository
    scope: dict = {}
    exec(compile(block, 'README.md', 'exec'), scope)
    assert scope['logits'].shape == (8, 10) and np.isfinite(np.asarray(scope['logits'])).all()
    assert len(scope['many']) == 2 and set(scope['many'][0].params) == set(scope['params'])
    assert scope['pred'].embeddings.shape[0] == scope['pred'].graph.n_nodes
