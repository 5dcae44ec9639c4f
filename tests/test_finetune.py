"""Tests for ghn_jax.train.finetune: BP / FG / local FG selected in the config, GHN-initialised targets."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ghn_jax.nets.zoo import SmallCNN
from ghn_jax.train import data as data_lib
from ghn_jax.train import finetune
from ghn_jax.train import local_losses as ll

TRAIN = data_lib.synthetic_dataset(512, (8, 8, 1), 4, split="train")
TEST = data_lib.synthetic_dataset(256, (8, 8, 1), 4, split="test")

SETTINGS = {
    "bp": dict(optimizer="momentum", learning_rate=0.05),
    "fg": dict(optimizer="adam", learning_rate=3e-3, num_tangents=8),
    "fg_local": dict(optimizer="momentum", learning_rate=0.02),
}


@pytest.mark.parametrize("grad", sorted(SETTINGS))
def test_train_classifier_learns_with_each_gradient_source(grad):
    net = ll.make_mlp(hidden=(32,), num_classes=4)
    params = net.init(jax.random.key(0), TRAIN[0][:1])["params"]  # body only: heads are added for fg_local
    config = dict(grad=grad, num_steps=120, batch_size=32, log_every=40, **SETTINGS[grad])
    final, history = finetune.train_classifier(net, params, TRAIN, config, test_data=TEST)
    first, last = history["eval"][0], history["eval"][-1]
    assert not history["diverged"]
    assert [r["step"] for r in history["train"]] == [40, 80, 120]
    assert all(b["time"] >= a["time"] for a, b in zip(history["train"], history["train"][1:]))
    assert last["loss"] < 0.8 * first["loss"] and last["accuracy"] > first["accuracy"] + 0.2
    assert ("head_0" in final) == (grad == "fg_local")


def test_progress_bar_counts_finished_steps_and_leaves_training_unchanged(monkeypatch):
    seen = []

    class Bar:   # records what train_classifier shows
        def __init__(self, total, desc, leave, disable):
            self.n, self.desc, self.disable, self.updates, self.closed = 0, desc, disable, [], False
            seen.append(self)

        def update(self, k):
            self.n += k
            self.updates.append(self.n)

        def close(self):
            self.closed = True

    monkeypatch.setattr(finetune, "tqdm", Bar)
    net = ll.make_mlp(hidden=(16,), num_classes=4)
    params = net.init(jax.random.key(0), TRAIN[0][:1])["params"]
    config = dict(grad="bp", num_steps=25, batch_size=32, log_every=25, **SETTINGS["bp"])
    quiet, _ = finetune.train_classifier(net, params, TRAIN, config)
    shown, _ = finetune.train_classifier(net, params, TRAIN, config, progress="net: 25 SGD steps")
    assert [(b.disable, b.desc, b.updates, b.closed) for b in seen] == [
        (True, None, [], True), (False, "net: 25 SGD steps", [10, 20, 25], True)]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(quiet), jax.tree.leaves(shown)))


@pytest.mark.skipif(not os.environ.get("GHN_SLOW_TESTS"), reason="compiles a GHN (~20 s); set GHN_SLOW_TESTS=1")
def test_finetune_ghn_predicted_params_with_forward_gradients():
    from configs import test as test_config
    from ghn_jax.hypernet.predictor import GHN2, init_params
    from ghn_jax.train.meta_train import ghn_config

    config = test_config.get_config()
    config.data.num_classes = 4
    cfg = ghn_config(config)
    ghn = GHN2(cfg, init_params(cfg, jax.random.key(0)))
    module = SmallCNN(channels=(4, 8), num_classes=4)
    params = ghn.predict(module, (1, 8, 8, 1))
    train_cfg = finetune.TrainConfig(grad="fg", optimizer="adam", learning_rate=3e-3, num_tangents=8, num_steps=60,
                                     batch_size=32, log_every=20)
    before = finetune.evaluate(module, params, TEST)
    tuned, history = finetune.train_classifier(module, params, TRAIN, train_cfg, test_data=TEST)
    assert jax.tree.structure(tuned) == jax.tree.structure(params)
    assert np.isclose(history["eval"][0]["loss"], before["loss"])
    assert history["eval"][-1]["loss"] < before["loss"]


def test_rejects_unknown_options():
    with pytest.raises(ValueError):
        finetune.TrainConfig.from_any({"grad": "bp", "no_such_field": 1})
    net = SmallCNN(channels=(4,), num_classes=4)
    with pytest.raises(ValueError):  # local losses need a LocalLossNet
        finetune.make_step(net, finetune.TrainConfig(grad="fg_local"), finetune.make_optimizer(finetune.TrainConfig()))
    with pytest.raises(ValueError):
        finetune.make_step(net, finetune.TrainConfig(grad="sgd"), finetune.make_optimizer(finetune.TrainConfig()))


def test_grad_clip_norm_bounds_the_update():
    """SGD with clipping at global norm 5 (the reference's baseline) moves the parameters by lr * 5 at most."""
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    grads = {"a": jnp.full(3, 100.0), "b": jnp.full((2, 2), -100.0)}   # global norm ~265
    for clip, expected in ((None, 0.1 * np.sqrt(7) * 100), (5.0, 0.1 * 5.0)):
        opt = finetune.make_optimizer(finetune.TrainConfig(optimizer="sgd", learning_rate=0.1, grad_clip_norm=clip))
        updates, _ = opt.update(grads, opt.init(params), params)
        norm = float(optax.global_norm(updates))
        assert np.isclose(norm, expected, rtol=1e-5), (clip, norm)
