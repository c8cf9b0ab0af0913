"""A stand-in for a coding agent: implements the add-goodbye unit deterministically.

boxdelegate gives it the unit's task on stdin, runs it in /work inside a throwaway container,
and keeps only the changes the unit's scope allows.
"""

import os
import sys

task = sys.stdin.read()
print(f"unit {os.environ.get('BOXDELEGATE_UNIT_ID')}: {len(task)} bytes of task received")

with open("hello.py", "a", encoding="utf-8") as f:
    f.write(
        '\n\ndef goodbye(name: str) -> str:\n'
        '    """Return a polite farewell for NAME."""\n'
        '    return f"Goodbye, {name}!"\n'
    )

with open("test_hello.py", "a", encoding="utf-8") as f:
    f.write(
        "\n\ndef test_goodbye():\n"
        "    from hello import goodbye\n\n"
        '    assert goodbye("world") == "Goodbye, world!"\n'
    )
print("added goodbye() and its test")
