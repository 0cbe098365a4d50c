#!/usr/bin/env bash
# A world's whole acceptance run (issue 14), each step resumable: finish (or resume) its pre-training, then
# the text-encoder probe, the learning curve, the judge on its own images and the perfect-feedback bound.
#
#     benchmarks/world_acceptance.sh WORK [pretrain flags...]
#     e.g. nohup benchmarks/world_acceptance.sh work/v6 --vae-from src/t2ialign/world/weights/sd > work/v6.acceptance.log 2>&1 &
#
# Rerun the same command after an interruption: every stage reuses what WORK already holds.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$1"; shift
py=.venv/bin/python
.venv/bin/t2ialign pretrain --out "$work" "$@"
final="$(ls -d "$work"/snapshots/step_* | grep -v '\.tmp$' | sort | tail -n 1)"
$py -m benchmarks.text_encoder_probe src/t2ialign/world/weights/sd "$final"
$py -m benchmarks.learning_curve "$work" --prompts-per-category 25
$py -m benchmarks.judge_on_generated "$work.judge" --model "$final" --prompts 300 --per-prompt 4
$py -m benchmarks.perfect_feedback "$work.bound" --model "$final"
