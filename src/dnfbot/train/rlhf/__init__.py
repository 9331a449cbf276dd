"""RLHF on one shared base model: PPO written out (ppo.py) and GRPO/RLOO through TRL (trl.py).

ppo.py      the maths, one PPO step and the training loop, read top to bottom (options: train/options.py)
rollout.py  sampling and scoring: log-probs, reference log-probs, KL estimators, values, rewards
run.py      what every algorithm's run shares: prompts, held-out split, config.json, before/after
            evaluation, reward statistics, summary.json
models.py   policy + value head, frozen reference and reward model as adapters on one base
trl.py      GRPO / RLOO through TRL's trainers, on the same data, reward and report
report.py   `dnfbot report rlhf`: before/after table and curves of any of them
"""

from __future__ import annotations

from typing import Any


def run_rlhf(opts: Any, **kwargs: Any) -> dict:
    """Train with `opts.algo`: PPO (ppo.run_ppo) or GRPO/RLOO (trl.run_trl_rl); same arguments, same outputs."""
    if opts.algo == "ppo":
        from dnfbot.train.rlhf.ppo import run_ppo

        return run_ppo(opts, **kwargs)
    from dnfbot.train.rlhf.trl import run_trl_rl

    return run_trl_rl(opts, **kwargs)
