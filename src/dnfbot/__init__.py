"""dnfbot: a Korean game-knowledge chatbot toolkit (corpus → RAG → synthesis → SFT/RM/PPO → serving)."""

__version__ = "0.1.0"

NO_INFO_ANSWER = "제가 알고 있는 정보가 없습니다."
