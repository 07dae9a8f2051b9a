"""Tasks: what a model sees. Every sampler is a pure function of its seeds and the step.

A task object offers `train_batch(seed, step, batch_size)` (a tuple of tensors, the model's inputs),
`loss(model, batch)` (the scalar training loss), `eval_batch(distribution, seed, index, size)`
(named evaluation distributions; see each task family) and `prediction_batch(...)` (the same chunk
as (predictor arguments, target), for iclab.evaluation). iclab.families.make_task builds the task
of a config.
"""
