"""Shared test helpers (tests/ is on the pytest pythonpath)."""


def tiny_overrides(**extra) -> list[str]:
    """Overrides for a tiny, fast regression run (D = 4, K = 8)."""
    values = dict(
        n_dims=4,
        n_points=8,
        n_layers=1,
        n_embd=16,
        n_heads=2,
        steps=40,
        batch_size=16,
        log_every=10,
        eval_every=20,
        eval_sequences=64,
        checkpoint_every=20,
        n_sequences=128,
        device='"cpu"',
    )
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def snapshot(root) -> dict[str, str]:
    """sha256 of every file under root, by relative path: to assert that nothing changed."""
    import hashlib
    from pathlib import Path

    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
