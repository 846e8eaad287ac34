import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.config import make_config
from pretrain.optim import make_optimizer, make_schedule


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule_warms_up_then_decays_to_the_floor(decay):
    tc = make_config(
        "tiny", {"lr": 1e-3, "warmup_steps": 10, "steps": 110, "decay": decay, "min_lr_ratio": 0.1}
    ).train
    schedule = make_schedule(tc)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0, 5e-4, 1e-3], rtol=1e-5)
    np.testing.assert_allclose(schedule(110), 1e-4, rtol=1e-4)
    middle = 5.5e-4  # both shapes pass the midpoint halfway through the decay
    np.testing.assert_allclose(schedule(60), middle, rtol=1e-4)
    lrs = np.asarray([schedule(s) for s in range(10, 111)])
    assert np.all(np.diff(lrs) <= 1e-12)


def test_weight_decay_skips_norms_and_biases():
    tc = make_config(
        "tiny", {"lr": 0.1, "warmup_steps": 0, "steps": 10, "weight_decay": 0.5, "grad_clip": 1.0}
    ).train
    key = jax.random.key(0)
    params = {
        "kernel": jax.random.normal(key, (4, 4)) + 2.0,
        "norm": {"scale": jnp.ones(4) * 3, "bias": jnp.ones(4)},
    }
    tx = make_optimizer(tc)
    state = tx.init(params)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, state, params)
    # lr(0) is the peak without warm-up; decoupled decay moves kernels by -lr·wd·p, nothing else
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * params["kernel"], rtol=1e-5)
    assert not np.any(np.asarray(updates["norm"]["scale"]))
    assert not np.any(np.asarray(updates["norm"]["bias"]))
