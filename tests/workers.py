"""
Tiny worker programs written into a test's temporary directory.
"""

import os
import stat
import sys


def write_worker(testcase, body, name="worker"):
    """
    An executable Python worker script with C{body} as its code.
    """
    path = os.path.join(testcase.mktemp())
    os.makedirs(path)
    script = os.path.join(path, name)
    with open(script, "w") as f:
        f.write(f"#!{sys.executable}\n{body}")
    os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR)
    return script


def write_shell_worker(testcase, body):
    path = testcase.mktemp()
    os.makedirs(path)
    script = os.path.join(path, "worker.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(script, 0o755)
    return script
