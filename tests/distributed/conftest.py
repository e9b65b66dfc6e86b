"""One local Ray cluster for the whole test session: 2 CPUs, bound to 127.0.0.1, object store capped."""
from __future__ import annotations

import os

import pytest

# Before Ray is first imported: the local node binds 127.0.0.1, not the machine's external interface.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's local Ray (the distributors use an initialised Ray as it is and leave it running)."""
    import ray

    ray.init(num_cpus=2, object_store_memory=128 << 20, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    ray.shutdown()
