import pytest

from hello import hello


def test_hello():
    assert hello("world") == "Hello, world!"


def test_hello_rejects_non_strings():
    with pytest.raises(TypeError):
        hello(42)
