"""The CI rule of tests/conftest.py: with CI=true a skip fails the run unless the test is marked cuda; without CI a
skip stays a skip. Runs pytest on a small test file next to a copy of the conftest."""
import os
import shutil
import subprocess
import sys

from conftest import REPO

TESTS = '''
import pytest

def test_passes():
    pass

def test_skips_at_run_time():
    pytest.skip("chromium not installed")

@pytest.mark.skipif(True, reason="a skipif marker")
def test_skipif_marker():
    pass

@pytest.mark.cuda
def test_cuda_skip():
    pytest.skip("needs a CUDA GPU")
'''


def run_pytest(tmp_path, ci):
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_rule.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"RIB_SHARED_DATA": "none", **({"CI": "true"} if ci else {})})
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout


def test_under_ci_only_cuda_tests_may_skip(tmp_path):
    rc, text = run_pytest(tmp_path, ci=True)
    assert rc == 1, text
    assert "FAILED test_rule.py::test_skips_at_run_time" in text
    assert "ERROR test_rule.py::test_skipif_marker" in text  # a skipif skips in set-up: reported as an error
    assert "skipped under CI=true" in text and "chromium not installed" in text
    assert "SKIPPED [1] test_rule.py" in text and "needs a CUDA GPU" in text
    assert "PASSED test_rule.py::test_passes" in text


def test_without_ci_skips_stay_skips(tmp_path):
    rc, text = run_pytest(tmp_path, ci=False)
    assert rc == 0, text
    assert "1 passed, 3 skipped" in text
