"""Shared fixtures: the reference's golden outputs (../shared/golden/ghn2 or $GHN_GOLDEN); a session XLA cache."""
import json
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get('GHN_GOLDEN', REPO.parent / 'shared' / 'golden' / 'ghn2'))
GOLDEN_ARCHS = ['resnet50', 'dn_train_057', 'dn_train_059', 'dn_train_031', 'dn_train_037', 'dn_train_001',
                'dn_train_017_bnfree']

# One persistent XLA cache per test session, shared with the subprocesses tests start (read by JAX at import).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='ghn_jax_xla_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

requires_golden = pytest.mark.skipif(not GOLDEN.exists(), reason=f'golden reference data not found at {GOLDEN}')


def golden_json(arch: str, name: str) -> dict:
    with open(GOLDEN / arch / name) as f:
        return json.load(f)


@pytest.fixture(scope='session')
def golden_ghn():
    from ghn_jax.hypernet.predictor import GHN2
    return GHN2.from_checkpoint(str(GOLDEN / 'ghn2_cifar10_random.npz'))
