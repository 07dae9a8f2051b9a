"""Learners (torch.nn.Module). `make_model(config, task_config)` builds one from configs."""

import torch

from iclab.families import family_of
from iclab.models.configs import DiagonalAttentionConfig, GPTConfig, LinearAttentionConfig


def make_model(model_config, task_config) -> torch.nn.Module:
    """Build the model of `model_config` sized for `task_config` (by model config class)."""
    family_of(task_config).check_model(model_config, task_config)
    if isinstance(model_config, GPTConfig):
        from iclab.models.gpt import GPT

        return GPT(model_config, n_dims=task_config.n_dims, n_points=task_config.n_points)
    if isinstance(model_config, LinearAttentionConfig):
        from iclab.models.linear_attention import LinearAttention

        return LinearAttention(model_config, task_config)
    if isinstance(model_config, DiagonalAttentionConfig):
        from iclab.models.diagonal_attention import DiagonalAttention

        n_dims, n_heads, n_steps = task_config.n_dims, model_config.n_heads, task_config.n_steps
        return DiagonalAttention(n_dims, n_heads, n_steps, model_config.init_std)
    raise TypeError(f"no model for config {type(model_config).__name__}")
