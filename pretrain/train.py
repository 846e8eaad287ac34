"""The training loop: mesh, sharded state, jitted step, data, checkpoints, metrics.

`train(config)` runs (or with `resume=True` continues) the run in `config.train.run_dir`:
  run_dir/config.json        the RunConfig (also printed at the start)
  run_dir/metrics.jsonl      one JSON record per log interval ('train') and evaluation ('eval')
  run_dir/tensorboard/       the same scalars as a TensorBoard event file
  run_dir/checkpoints/<step> Orbax checkpoints: params, optimiser state, step, data iterator

Multi-host: start the same command with `--distributed=true` on every host (same run_dir on a
shared filesystem). Under SLURM or Open MPI (srun/mpirun) JAX finds its peers by itself;
elsewhere set JAX_COORDINATOR_ADDRESS=host0:port, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i.
The mesh spans every device of every host; each process reads its own shard of every data source
and feeds its local devices.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

import data
from pretrain.checkpoint import Checkpointer
from pretrain.config import RunConfig
from pretrain.metrics import MetricsLog, device_peak_tflops, mfu
from pretrain.model import LM
from pretrain.optim import make_optimizer, make_schedule
from pretrain.sharding import batch_sharding, make_mesh, param_shardings, replicated
from pretrain.step import NUM_SOURCES, TrainState, make_eval_step, make_train_step

__all__ = ["train", "build_state", "NonFiniteLossError", "MODEL_INPUTS", "source_label"]

MODEL_INPUTS = ("tokens", "targets", "segment_ids", "source_ids")  # batch keys the step reads


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; the run stopped without saving."""


def _initialize_distributed() -> None:
    """jax.distributed.initialize() from SLURM/Open MPI/Kubernetes auto-detection, or from
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
    env = os.environ
    jax.distributed.initialize(
        coordinator_address=env.get("JAX_COORDINATOR_ADDRESS"),
        num_processes=int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None,
        process_id=int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None,
    )


def source_label(source: str) -> str:
    """'RedPajamaCommonCrawl' -> 'CommonCrawl' (metric names)."""
    return source.removeprefix("RedPajama")


@dataclasses.dataclass
class _Built:
    graphdef: nnx.GraphDef
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
    init: object  # jitted () -> TrainState, already sharded


def build_state(cfg: RunConfig, mesh) -> _Built:
    """The model's graph, the abstract sharded TrainState and a jitted initialiser."""
    tx = make_optimizer(cfg.train)

    def init() -> TrainState:
        model = LM(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
        params = nnx.to_pure_dict(nnx.state(model))
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    graphdef = nnx.split(nnx.eval_shape(lambda: LM(cfg.model, rngs=nnx.Rngs(0))))[0]
    shapes = jax.eval_shape(init)
    p_shardings = param_shardings(shapes.params, mesh)
    params_def = jax.tree.structure(shapes.params)

    def opt_sharding(node):
        if jax.tree.structure(node) == params_def:
            return p_shardings
        return jax.tree.map(lambda _: replicated(mesh), node)

    shardings = TrainState(
        replicated(mesh),
        p_shardings,
        jax.tree.map(
            opt_sharding, shapes.opt_state, is_leaf=lambda n: jax.tree.structure(n) == params_def
        ),
    )
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return _Built(graphdef, abstract, jax.jit(init, out_shardings=shardings))


def _check_batch_layout(cfg: RunConfig, mesh) -> None:
    tc, n_dev, n_proc = cfg.train, mesh.devices.size, jax.process_count()
    micro = tc.global_batch // tc.microbatches
    if tc.global_batch % n_proc:
        raise ValueError(
            f"global_batch ({tc.global_batch}) must be divisible by the process count ({n_proc})"
        )
    if micro % n_dev:
        raise ValueError(
            f"global_batch / microbatches ({micro}) must be divisible by the device count ({n_dev})"
        )


class _Interval:
    """Host-side sums of per-step metrics between two log records."""

    def __init__(self):
        self.loss_sum = self.tokens = self.steps = self.grad_norm_sum = 0.0
        self.source_sum = np.zeros(NUM_SOURCES)
        self.source_count = np.zeros(NUM_SOURCES)
        self.lr = 0.0

    def add(self, m) -> None:
        self.loss_sum += float(m["loss"]) * float(m["tokens"])
        self.tokens += float(m["tokens"])
        self.grad_norm_sum += float(m["grad_norm"])
        self.steps += 1
        self.source_sum += np.asarray(m["per_source_sum"])
        self.source_count += np.asarray(m["per_source_count"])
        self.lr = float(m["lr"])


def _per_source(sums, counts) -> dict[str, float]:
    return {
        f"loss/{source_label(s)}": float(sums[i] / counts[i])
        for i, s in enumerate(data.SOURCES)
        if counts[i] > 0
    }


def train(cfg: RunConfig, *, resume: bool = False, stop_at: int | None = None) -> dict:
    """Trains until `cfg.train.steps` (or `stop_at`, saving there). Returns the last metrics.

    Raises:
      NonFiniteLossError: a step produced a NaN/inf loss or gradient norm (nothing saved after it).
    """
    tc = cfg.train
    if tc.distributed:
        _initialize_distributed()
    is_main = jax.process_index() == 0
    run_dir = Path(tc.run_dir)
    mesh = make_mesh(tc.mesh_data, tc.mesh_fsdp)
    _check_batch_layout(cfg, mesh)
    manifest = data.load_manifest(tc.data_dir)
    if manifest.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"the tokenizer of {tc.data_dir} has {manifest.vocab_size} tokens but the model's "
            f"vocab_size is {cfg.model.vocab_size}; pass --vocab_size={manifest.vocab_size}"
        )
    seq_len, n_proc = cfg.seq_len, jax.process_count()

    def pipeline(mixture, split, batch_size):
        return data.make_pipeline(
            tc.data_dir,
            mixture,
            seq_len,
            batch_size,
            tc.seed,
            split=split,
            process_index=jax.process_index(),
            process_count=n_proc,
            worker_count=tc.data_workers if split == "train" else 0,
        )

    train_iter = pipeline(tc.mixture, "train", tc.global_batch // n_proc)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=tc.keep_checkpoints)
    built = build_state(cfg, mesh)
    start = ckpt.latest_step()
    if resume:
        if start is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt.directory}")
        state = ckpt.restore(start, built.abstract_state, train_iter)
    else:
        if start is not None:
            raise FileExistsError(
                f"{run_dir} already has checkpoints (latest step {start}); pass --resume to "
                "continue it or choose another --run_dir"
            )
        state, start = built.init(), 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
        print(cfg.describe())
        print(
            f"mesh {dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].device_kind} "
            f"device(s), {n_proc} process(es); run dir {run_dir.absolute()}"
        )

    batch_shard = batch_sharding(mesh)
    act_shard = batch_sharding(mesh, ndim=3)
    schedule = make_schedule(tc)
    step_fn = jax.jit(
        make_train_step(
            built.graphdef,
            make_optimizer(tc),
            schedule,
            microbatches=tc.microbatches,
            activation_sharding=act_shard,
            microbatch_sharding=batch_sharding(mesh, ndim=3, batch_axis=1),
        ),
        in_shardings=(jax.tree.map(lambda a: a.sharding, built.abstract_state), batch_shard),
        donate_argnums=0,
    )
    eval_fn = jax.jit(make_eval_step(built.graphdef, act_shard))

    def to_global(host_batch):
        return {
            k: jax.make_array_from_process_local_data(batch_shard, host_batch[k])
            for k in MODEL_INPUTS
        }

    eval_iters = {}
    if tc.eval_every:
        sources = [
            s
            for s in data.get_mixture(tc.mixture).proportions
            if manifest.tokens("validation").get(s, 0) > 0
        ]
        for s in sources:
            it = pipeline(f"{s}=1", "validation", tc.global_batch // tc.microbatches // n_proc)
            eval_iters[s] = (it, it.get_state())

    def evaluate(step: int) -> dict:
        record = {"step": step, "kind": "eval"}
        sums, counts = np.zeros(NUM_SOURCES), np.zeros(NUM_SOURCES)
        for it, initial in eval_iters.values():
            it.set_state(initial)  # the same validation batches every time
            for _ in range(tc.eval_batches):
                s, c = jax.device_get(eval_fn(state.params, to_global(next(it))))
                sums, counts = sums + s, counts + c
        record["loss"] = float(sums.sum() / max(counts.sum(), 1))
        record.update(_per_source(sums, counts))
        return record

    log = MetricsLog(run_dir, enabled=is_main)
    peak = tc.peak_tflops or device_peak_tflops()
    flops_per_token = cfg.model.flops_per_token(seq_len)
    tokens_per_step = tc.global_batch * seq_len
    interval, pending, last_record = _Interval(), None, {}
    clock = {"t": None, "tokens": 0}
    stop_requested = []

    def on_sigint(signum, frame):
        stop_requested.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts at once

    def drain(step: int, metrics) -> None:
        host = jax.device_get(metrics)
        if not (math.isfinite(float(host["loss"])) and math.isfinite(float(host["grad_norm"]))):
            last = ckpt.latest_step()
            where = f"step {last} in {ckpt.directory}" if last is not None else "none was saved"
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (loss={float(host['loss'])}, grad_norm="
                f"{float(host['grad_norm'])}); stopped without saving. Last good checkpoint: "
                f"{where}. Try a lower --lr, a longer --warmup_steps or --grad_clip."
            )
        now = time.perf_counter()
        if clock["t"] is None:  # the first step includes compilation: time from its end
            clock["t"] = now
        else:
            clock["tokens"] += tokens_per_step
        interval.add(host)

    def record_train(step: int) -> dict:
        nonlocal interval
        elapsed = time.perf_counter() - clock["t"] if clock["t"] is not None else 0.0
        tps = clock["tokens"] / elapsed if elapsed > 0 and clock["tokens"] else None
        rec = {
            "step": step,
            "kind": "train",
            "loss": interval.loss_sum / max(interval.tokens, 1),
            **_per_source(interval.source_sum, interval.source_count),
            "grad_norm": interval.grad_norm_sum / max(interval.steps, 1),
            "lr": interval.lr,
            "tokens_seen": step * tokens_per_step,
        }
        if tps:
            rec["tokens_per_s"] = tps
            rec["step_ms"] = 1000 * tokens_per_step / tps
            util = mfu(tps, flops_per_token, peak, mesh.devices.size)
            if util is not None:
                rec["mfu"] = util
        interval = _Interval()
        clock["t"], clock["tokens"] = time.perf_counter(), 0
        log.write(rec)
        return rec

    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    bar = tqdm(
        total=tc.steps,
        initial=start,
        disable=not (tc.progress and is_main),
        desc="train",
        dynamic_ncols=True,
    )
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    step = start
    try:
        while step < end and not stop_requested:
            state, metrics = step_fn(state, to_global(next(train_iter)))
            step += 1
            if pending is not None:
                drain(*pending)
            pending = (step, metrics)
            at_log = step % tc.log_every == 0 or step == end
            at_eval = tc.eval_every and (step % tc.eval_every == 0 or step == tc.steps)
            at_ckpt = (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == end
            if at_log or at_eval or at_ckpt or stop_requested:
                drain(*pending)
                pending = None
            if at_log:
                last_record = record_train(step)
                bar.set_postfix(loss=f"{last_record['loss']:.3f}")
            if at_eval:
                eval_record = evaluate(step)
                log.write(eval_record)
                if is_main:
                    bar.write(f"step {step}: validation loss {eval_record['loss']:.4f}")
            if at_ckpt or stop_requested:
                ckpt.save(step, state, train_iter)
            if (at_eval or at_ckpt) and clock["t"] is not None:
                clock["t"], clock["tokens"] = time.perf_counter(), 0  # throughput excludes these
            bar.update(1)
        if stop_requested and is_main:
            bar.write(
                f"interrupted: saved checkpoint {step} in {ckpt.directory}; continue with --resume"
            )
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        ckpt.wait()
        ckpt.close()
        log.close()
    return last_record
