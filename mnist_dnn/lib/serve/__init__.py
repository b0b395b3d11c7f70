"""Serving exported models: the classifier (with its readers of each format), the REST server and its versions.

May import the core and the ground; never the trainer, experiments or cli.
"""
