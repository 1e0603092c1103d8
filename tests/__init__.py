"""
hfendpoint's test suite, run with trial.
"""

from hypothesis import settings

# Deterministic property tests, as Twisted runs them: the same examples on
# every run, and no deadline on a shared, noisy machine.
settings.register_profile("hfendpoint", derandomize=True, deadline=None, max_examples=60)
settings.load_profile("hfendpoint")
