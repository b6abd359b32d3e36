"""The conformance suite shipped with the package: ``python -m pytest --pyargs hypermixer``.

It checks, on the machine it runs on, that every compiled layer agrees with its NumPy
reference (see ``hypermixer.check`` for the layer registry both use). Tests that need the
source tree, a compiler or a long run stay in the repository's top-level ``tests/``.
"""
