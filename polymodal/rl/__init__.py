"""Reinforcement learning on multimodal observations: polymodal encoders and fusions as a Stable-Baselines3
features extractor (`MultimodalExtractor`), env wrappers for Text observations, and DQN/PPO training with a
policy folder of safetensors + JSON (`train`, `Agent.load`). Needs the `rl` extra (stable-baselines3, gymnasium,
minigrid)."""

from polymodal.rl.agent import Agent, AgentConfig, RLSetupError, check_env_id, make_env, run_episodes, train
from polymodal.rl.extractor import MultimodalExtractor, ObservationError, plan_inputs, vocabulary_from_model
from polymodal.rl.wrappers import AsDict, BagOfWords, DropKeys, TextTokens, Vocabulary

__all__ = [
    "Agent",
    "AgentConfig",
    "AsDict",
    "BagOfWords",
    "DropKeys",
    "MultimodalExtractor",
    "ObservationError",
    "RLSetupError",
    "TextTokens",
    "Vocabulary",
    "check_env_id",
    "make_env",
    "plan_inputs",
    "run_episodes",
    "train",
    "vocabulary_from_model",
]
