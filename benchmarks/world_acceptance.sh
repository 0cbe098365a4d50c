#!/usr/bin/env bash
# A world's whole acceptance run (issue 14), each step resumable: finish (or resume) its pre-training, then
# the text-encoder probe, the judge on its own images, the perfect-feedback bound (the acceptance test
# itself, so it comes before the slower learning curve) and the learning curve.
#
#     benchmarks/world_acceptance.sh WORK [pretrain flags...]
#     e.g. nohup benchmarks/world_acceptance.sh work/v6 --vae-from src/t2ialign/world/weights/sd > work/v6.acceptance.log 2>&1 &
#
# Rerun the same command after an interruption: every stage reuses what WORK already holds. The bound
# samples with generate.compile = inductor where the CPU has native bf16 (about 1.5x; docs/throughput.md),
# otherwise uncompiled.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$1"; shift
py=.venv/bin/python
.venv/bin/t2ialign pretrain --out "$work" "$@"
final="$(ls -d "$work"/snapshots/step_* | grep -v '\.tmp$' | sort | tail -n 1)"
compile="$($py -c 'import torch; from t2ialign.generate.images import native_bf16; print("inductor" if native_bf16(torch.device("cpu")) else "no")')"
$py -m benchmarks.text_encoder_probe src/t2ialign/world/weights/sd "$final"
$py -m benchmarks.judge_on_generated "$work.judge" --model "$final" --prompts 300 --per-prompt 4
$py -m benchmarks.perfect_feedback "$work.bound" --model "$final" --compile "$compile"
$py -m benchmarks.learning_curve "$work" --prompts-per-category 25
