"""Sharding of the Mosaic kernel calls under jit (`fa3_jax._mosaic.partition`).

GPU interpret mode cannot run inside XLA's per-device partitioning (its host callbacks carry
ordered effects, and no host callback survives it), so on the CPU the kernels are replaced by the
reference with the kernels' signatures, recording the shapes it is traced with: a call split
over devices is traced with per-device shapes. Checked: each device runs its own batch rows and
heads (no operand is gathered), results keep q's sharding and equal the unsplit call, and head
shardings the kernels cannot split (kv heads not dividing) fall back to gathering the heads; vmap
folds into the batch; an explicit-sharding mesh runs the same split under shard_map.
FP8 descales ([batch, kv heads]) split with the kv heads they scale.
The real kernels under this partitioning run on GPUs in `benchmarks/sharded_gpu_check.py`.
"""

import textwrap

import pytest

from tests.fake_devices import run_on_fake_devices

_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from fa3_jax._mosaic import partition
    from fa3_jax.masks import BlockMask, MaskSpec, tile_metadata
    from fa3_jax.reference import attention_reference

    seen = []  # q shapes the kernels were traced with: per-device ones mean a split call

    def fake_forward(q, k, v, *, alibi_slopes_BH, with_lse=True, **kw):
        seen.append(q.shape)
        # like the kernels, build tile metadata (what fails on explicitly sharded types)
        tile_metadata(kw["spec"], 128, 64, segment_ids=kw["segment_ids"],
                      block_mask=kw["block_mask"])
        out, lse = attention_reference(q, k, v, alibi_slopes=alibi_slopes_BH, **kw)
        return out, lse if with_lse else None

    def fake_backward(q, k, v, out, lse, dout, *, dlse_BHS, alibi_slopes_BH, **kw):
        seen.append(q.shape)
        f = lambda q, k, v: attention_reference(q, k, v, alibi_slopes=alibi_slopes_BH, **kw)
        return jax.vjp(f, q, k, v)[1]((dout, dlse_BHS))

    partition.mha_forward, partition.mha_backward = fake_forward, fake_backward
    unsplit = lambda fn, *letters: fn
    split_fn = partition.batch_head_partitioned
    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)

    S, D = 128, 32
    STATIC = dict(spec=MaskSpec(S, S, True, None, None), softmax_scale=0.2, softcap=None)

    def inputs(seed, lead, heads_q, heads_kv):
        # q, k, v, dout [*lead, S, heads, D] and packed-document ids [*lead, S]
        keys = jax.random.split(jax.random.key(seed), 5)
        q = jax.random.normal(keys[0], (*lead, S, heads_q, D))
        k = jax.random.normal(keys[1], (*lead, S, heads_kv, D))
        v = jax.random.normal(keys[2], (*lead, S, heads_kv, D))
        dout = jax.random.normal(keys[3], q.shape)
        seg = jnp.cumsum(jax.random.bernoulli(keys[4], 0.03, (*lead, S)), -1).astype(jnp.int32)
        return q, k, v, dout, seg

    def fwd_bwd(q, k, v, dout, seg, slopes=None, mask=None):
        extra = dict(alibi_slopes_BH=slopes, segment_ids=(seg, seg), block_mask=mask)
        out, lse = partition.sharded_forward(q, k, v, **extra, **STATIC)
        grads = partition.sharded_backward(
            q, k, v, out, lse, dout, dlse_BHS=jnp.zeros_like(lse), **extra, **STATIC)
        return out, lse, *grads

    def max_err(xs, ys):
        # nan_to_num: rows that see no key have lse -inf in both
        assert all(np.array_equal(np.isfinite(a), np.isfinite(b)) for a, b in zip(xs, ys))
        with np.errstate(invalid="ignore"):
            return max(float(np.abs(np.nan_to_num(np.asarray(a) - np.asarray(b))).max())
                       for a, b in zip(xs, ys))

    def case(batch, heads_q, heads_kv, per_batch_slopes, with_mask, partitioned=True):
        partition.batch_head_partitioned = split_fn if partitioned else unsplit
        seen.clear()
        q, k, v, dout, seg = inputs(batch * 10 + heads_kv, (batch,), heads_q, heads_kv)
        slopes = jnp.linspace(0.05, 0.4, heads_q)
        slopes = jnp.tile(slopes, (batch, 1)) if per_batch_slopes else slopes[None]
        mask = None
        if with_mask:
            bits = jax.random.bernoulli(jax.random.key(5), 0.6, (1, heads_q, 2, 2))
            mask = BlockMask(bits.at[..., 0].set(True), 64, 64)
        run = lambda q, k, v, dout: fwd_bwd(q, k, v, dout, seg, slopes, mask)
        sh = NamedSharding(mesh, P("data", None, "model", None))
        kv_sh = sh if heads_kv % 2 == 0 else NamedSharding(mesh, P("data"))
        args = [jax.device_put(x, s) for x, s in ((q, sh), (k, kv_sh), (v, kv_sh), (dout, sh))]
        fn = jax.jit(run)
        hlo = fn.lower(*args).compile().as_text()
        split = fn(*args)
        one = jax.devices()[0]  # one device: custom_partitioning runs the call unsplit
        whole = jax.jit(run)(*(jax.device_put(x, one) for x in (q, k, v, dout)))
        return {"gathers": hlo.count("all-gather"), "err": max_err(split, whole),
                "traced": sorted(set(seen)), "out_spec": str(split[0].sharding.spec),
                "dk_spec": str(split[3].sharding.spec)}

    def vmap_case():
        partition.batch_head_partitioned = split_fn
        seen.clear()
        V = 3
        args = inputs(7, (V, 2), 4, 2)
        slopes = jnp.linspace(0.05, 0.4, 4)[None]  # not mapped, broadcast over the batch
        run = lambda *a: fwd_bwd(*a, slopes)
        mapped = jax.jit(jax.vmap(run))(*args)
        looped = [jax.jit(run)(*(x[i] for x in args)) for i in range(V)]
        err = max(max_err([m[i] for m in mapped], looped[i]) for i in range(V))
        return {"err": err, "traced": sorted(set(seen))}

    def explicit_case():
        # jax.make_mesh's default axis types are Explicit: shardings live in the array types
        partition.batch_head_partitioned = split_fn
        seen.clear()
        args = inputs(11, (4,), 4, 2)
        whole = jax.jit(fwd_bwd)(*args)
        explicit = jax.make_mesh((2, 2), ("data", "model"))
        with jax.set_mesh(explicit):
            sh = NamedSharding(explicit, P("data", None, "model", None))
            placed = [jax.device_put(x, sh) for x in args[:4]]
            placed.append(jax.device_put(args[4], NamedSharding(explicit, P("data"))))
            split = jax.jit(fwd_bwd)(*placed)
        return {"err": max_err(split, whole), "traced": sorted(set(seen)),
                "out_spec": str(split[0].sharding.spec)}

    def fp8_case():
        # FP8 descales [batch, kv heads] split with the kv heads they scale
        partition.batch_head_partitioned = split_fn
        seen.clear()
        q, k, v, _, seg = inputs(13, (4,), 4, 2)
        q, k, v = (x.astype(jnp.float8_e4m3fn) for x in (q, k, v))
        scales = tuple(jnp.linspace(0.5, 1.5, 8).reshape(4, 2) + i for i in range(3))
        def run(q, k, v, *scales):
            return partition.sharded_forward(q, k, v, alibi_slopes_BH=None, segment_ids=(seg, seg),
                                             block_mask=None, descale_BG=scales, **STATIC)
        sh = NamedSharding(mesh, P("data", None, "model", None))
        sc = NamedSharding(mesh, P("data", "model"))
        args = [jax.device_put(x, sh) for x in (q, k, v)] + [jax.device_put(x, sc) for x in scales]
        fn = jax.jit(run)
        hlo = fn.lower(*args).compile().as_text()
        split = fn(*args)
        # against the reference itself: a descale lost on the way would show
        whole = attention_reference(q, k, v, alibi_slopes=None, segment_ids=(seg, seg),
                                    block_mask=None, descale_BG=scales, **STATIC)
        return {"gathers": hlo.count("all-gather"), "err": max_err(split, whole),
                "traced": sorted(set(seen)), "out_spec": str(split[0].sharding.spec)}

    print(json.dumps({
        "fp8": fp8_case(),
        "explicit": explicit_case(),
        "vmap": vmap_case(),
        "split": case(4, 4, 2, False, True),
        "per_batch_slopes": case(4, 4, 2, True, False),
        "kv_heads_indivisible": case(4, 4, 1, False, False),
        "control_unpartitioned": case(4, 4, 2, False, False, partitioned=False),
    }))
    """
)


@pytest.fixture(scope="module")
def results():
    return run_on_fake_devices(_SCRIPT, devices=4)


@pytest.mark.parametrize("name", ["split", "per_batch_slopes"])
def test_batch_and_heads_split_without_gathering(results, name):
    r = results[name]
    assert r["gathers"] == 0, r
    assert [2, 128, 2, 32] in r["traced"], r  # each device: half the batch, half the heads
    assert r["out_spec"] == r["dk_spec"] == "P('data', None, 'model', None)"
    assert r["err"] < 1e-5, r


def test_control_without_the_partitioning_traces_global_shapes(results):
    r = results["control_unpartitioned"]
    assert r["traced"] == [[4, 128, 4, 32]] and r["err"] < 1e-5, r


def test_heads_gathered_when_kv_heads_do_not_divide(results):
    r = results["kv_heads_indivisible"]
    assert r["gathers"] > 0 and r["err"] < 1e-5, r
    assert [2, 128, 4, 32] in r["traced"], r  # batch still split


def test_vmap_folds_the_mapped_axis_into_the_batch(results):
    r = results["vmap"]
    assert [6, 128, 4, 32] in r["traced"], r  # 3 mapped x 2 batch rows in one call
    assert r["err"] < 1e-5, r


def test_explicit_mesh_runs_the_kernels_under_shard_map(results):
    r = results["explicit"]
    assert [2, 128, 2, 32] in r["traced"], r
    assert r["out_spec"] == "P('data', None, 'model', None)", r
    assert r["err"] < 1e-5, r


def test_fp8_descales_split_with_their_kv_heads(results):
    r = results["fp8"]
    assert r["gathers"] == 0, r
    assert [2, 128, 2, 32] in r["traced"], r
    assert r["out_spec"] == "P('data', None, 'model', None)", r
    assert r["err"] < 1e-5, r
