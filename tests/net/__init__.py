"""Tests across hosts (issue 12): network namespaces as hosts, loss, the impairment relay, ``ombm bench net``.

A package, so that its ``conftest`` is ``net.conftest`` and never shadows ``tests/conftest.py``
(other tests import helpers from it by the name ``conftest``).
"""
