#!/usr/bin/env bash
# One device call = one stage: `bash benchmarks/h100_session.sh STAGE` from the repo root on the GPU machine.
# Writes JSON under $OUT (and benchmarks/results/ via the benchmarks' --out); the full output goes to
# $OUT/STAGE.log as it comes, so a stage cut short by a time limit still leaves its rows.
set -uo pipefail
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" benchmarks/results
stage=${1:?stage: fwd | fwd-fp16 | fwd-bf16 | bwd-fp16 | bwd-bf16 | masks | pretrain | gpu-tests | forward-variants | causal-consumers | ncu-causal | ncu-source | timing | backward-order | backward-masks | backward-variants | backward-dq | backward-dq-masks | bwd-timing | ncu-fused | ptxas-backward | sharded | scaling | ptx-forward | documents | dynamic | fp8 | fp8-sweep | fp8-confirm | causal-c3 | fwd-d64-fp8 | fp8-registers | causal-d64-tiles | d64-kv256-causal | d64-kv256-dense | short-causal | backward-causal-fused | ncu-short-causal | ncu-short-source | softmax-turns | softmax-turns-ab | softmax-turns-ab2}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$OUT/nvidia-smi.txt"
python -c "import jax, flax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
if ls .whl/*.whl >/dev/null 2>&1; then python -m pip install -q --no-deps --no-index --root-user-action=ignore .whl/*.whl 2>&1 | tee -a "$OUT/$stage.log" | tail -3; fi
case "$stage" in
  gpu-tests) timeout 570 python -m pytest -q -m gpu tests/fa3_jax 2>&1 | tee -a "$OUT/$stage.log" | tail -25 ;;  # ~4 min for the kernel tests, 1.5 more for test_ptxas.py
  # the full FA3 grid (S 512…16k), three interleaved rounds (torch in them): fp16 7 min, bf16 4.5
  # min on the H100 (2026-11-27 18:42); fwd-fp16 / fwd-bf16: one dtype per call
  fwd|fwd-fp16|fwd-bf16) full=(--head-dims 64,128,256 --seqlens 512,1024,2048,4096,8192,16384 --causal no,yes)
       if [ "$stage" != fwd-bf16 ]; then
         python -m fa3_jax.benchmark --mode fwd --dtype fp16 "${full[@]}" \
           --impls fa3_jax,cudnn,jax_mgpu,torch_cudnn,torch_fa2 --tag h100-fwd-fp16-grid 2>&1 | tee -a "$OUT/$stage.log" | tail -40
       fi
       if [ "$stage" != fwd-fp16 ]; then
         python -m fa3_jax.benchmark --mode fwd --dtype bf16 "${full[@]}" \
           --impls fa3_jax,cudnn,torch_cudnn,torch_fa2 --tag h100-fwd-bf16-grid 2>&1 | tee -a "$OUT/$stage.log" | tail -40
       fi ;;
  # the backward grid of issue 4 (S 512…16k), one dtype per call, three rounds: 3-3.5 min per
  # head dim (2026-11-27 18:54), so HEAD_DIMS=64 / 128 splits it under a 10-minute call
  bwd-fp16|bwd-bf16) dt=${stage#bwd-}; impls=fa3_jax,cudnn,torch_cudnn,torch_fa2
         [ "$dt" = fp16 ] && impls+=,jax_mgpu
         dims=${HEAD_DIMS:-64,128}
         python -m fa3_jax.benchmark --mode bwd --dtype "$dt" --head-dims "$dims" \
           --seqlens 512,1024,2048,4096,8192,16384 --causal no,yes --impls "$impls" \
           --tag "h100-bwd-$dt-grid-d${dims//,/-}" 2>&1 | tee -a "$OUT/$stage.log" | tail -30 ;;
  masks) python -m fa3_jax.benchmark --mode fwd,bwd --dtype bf16 --head-dims 128 --seqlens 16384 --causal yes \
         --masks none,window,segments --impls fa3_jax,cudnn --tag h100-masks-causal 2>&1 | tee -a "$OUT/$stage.log" | tail -12
         python -m fa3_jax.benchmark --mode fwd,bwd --dtype bf16 --head-dims 128 --seqlens 16384 --causal no \
         --masks none,block_sparse:0.2,block_sparse:0.5,block_sparse:0.8 --impls fa3_jax,cudnn \
         --tag h100-masks-sparse 2>&1 | tee -a "$OUT/$stage.log" | tail -12 ;;
  pretrain) python -m pretrain.benchmark --preset 1.3b 2>&1 | tee -a "$OUT/$stage.log" | tail -20 ;;
  # grid vs persistent (q tiles / LPT) where we trail most, incl. 16k window/documents (~4 min)
  forward-variants) python benchmarks/mosaic_forward_check.py --out "$OUT" --order 2>&1 | tee -a "$OUT/$stage.log" | tail -14 ;;
  # causal D64 1k-4k: three-consumer variants against the default, ptxas registers/spills (~3 min)
  causal-consumers) MOSAIC_GPU_DUMP_PTXAS=1 python benchmarks/mosaic_forward_check.py --out "$OUT" \
         --causal-consumers > "$OUT/$stage.log" 2>&1
         grep -i "spill\|Used [0-9]* registers" "$OUT/$stage.log" | head -40
         grep "OK\|BAD\|{'d'" "$OUT/$stage.log" ;;
  # ncu of one forward launch, causal D64 (our largest forward gap) beside causal D128 (ahead of
  # cuDNN) at 4k: speed of light, warp stalls, then the tensor / MUFU / FMA pipes (~4 min)
  ncu-causal) pipes=sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active
         pipes+=,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active
         pipes+=,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active
         pipes+=,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active
         for d in 64 128; do
           prof=(ncu --clock-control none -k regex:mosaic --launch-skip 2 --launch-count 1)
           "${prof[@]}" --section SpeedOfLight --section WarpStateStats --section LaunchStats \
             python benchmarks/ncu_kernels.py fwd $d 4096 causal > "$OUT/ncu_${d}_4096_causal.txt" 2>&1
           "${prof[@]}" --metrics "$pipes" python benchmarks/ncu_kernels.py fwd $d 4096 causal \
             > "$OUT/ncu_${d}_4096_causal_pipes.txt" 2>&1
         done
         grep -h "Duration\|Throughput\|pct_of_peak\|Stall\|Registers\|Grid Size" "$OUT"/ncu_* ;;
  # ncu --set full with per-SASS-instruction stall samples (source page, CSV) of causal D64 forward
  # and the D64 / D128 dense backward kernels (dK/dV, dQ) at 4k, where we trail most (~5 min)
  ncu-source) prof=(ncu --clock-control none -k regex:mosaic --set full --import-source no)
         for run in "fwd 64 4096 causal 2 1" "bwd 64 4096 dense 4 2" "bwd 128 4096 dense 4 2"; do
           read -r mode d s mask skip count <<< "$run"; name=${mode}_${d}_${s}_${mask}
           "${prof[@]}" --launch-skip $skip --launch-count $count --export "/tmp/$name" -f \
             python benchmarks/ncu_kernels.py $mode $d $s $mask > "$OUT/$name.txt" 2>&1
           ncu -i "/tmp/$name.ncu-rep" --page source --csv --print-source sass 2>&1 | gzip > "$OUT/${name}_sass.csv.gz"
           grep -h "Duration\|Registers Per\|Est. Local\|Compute (SM) Th" "$OUT/$name.txt"
         done ;;
  # the two timers side by side at short and mid lengths (~2 min)
  timing) small=(--mode fwd --dtype fp16 --head-dims 64,128 --seqlens 512,1024,4096 --causal no,yes)
         for timer in wall cupti; do
           python -m fa3_jax.benchmark "${small[@]}" --impls fa3_jax,cudnn,torch_cudnn --timer $timer \
             --tag h100-fwd-timer-$timer 2>&1 | tee -a "$OUT/$stage.log" | tail -14
         done ;;
  # backward CTA order: one head's tiles together vs batch entries together (~4 min)
  backward-order) python benchmarks/backward_gpu_check.py "$OUT" --order 2>&1 | tee -a "$OUT/$stage.log" | tail -26 ;;
  # element masks behind a branch on partial tiles vs everywhere, causal bf16 (~3 min)
  backward-masks) python benchmarks/backward_gpu_check.py "$OUT" --mask-branch 2>&1 | tee -a "$OUT/$stage.log" | tail -26 ;;
  # release deferral, 3 stages, dQ kv tile 64, overlap against the default, bf16 (~4 min)
  backward-variants) python benchmarks/backward_gpu_check.py "$OUT" --variants 2>&1 \
         | tee -a "$OUT/$stage.log" | tail -38 ;;
  # dQ from its own kernel vs added by the dK/dV kernel (fp32 reduce-adds), bf16, D 64/128 (~2 min)
  backward-dq) python benchmarks/backward_gpu_check.py "$OUT" --dq 2>&1 | tee -a "$OUT/$stage.log" | tail -34 ;;
  # the same on masked causal walks (window, documents, ALiBi); causal D128 also with the element
  # masks on every tile instead of behind a branch (~5 min)
  backward-dq-masks) python benchmarks/backward_gpu_check.py "$OUT" --dq-masks 2>&1 \
         | tee -a "$OUT/$stage.log" | tail -34 ;;
  # the benchmark's backward (the jitted pullback timed alone) at the sizes `backward-dq` times (~2 min)
  bwd-timing) python -m fa3_jax.benchmark --mode bwd --dtype bf16 --head-dims 64,128 --seqlens 1024,4096 \
         --causal no,yes --impls fa3_jax,cudnn,torch_cudnn --tag h100-bwd-timing 2>&1 \
         | tee -a "$OUT/$stage.log" | tail -14 ;;
  # ncu --set full with per-SASS stall samples of the fused dK/dV+dQ kernel, causal against dense,
  # D128 4k (the fused path loses 12-22% causal, wins dense) (~1 min)
  ncu-fused) prof=(ncu --clock-control none -k regex:mosaic --set full --import-source no)
         for mask in causal dense; do name=bwd_128_4096_${mask}_atomic
           "${prof[@]}" --launch-skip 2 --launch-count 1 --export "/tmp/$name" -f \
             python benchmarks/ncu_kernels.py bwd 128 4096 $mask atomic > "$OUT/$name.txt" 2>&1
           ncu -i "/tmp/$name.ncu-rep" --page source --csv --print-source sass 2>&1 | gzip > "$OUT/${name}_sass.csv.gz"
           ncu -i "/tmp/$name.ncu-rep" --page details > "$OUT/${name}_details.txt" 2>&1
           grep -h "Duration\|Registers Per\|Compute (SM) Th\|Local Memory\|Spill" "$OUT/${name}_details.txt"
         done ;;
  # ptxas registers and spills of both backward modes, D 64/128, dense and causal (compile only, ~1 min)
  ptxas-backward) MOSAIC_GPU_DUMP_PTXAS=1 python benchmarks/ptxas_backward.py > "$OUT/$stage.log" 2>&1
         grep -i "^== \|spill\|Used [0-9]* registers" "$OUT/$stage.log" | head -60 ;;
  # two or more GPUs: the kernels split per device, then the 1.3b scaling run
  sharded) export NCCL_NVLS_ENABLE=0
         python benchmarks/sharded_gpu_check.py "$OUT/sharded.json" 2>&1 | tee -a "$OUT/$stage.log" | tail -20
         python -m pretrain.benchmark --preset 1.3b --devices 1,2 --attention auto \
           --parallelism data,fsdp --out "$OUT/scaling.json" 2>&1 | grep "^{\|^|" ;;
  # 4 GPUs, ~8 minutes: a demo run stopped at N/2 and resumed in a fresh process must match an
  # uninterrupted one (~1.5 min), then the 1.3b table on 1, 4 and 2 GPUs, data parallel and FSDP,
  # in what is left of 470 s (files rewritten after every variant; 2 GPUs last: 2xH200 has them)
  scaling) export NCCL_NVLS_ENABLE=0
         card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/^NVIDIA //; s/ .*//')
         name="$(nvidia-smi -L | wc -l)x${card,,}"; day=$(date -u +%Y%m%d)
         timeout 180 python benchmarks/resume_gpu_check.py \
           "benchmarks/results/resume_gpu_check_${name}_${day}.json" --mesh_data=2 2>&1 \
           | tee "$OUT/resume.log" | tail -8
         timeout $((470 - SECONDS)) python -m pretrain.benchmark --preset 1.3b --devices 1,4,2 \
           --attention auto --parallelism data,fsdp \
           --out "benchmarks/results/pretrain_1.3b_${day}-${name}-scaling.json" 2>&1 \
           | tee "$OUT/scaling.log" | grep "^{\|^|" ;;
  # PTX of four D64 4k forward kernels, compile only; SASS afterwards with ptxas + nvdisasm (~1 min)
  ptx-forward) MOSAIC_GPU_DUMP_PTX=1 MOSAIC_GPU_DUMP_PTXAS=1 python benchmarks/ptx_forward.py \
           > "$OUT/$stage.log" 2>&1; gzip -f "$OUT/$stage.log" ;;
  # packed documents against the same documents as a batch, per kernel, fwd and bwd (~1 min)
  documents) python benchmarks/documents_breakdown.py --out "$OUT" 2>&1 | tee -a "$OUT/$stage.log" | tail -9 ;;
  # forward in the dynamic order (items from a global counter): GPU checks, then default / dynamic /
  # default on the 16k window and documents and causal D64/D128 (~4 min)
  dynamic) python benchmarks/mosaic_forward_check.py --out "$OUT" --dynamic 2>&1 | tee -a "$OUT/$stage.log" | tail -24 ;;
  # FP8 forward: its GPU tests, then FP8 against bf16 (ours; the peers take no FP8 here), D128 8k
  fp8) timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/fa3_jax/test_fp8.py 2>&1 | tee -a "$OUT/$stage.log" | tail -8
       python -m fa3_jax.benchmark --mode fwd --dtype fp8,bf16 --head-dims 128 --seqlens 8192 --causal no,yes \
         --impls fa3_jax --tag h100-fwd-fp8 2>&1 | tee -a "$OUT/$stage.log" | tail -12 ;;
  # FP8: its GPU tests, config variants against the heuristic's at 8k (D128, 64, 256), then ncu
  # pipe use of the FP8 and bf16 D128 8k dense kernels (tensor, MUFU, FMA, ALU) (~7 min)
  fp8-sweep) timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/fa3_jax/test_fp8.py 2>&1 | tee -a "$OUT/$stage.log" | tail -4
       python benchmarks/mosaic_forward_check.py --out "$OUT" --fp8 2>&1 | tee -a "$OUT/$stage.log" | tail -7
       pipes=sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active
       pipes+=,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active
       pipes+=,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active
       pipes+=,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active
       for dt in fp8 bf16; do
         timeout 120 ncu --clock-control none -k regex:mosaic --launch-skip 2 --launch-count 1 \
           --section SpeedOfLight --section WarpStateStats --metrics "$pipes" \
           python benchmarks/ncu_kernels.py fwd 128 8192 dense $dt > "$OUT/ncu_fwd_128_8192_$dt.txt" 2>&1
       done
       grep -h "Duration\|pct_of_peak\|Stall\|Compute (SM) Th" "$OUT"/ncu_fwd_* ;;
  # FP8: the variants fp8-sweep found ahead, each between two defaults, at 1k-16k (~4 min)
  fp8-confirm) python benchmarks/mosaic_forward_check.py --out "$OUT" --fp8-confirm 2>&1 | tee -a "$OUT/$stage.log" | tail -9 ;;
  # causal D64 fp16/bf16 2k-8k: three consumers against the default (two), cuDNN alongside (~3 min)
  causal-c3) python benchmarks/mosaic_forward_check.py --out "$OUT" --causal-c3 2>&1 | tee -a "$OUT/$stage.log" | tail -7 ;;
  # causal head dim 64 with every peer (fp16, bf16), then FP8 against bf16 at three head dims,
  # 2k / 8k, dense and causal (ours only: the peers take no FP8 here) (~5 min)
  fwd-d64-fp8) timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/fa3_jax/test_fp8.py 2>&1 | tee -a "$OUT/$stage.log" | tail -4
       python -m fa3_jax.benchmark --mode fwd --dtype fp16,bf16 --head-dims 64 --causal yes \
         --seqlens 512,1024,2048,4096,8192,16384 --impls fa3_jax,cudnn,jax_mgpu,torch_cudnn,torch_fa2 \
         --tag h100-fwd-causal-d64 2>&1 | tee -a "$OUT/$stage.log" | tail -14
       python -m fa3_jax.benchmark --mode fwd --dtype fp8,bf16 --head-dims 64,128,256 --seqlens 2048,8192 \
         --causal no,yes --impls fa3_jax --tag h100-fwd-fp8-grid 2>&1 | tee -a "$OUT/$stage.log" | tail -26 ;;
  # FP8 with P in registers: its GPU tests, then against P in SMEM at 8k (and D128 causal 2k) (~4 min)
  fp8-registers) timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/fa3_jax/test_fp8.py \
         -k "test_fp8_kernel_gpu and (2047-False or 4097-False)" 2>&1 | tee -a "$OUT/$stage.log" | tail -4
       python benchmarks/mosaic_forward_check.py --out "$OUT" --fp8-registers 2>&1 | tee -a "$OUT/$stage.log" | tail -7 ;;
  # causal D64 fp16 512-4k: 192/256-key tiles without overlap, and no overlap, against the default,
  # cuDNN alongside (~3 min)
  causal-d64-tiles) python benchmarks/mosaic_forward_check.py --out "$OUT" --causal-d64-tiles 2>&1 | tee -a "$OUT/$stage.log" | tail -6 ;;
  # head dim 64, 256-key tiles without overlap (and with ping-pong; dense also on three consumers
  # and with three stages) against the default, fp16 and bf16, cuDNN alongside: causal 1k-16k
  # (~2 min) or dense 1k / 4k / 16k (~1 min)
  d64-kv256-causal|d64-kv256-dense) python benchmarks/mosaic_forward_check.py --out "$OUT" \
         --d64-kv256 "${stage#d64-kv256-}" 2>&1 | tee -a "$OUT/$stage.log" | tail -12 ;;
  # the forward rows under 0.95 (causal D64 512 / 1k fp16, causal D128 512 bf16): 64-key tiles,
  # ping-pong, against the default, cuDNN alongside (~1 min)
  short-causal) python benchmarks/mosaic_forward_check.py --out "$OUT" --short-causal 2>&1 \
         | tee -a "$OUT/$stage.log" | tail -5 ;;
  # the fused dQ path against the two kernels on plain causal head dim 128 at 2k-8k, 5 rounds
  # (then the same at head dim 64, 1k-4k)
  backward-causal-fused) for mode in --causal-d128-fused --causal-d64-fused; do
         python benchmarks/backward_gpu_check.py "$OUT" $mode --rounds 5 2>&1 \
         | tee -a "$OUT/$stage.log" | tail -14; done ;;
  # ncu --set full of the forward rows under 0.95 (causal D64 512 / 1k, causal D128 512, fp16):
  # ours without the LSE (as inference runs) beside torch's cuDNN kernel: launch shape, registers,
  # shared memory, occupancy, stalls (~3 min); then every kernel name torch launches
  ncu-short-causal) prof=(ncu --clock-control none --set full)
         for run in "64 512" "64 1024" "128 512"; do
           read -r d s <<< "$run"
           "${prof[@]}" -k regex:mosaic --launch-skip 2 --launch-count 1 python benchmarks/ncu_kernels.py \
             fwd $d $s causal fp16 nolse > "$OUT/ours_fwd_${d}_${s}_causal.txt" 2>&1
           "${prof[@]}" -k 'regex:(?i)(sdpa|fmha|flash|fprop|attn)' --launch-skip 2 --launch-count 1 \
             python benchmarks/ncu_torch.py cudnn $d $s causal > "$OUT/cudnn_fwd_${d}_${s}_causal.txt" 2>&1
         done
         ncu --clock-control none --section LaunchStats python benchmarks/ncu_torch.py cudnn 64 512 causal \
           2>&1 | grep -E "^  [a-zA-Z_]" | sort | uniq -c > "$OUT/torch_kernel_names.txt"
         grep -h "==PROF==\|Duration\|Registers Per\|Block Size\|Grid Size\|Shared Memory Config\|Dynamic Shared\|Theoretical Occ\|Achieved Occ\|Compute (SM) Th" \
           "$OUT"/ours_* "$OUT"/cudnn_* | head -80 ;;
  # the same launches' source pages (per-SASS instruction counts and stall samples), ours beside
  # cuDNN's, summarized by benchmarks/sass_profile.py (~2 min)
  ncu-short-source) prof=(ncu --clock-control none --set full --import-source no --launch-skip 2 --launch-count 1)
         for run in "64 512" "64 1024"; do
           read -r d s <<< "$run"
           "${prof[@]}" -k regex:mosaic --export "/tmp/ours_${d}_${s}" -f python benchmarks/ncu_kernels.py \
             fwd $d $s causal fp16 nolse > /dev/null 2>&1
           "${prof[@]}" -k 'regex:(?i)sdpa' --export "/tmp/cudnn_${d}_${s}" -f python benchmarks/ncu_torch.py \
             cudnn $d $s causal > /dev/null 2>&1
           for who in ours cudnn; do
             ncu -i "/tmp/${who}_${d}_${s}.ncu-rep" --page source --csv --print-source sass 2>&1 \
               | gzip > "$OUT/${who}_fwd_${d}_${s}_causal_sass.csv.gz"
           done
         done
         python benchmarks/sass_profile.py "$OUT"/*_sass.csv.gz ;;
  # the consumers taking turns at the softmax's exponentials (cuDNN's schedule): GPU checks
  # with and without overlap, then against the default where the forward trails (~5 min)
  softmax-turns) python benchmarks/mosaic_forward_check.py --out "$OUT" --softmax-turns 2>&1 \
         | tee -a "$OUT/$stage.log" | tail -18 ;;
  # five interleaved rounds: softmax turns (with overlap) at head dim 64 up to 1k, and head
  # dim 128 causal 512 without overlap, against the default, fp16 and bf16 (~3 min)
  softmax-turns-ab) python benchmarks/forward_config_ab.py "$OUT" 64:512:causal,64:1024:causal,64:1024:dense \
         "turns=softmax_turns:True;pingpong:False" 2>&1 | tee -a "$OUT/$stage.log" | tail -7
       mv "$OUT/forward_config_ab.json" "$OUT/forward_config_ab_d64.json"
       python benchmarks/forward_config_ab.py "$OUT" 128:512:causal "noov=overlap:False" \
         "turns_noov=softmax_turns:True;pingpong:False;overlap:False" 2>&1 | tee -a "$OUT/$stage.log" | tail -3 ;;
  # the same around what softmax-turns-ab found: turns on dense head dim 64 at 512 / 2k / 4k,
  # no overlap on head dim 128 causal 1k / 2k and dense 512 (~3 min)
  softmax-turns-ab2) python benchmarks/forward_config_ab.py "$OUT" 64:512:dense,64:2048:dense,64:4096:dense \
         "turns=softmax_turns:True;pingpong:False" 2>&1 | tee -a "$OUT/$stage.log" | tail -7
       mv "$OUT/forward_config_ab.json" "$OUT/forward_config_ab_d64_dense.json"
       python benchmarks/forward_config_ab.py "$OUT" 128:1024:causal,128:2048:causal,128:512:dense \
         "noov=overlap:False" 2>&1 | tee -a "$OUT/$stage.log" | tail -7 ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
# what this stage wrote under benchmarks/results/ (files newer than $OUT/nvidia-smi.txt)
find benchmarks/results -maxdepth 1 -type f -newer "$OUT/nvidia-smi.txt" -exec cp -t "$OUT/" {} +
