"""Reproductions of the papers' claims: each module trains, analyses and writes a Markdown report."""
