"""Serving exported models: the classifier, LiteRT's interpreter, the REST server and its versions.

May import the core and the ground; never the trainer, experiments or cli.
"""
