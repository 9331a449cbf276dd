#!/usr/bin/env bash
# The whole training pipeline, offline, on a tiny random-init model of the real architecture:
#   corpus → synth qa (extractive) → data sft/rm/ppo → train sft → train rm → train ppo → report → ask --backend hf
# Same commands as on a real model (swap --model for a local polyglot-ko-1.3b / EEVE folder and drop the tiny sizes).
# Usage: bash scripts/pipeline_tiny.sh [OUT_DIR]   (default runs/pipeline-tiny; needs the train extra)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/pipeline-tiny}"
SHARED="${DNFBOT_SHARED:-../shared}"
CORPUS="${DNFBOT_CORPUS:-$SHARED/corpus/dnf_homepage_tip.json}"
TOK="${DNFBOT_TOKENIZER:-$SHARED/tokenizers/polyglot-ko}"
DNF="${DNFBOT:-.venv/bin/dnfbot}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "1/8 synthesise question + long/medium/short answers (offline extractive back end)"
"$DNF" synth qa --corpus "$CORPUS" --out "$OUT/qa.jsonl" --backend extractive --limit 120 --json
step "2/8 datasets: SFT, reward-model pairs, PPO prompts"
"$DNF" data sft --qa "$OUT/qa.jsonl" --out "$OUT/sft.jsonl" --json
"$DNF" data rm --qa "$OUT/qa.jsonl" --out "$OUT/rm.jsonl" --json
PPO_IMPORT=()  # general Korean prompts mixed in, as the original did
[ -f "$SHARED/prompts/kochatgpt_3_PPO.json" ] && PPO_IMPORT=(--import "$SHARED/prompts/kochatgpt_3_PPO.json" --import-ratio 3)
"$DNF" data ppo --qa "$OUT/qa.jsonl" --out "$OUT/ppo.jsonl" "${PPO_IMPORT[@]}" --limit 16 --json
step "3/8 a tiny random-init GPTNeoX (polyglot-ko architecture) with the real tokenizer"
"$DNF" model init-tiny --arch gpt-neox --tokenizer "$TOK" --out "$OUT/base" --json
step "4/8 SFT (LoRA)"
"$DNF" train sft --model "$OUT/base" --data "$OUT/sft.jsonl" --out "$OUT/sft" --max-steps 40 --lr 3e-3 --json
step "5/8 reward model (1-label classifier + LoRA)"
"$DNF" train rm --model "$OUT/base" --data "$OUT/rm.jsonl" --out "$OUT/rm" --max-steps 40 --lr 1e-3 --json
step "6/8 PPO against the reward model"
"$DNF" train ppo --model "$OUT/base" --sft-adapter "$OUT/sft" --reward-adapter "$OUT/rm" \
  --prompts "$OUT/ppo.jsonl" --out "$OUT/ppo" --steps 3 --batch-size 4 --mini-batch-size 2 --micro-batch-size 2 \
  --max-new-tokens 24 --eval-prompts 4 --lr 1e-3 --json
step "7/8 RLHF report (table + PNG curves)"
"$DNF" report rlhf --run "$OUT/ppo" --json
step "8/8 answer from the guides with the SFT model behind the retrieval gate"
"$DNF" index build --corpus "$CORPUS" --index-dir "$OUT/index" --json
"$DNF" ask "바칼 레이드 입장 조건 알려줘" --index-dir "$OUT/index" --backend hf --model "$OUT/base" \
  --adapter "$OUT/sft" --json
echo "done: $OUT" >&2
