"""What a benchmark ran on, for its JSON: the CPU's vendor, family and model, cores, jax version and device.

The 2-core machines of this project differ by CPU generation from one session to the next (AMD family 25 model 17
is Zen 4, family 26 is Zen 5), and XLA:CPU's kernels rank differently on them (docs/meta_training.md), so figures are
only comparable with the machine they were measured on.
"""
from __future__ import annotations

import os
import sys

_FIELDS = {'vendor_id': 'vendor', 'cpu family': 'family', 'model': 'model', 'model name': 'model_name'}


def machine_info() -> dict:
    """The first processor's fields of /proc/cpuinfo (where there is one), the core count, and jax's version and
    first device when jax is imported (the reference's benchmarks run without it)."""
    info: dict = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block ends at the first blank line
                key, _, value = (part.strip() for part in line.partition(':'))
                if key in _FIELDS:
                    info[_FIELDS[key]] = int(value) if value.isdigit() else value
    except OSError:
        pass
    info['cores'] = os.cpu_count()
    jax = sys.modules.get('jax')
    if jax is not None:
        info.update(jax=jax.__version__, device=str(jax.devices()[0]))
    return info


if __name__ == '__main__':
    import jax  # noqa: F401  (for its version and device)
    print(machine_info())
