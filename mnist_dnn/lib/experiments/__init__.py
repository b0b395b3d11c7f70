"""Many runs at once: sweeps over a grid, Optuna searches and their trials, the reports that rank them.

May import the trainer, the core and the ground; never serve or cli.
"""
