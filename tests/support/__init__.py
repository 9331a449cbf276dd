"""Test doubles: a fake OpenAI-compatible server lives in dnfbot.bench.fake_openai (bench synth needs it); here
the PPO toy task."""
