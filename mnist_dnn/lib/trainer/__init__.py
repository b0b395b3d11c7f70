"""The trainer: the loop, its steps and batches, the periodic actions, summaries, diagnostics, strategies.

May import the core and the ground; never serve, experiments or cli.
"""
