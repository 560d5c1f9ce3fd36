"""The allocator tuning applied at import (glibc only) and its opt-out."""

import os
import platform
import subprocess
import sys

import pytest

glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def applied_in_subprocess(env_value):
    env = dict(os.environ)
    env.pop("FERROFORMER_MALLOC_TUNING", None)
    if env_value is not None:
        env["FERROFORMER_MALLOC_TUNING"] = env_value
    code = "import ferroformer._malloc as m, ferroformer; print(m.applied)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.skipif(not glibc, reason="malloc tuning is for glibc on Linux")
def test_tuning_applies_on_import_and_can_be_turned_off():
    assert applied_in_subprocess(None) == "True"
    assert applied_in_subprocess("0") == "False"
    assert applied_in_subprocess("off") == "False"
