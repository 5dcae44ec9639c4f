"""Training checkpoints (Orbax) with preemption handling, and loading a GHN out of a training workdir."""
from __future__ import annotations

import json
import os
import shutil
import signal
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging

from ghn_jax.hypernet.ghn import GHNConfig


class Checkpointer:
    """Orbax ``CheckpointManager`` over ``{'params', 'opt_state', 'step'}`` plus a SIGTERM flag.

    Saves are synchronous (a meta-step takes seconds, a save milliseconds), so a ``kill -9`` right after
    :meth:`save` returns never loses that checkpoint; Orbax ignores half-written ones.
    """

    def __init__(self, workdir: str, keep: int = 3):
        self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.preempted = False
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread (e.g. inside some notebook runners)
            pass

    def _on_sigterm(self, signum, frame) -> None:
        self.preempted = True

    def should_stop(self, step: int) -> bool:
        """True when this job was asked to stop (SIGTERM locally, or a preemption notice on multi-host TPUs)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return self.preempted or multihost_utils.reached_preemption_sync_point(step)
        return self.preempted

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        if config is not None and jax.process_index() == 0:
            with open(os.path.join(self.directory, 'ghn_config.json'), 'w') as f:
                json.dump(config, f)

    def restore(self, abstract_state: dict[str, Any], step: int | None = None) -> dict[str, Any]:
        """Restore against an abstract target (shapes/dtypes/shardings from ``jax.eval_shape``)."""
        step = self.latest_step() if step is None else step
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # orbax raises many types; say which checkpoint and what to do
            raise RuntimeError(
                f'could not restore checkpoint step {step} from {self.directory}: {e}') from e

    def restore_latest_good(self, abstract_state: dict[str, Any]) -> dict[str, Any]:
        """Restore the newest checkpoint that reads back; unreadable newer ones are reported and moved aside."""
        aside = os.path.join(os.path.dirname(self.directory), 'checkpoints_unreadable')

        def move_aside(step: int) -> None:
            # Keep the unreadable checkpoint for inspection, out of the way of the steps about to be redone.
            os.makedirs(aside, exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), os.path.join(aside, str(step)))
            logging.warning('moved it to %s', aside)
            self.manager.reload()

        step, state, errors = newest_readable(self.manager, self.directory, abstract_state, move_aside)
        if state is None:
            raise RuntimeError('no readable checkpoint in ' + self.directory + ':\n' + '\n'.join(errors))
        if errors:
            logging.warning('resuming from step %d, the newest readable checkpoint', step)
        return state

    def close(self) -> None:
        self.manager.close()


def load_ghn_from_train_dir(path: str) -> tuple[GHNConfig, Any]:
    """(config, params) of the newest readable checkpoint in a training workdir (or its ``checkpoints`` folder).

    Read-only, so that a running training can be evaluated: an unreadable newer checkpoint is reported and skipped,
    not moved aside (the training run does that when it resumes).
    """
    directory = path if os.path.basename(os.path.normpath(path)) == 'checkpoints' else os.path.join(path, 'checkpoints')
    config_path = os.path.join(directory, 'ghn_config.json')
    if not os.path.exists(config_path):
        raise FileNotFoundError(f'{path} is not a ghn_jax training workdir (no {config_path}): pass the --workdir of '
                                '`python -m ghn_jax.train.main`, its ghn.npz, or a .npz / .pt GHN checkpoint')
    with open(config_path) as f:
        config = GHNConfig(**json.load(f))
    _, state, errors = newest_readable(ocp.CheckpointManager(directory), directory)
    if state is None:
        raise FileNotFoundError(f'no readable checkpoint in {directory}' + (':\n' + '\n'.join(errors) if errors else
                                ': the run has not saved one yet (it saves every checkpoint_every steps and on SIGTERM)'))
    return config, state['params']


def newest_readable(manager: ocp.CheckpointManager, directory: str, abstract_state: dict[str, Any] | None = None,
                    on_unreadable: Callable[[int], None] | None = None) -> tuple[int | None, Any, list[str]]:
    """(step, state, errors) of the newest checkpoint that reads back, state None if none does; each unreadable
    newer one is logged, its error kept and ``on_unreadable(step)`` called."""
    errors = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return step, manager.restore(step, args=ocp.args.StandardRestore(abstract_state)), errors
        except Exception as e:  # orbax raises many types; say which checkpoint
            errors.append(f'could not restore checkpoint step {step} from {directory}: {e}')
            logging.warning('%s', errors[-1])
            if on_unreadable is not None:
                on_unreadable(step)
    return None, None, errors
