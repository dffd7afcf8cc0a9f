"""Evaluation stage: metrics on predictions (`metrics`), reports (`report`), the evaluator, robustness, explain.

Import the modules themselves (`from skulens.evaluate.metrics import EvalReport`): this package file stays
empty so that `import skulens` (which binds the function `skulens.evaluate` over it) imports nothing heavy.
"""
