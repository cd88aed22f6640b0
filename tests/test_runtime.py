"""A quiet terminal (issue 12): TensorFlow's and Keras' own output never reaches the user unless asked
for (``DOCSORT_LOG=debug`` / ``docsort --verbose``); docsort's own notices do. And the machine record
that manifests carry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .test_wheel import NOISE

# The fast tier (pytest -m "not slow") leaves this file out: it imports TensorFlow in fresh subprocesses.
pytestmark = pytest.mark.slow

NATIVE = """
import os, sys
from docsort.core.runtime import quiet_native_stderr
with quiet_native_stderr():
    os.write(2, b"native noise\\n")
print("docsort notice", file=sys.stderr)
try:
    with quiet_native_stderr():
        os.write(2, b"why it failed\\n")
        raise RuntimeError("import failed")
except RuntimeError:
    pass
"""


def _python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "DOCSORT_LOG")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**clean, **env})


def test_native_writes_to_stderr_are_silenced_and_replayed_when_the_block_fails():
    res = _python(NATIVE)
    assert res.returncode == 0, res.stderr
    # Swallowed; docsort's own line kept; what a failing block wrote is shown, not lost.
    assert res.stderr == "docsort notice\nwhy it failed\n"
    loud = _python(NATIVE, DOCSORT_LOG="debug")
    assert loud.stderr == "native noise\ndocsort notice\nwhy it failed\n"


def test_importing_the_features_stage_prints_nothing_and_sets_the_log_level_first():
    res = _python("import os, docsort.core.features, docsort.core.clustering; import umap; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "3"
    for word in NOISE:
        assert word not in res.stderr, res.stderr
    assert res.stderr == ""
    # Asked for, TensorFlow's log comes through as TensorFlow writes it (what it says varies by machine).
    loud = _python("import docsort.core.features", DOCSORT_LOG="debug")
    assert loud.returncode == 0 and loud.stderr.strip(), "DOCSORT_LOG=debug should let TensorFlow's import log through"


def test_the_imagenet_fetch_prints_no_download_line(monkeypatch, tmp_path, capsys):
    import keras

    from docsort.core import weights

    def offline_get_file(*args, **kwargs):
        print("Downloading data from https://example.invalid/weights.h5")  # what Keras prints first
        raise OSError("no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("DOCSORT_LOG", raising=False)
    monkeypatch.setattr(keras.utils, "get_file", offline_get_file)
    with pytest.raises(weights.WeightsError, match="cannot fetch"):
        weights._imagenet(allow_download=True)
    assert capsys.readouterr().out == ""


def test_machine_record_names_the_cpu_and_its_flags():
    from docsort.core.runtime import CPU_FLAGS_OF_INTEREST, machine

    m = machine()
    assert set(m) == {"cpu", "cpu_flags", "cores", "arch", "os"}
    assert m["cpu"] and m["cores"] == os.cpu_count() and set(m["cpu_flags"]) <= set(CPU_FLAGS_OF_INTEREST)
    if os.path.exists("/proc/cpuinfo"):
        flags = set()
        for line in open("/proc/cpuinfo"):
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
        assert m["cpu_flags"] == [f for f in CPU_FLAGS_OF_INTEREST if f in flags]
