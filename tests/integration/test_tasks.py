import pytest
import cellfleet as ray

pytestmark = pytest.mark.integration


@ray.remote
def f(x):
    return x + 1


def test_smoke(cluster):
    assert ray.get(f.remote(1), timeout=10) == 2
