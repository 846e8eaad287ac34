import json
import struct
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.config import RunConfig
from pretrain.optim import make_optimizer, make_schedule
from pretrain.sharding import make_mesh
from pretrain.step import make_train_step
from pretrain.tensorboard import _masked_crc, crc32c
from pretrain.train import NonFiniteLossError, build_state, train
from tests.fake_devices import run_on_fake_devices
from tests.pretrain.helpers import small_config


def _records(run_dir, kind="train"):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _tensorboard_tags(run_dir) -> set[str]:
    """Reads back the TFRecord framing (checking both CRCs) and collects the scalar tags."""
    (path,) = (Path(run_dir) / "tensorboard").glob("events.out.tfevents.*")
    blob, tags, pos = path.read_bytes(), set(), 0
    while pos < len(blob):
        header = blob[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", blob[pos + 8 : pos + 12])[0] == _masked_crc(header)
        record = blob[pos + 12 : pos + 12 + length]
        assert struct.unpack("<I", blob[pos + 12 + length : pos + 16 + length])[0] == _masked_crc(
            record
        )
        tags.update(t.decode() for t in _strings_after(record, b"train/"))
        pos += 16 + length
    return tags


def _strings_after(record: bytes, prefix: bytes):
    start = record.find(prefix)
    while start >= 0:
        length = record[start - 1]
        yield record[start : start + length]
        start = record.find(prefix, start + 1)


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283


def test_two_train_steps_on_cpu(tmp_path, demo_data):
    cfg = small_config(tmp_path / "run", demo_data, steps=2, eval_every=2, eval_batches=1)
    train(cfg)
    records = _records(cfg.train.run_dir)
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in records)
    assert abs(records[0]["loss"] - np.log(4096)) < 1.0  # near-uniform at initialisation
    assert "loss/CommonCrawl" in records[0] and "tokens_per_s" in records[1]
    (evaluation,) = _records(cfg.train.run_dir, "eval")
    assert len([k for k in evaluation if k.startswith("loss/")]) == 7  # DC-6 has all seven sources
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2"]
    assert RunConfig.load(tmp_path / "run" / "config.json") == cfg
    assert {"train/loss", "train/grad_norm", "train/lr"} <= _tensorboard_tags(cfg.train.run_dir)


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, demo_data):
    straight = small_config(tmp_path / "a", demo_data, steps=4, microbatches=2)
    train(straight)
    interrupted = small_config(tmp_path / "b", demo_data, steps=4, microbatches=2)
    train(interrupted, stop_at=2)
    assert [r["step"] for r in _records(tmp_path / "b")] == [1, 2]
    train(interrupted, resume=True)
    expected = [r["loss"] for r in _records(tmp_path / "a")]
    assert [r["loss"] for r in _records(tmp_path / "b")] == expected


def test_gradient_accumulation_matches_one_big_batch():
    cfg = small_config("unused", "unused", global_batch=8)
    mesh = make_mesh()
    built = build_state(cfg, mesh)
    keys = jax.random.split(jax.random.key(5), 3)
    batch = {
        "tokens": jax.random.randint(keys[0], (8, 32), 0, 4096),
        "targets": jax.random.randint(keys[1], (8, 32), -1, 4096),
        "segment_ids": jnp.sort(jax.random.randint(keys[2], (8, 32), 1, 4), axis=1),
        "source_ids": jax.random.randint(keys[2], (8, 32), 0, 7),
    }
    results = []
    for microbatches in (1, 4):
        step = jax.jit(
            make_train_step(
                built.graphdef,
                make_optimizer(cfg.train),
                make_schedule(cfg.train),
                microbatches=microbatches,
            )
        )
        results.append(step(built.init(), batch))
    (state1, m1), (state4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["per_source_sum"], m4["per_source_sum"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state4.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


_FSDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp
    from pretrain.optim import make_optimizer, make_schedule
    from pretrain.sharding import batch_sharding, make_mesh
    from pretrain.step import make_train_step
    from pretrain.train import build_state
    from tests.pretrain.helpers import small_config

    cfg = small_config("unused", "unused", global_batch=8, microbatches=1)
    keys = jax.random.split(jax.random.key(7), 3)
    batch = {
        "tokens": jax.random.randint(keys[0], (8, 32), 0, 4096),
        "targets": jax.random.randint(keys[1], (8, 32), 0, 4096),
        "segment_ids": jnp.sort(jax.random.randint(keys[2], (8, 32), 1, 4), axis=1),
        "source_ids": jax.random.randint(keys[2], (8, 32), 0, 7),
    }
    out = {}
    for name, devices, data, fsdp in [("1", jax.devices()[:1], 1, 1),
                                      ("fsdp8", jax.devices(), 1, 8),
                                      ("data2_fsdp4", jax.devices(), 2, 4)]:
        mesh = make_mesh(data, fsdp, devices=devices)
        built = build_state(cfg, mesh)
        state_sh = jax.tree.map(lambda a: a.sharding, built.abstract_state)
        step = jax.jit(
            make_train_step(built.graphdef, make_optimizer(cfg.train), make_schedule(cfg.train),
                            activation_sharding=batch_sharding(mesh, ndim=3)),
            in_shardings=(state_sh, batch_sharding(mesh)), out_shardings=(state_sh, None))
        state, losses = built.init(), []
        for _ in range(3):
            state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))
            losses.append(float(metrics["loss"]))
        kernel = state.params["blocks"][0]["mlp"]["gate_up"]["kernel"]
        out[name] = {"losses": losses, "shards": len(kernel.addressable_shards),
                     "shard_shape": list(kernel.addressable_shards[0].data.shape)}
    print(json.dumps(out))
    """
)


def test_same_loss_on_one_and_eight_fake_devices_with_fsdp():
    out = run_on_fake_devices(_FSDP_SCRIPT, devices=8, timeout=300)
    assert out["fsdp8"]["shards"] == 8 and out["fsdp8"]["shard_shape"] == [4, 128]  # d_model 32 / 8
    np.testing.assert_allclose(out["fsdp8"]["losses"], out["1"]["losses"], rtol=2e-5)
    np.testing.assert_allclose(out["data2_fsdp4"]["losses"], out["1"]["losses"], rtol=2e-5)
    assert out["1"]["losses"][2] < out["1"]["losses"][0]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, demo_data):
    cfg = small_config(
        tmp_path / "run",
        demo_data,
        steps=5,
        lr=1e35,
        grad_clip=0.0,
        checkpoint_every=1,
        warmup_steps=0,
    )
    with pytest.raises(
        NonFiniteLossError, match="non-finite loss at step 2.*Last good checkpoint: step 1"
    ):
        train(cfg)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1"]


def test_run_errors_are_clear(tmp_path, demo_data):
    with pytest.raises(ValueError, match="pass --vocab_size=4096"):
        train(small_config(tmp_path / "a", demo_data, vocab_size=1000))
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        train(small_config(tmp_path / "b", demo_data), resume=True)
    with pytest.raises(ValueError, match="must be divisible by the device count|mesh_data"):
        train(small_config(tmp_path / "c", demo_data, mesh_data=3))
    cfg = small_config(tmp_path / "d", demo_data, steps=2)
    train(cfg, stop_at=1)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(cfg)
