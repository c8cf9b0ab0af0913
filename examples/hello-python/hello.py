"""A tiny module for trying out boxdelegate."""

import six


def hello(name: str) -> str:
    """Return a friendly greeting for NAME."""
    if not isinstance(name, six.string_types):
        raise TypeError("name must be a string")
    return f"Hello, {name}!"


if __name__ == "__main__":
    print(hello("world"))
