"""The ``hosts`` fixture: fresh network namespaces for one test, removed whatever happens.

``hosts`` is a :class:`ombm.cli.bench.netns.Network` (``a, b = hosts``): two hosts on one veth
pair, or ``@pytest.mark.hosts(3)`` for three on a bridge. Skipped, with the reason, without
root or ``ip``. Once per session the namespaces and host folders of earlier runs whose pytest
process has died (``ombm-t<pid>-*``) are removed first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .netns import Network, missing, sweep


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hosts(count): how many hosts the hosts fixture makes (default 2)")


@pytest.fixture(scope="session", autouse=True)
def _stale_hosts_swept() -> None:
    if missing() is None:
        sweep()


@pytest.fixture
def hosts(request: pytest.FixtureRequest) -> Iterator[Network]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    marker = request.node.get_closest_marker("hosts")
    network = Network.create(marker.args[0] if marker else 2, tag="t")
    try:
        yield network
    finally:
        network.close()
