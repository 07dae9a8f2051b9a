"""Learners (torch.nn.Module). `make_model(config, task_config)` builds one from configs."""

import torch

from iclab.config import GPTConfig, LinearAttentionConfig


def make_model(model_config, task_config) -> torch.nn.Module:
    """Build the model of `model_config` sized for `task_config` (registry by config class)."""
    if isinstance(model_config, GPTConfig):
        from iclab.models.gpt import GPT

        return GPT(model_config, n_dims=task_config.n_dims, n_points=task_config.n_points)
    if isinstance(model_config, LinearAttentionConfig):
        from iclab.models.linear_attention import LinearAttention

        return LinearAttention(model_config, task_config)
    raise TypeError(f"no model for config {type(model_config).__name__}")
