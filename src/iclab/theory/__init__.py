"""Closed-form expected losses, their exact checks, solvers and minimiser structure reports."""
