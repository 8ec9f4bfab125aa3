"""The benchmark suites: one file names them, one runner runs them and refuses others."""

import os
import subprocess
import sys

from tests.helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import run as bench_run

EXPECTED = {"ceilings", "decode", "host_input", "end_to_end", "long_run", "pretrain", "pretrain_scaling", "gpu_tests"}


def test_every_suite_names_a_script_that_exists_and_the_required_suites_are_there():
    suites = bench_run.load_suites()
    assert set(suites) >= EXPECTED
    for name, suite in suites.items():
        assert suite["machine"] in ("cpu", "gpu") and suite["about"], name
        if "script" in suite:
            assert os.path.isfile(os.path.join(ROOT, "benchmarks", suite["script"])), name
        for key, bound in suite.get("goals", {}).items():
            assert set(bound) <= {"min", "max"} and bound, (name, key)


def test_an_unknown_suite_is_refused_and_nothing_runs(tmp_path):
    results = tmp_path / "results"
    runner = os.path.join(ROOT, "benchmarks", "run.py")
    proc = subprocess.run(
        [sys.executable, runner, "decode", "final12", "--results", str(results)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown suite(s): final12" in proc.stderr
    assert not results.exists()


def test_goals_are_checked_against_the_results(tmp_path):
    (tmp_path / "a.json").write_text('{"x_clips_per_s": 900, "growth": 1.2}')
    goals = {"x_clips_per_s": {"min": 1000}, "growth": {"max": 1.5}, "absent": {"min": 1}}
    missed = bench_run.check_goals("s", goals, str(tmp_path), since=0.0)
    assert missed == ["s: x_clips_per_s = 900 below its goal 1000", "s: absent not in its results"]


def test_no_raw_result_is_tracked_in_git():
    proc = subprocess.run(["git", "ls-files", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 or proc.stdout.strip() == ""


def test_every_figure_in_the_performance_pages_names_its_commit_and_suite():
    import pathlib
    import re

    suites = set(bench_run.load_suites())
    for page in ("performance.md", "performance-history.md"):
        rows = [
            line
            for line in pathlib.Path(ROOT, "docs", page).read_text(encoding="utf-8").splitlines()
            if line.startswith("|")
            and not line.startswith("| ---")
            and not line.startswith("| figure")
            and not line.startswith("| lever")
        ]
        assert rows, page
        for row in rows:
            assert re.search(r"\| [0-9a-f]{7} \|", row), (page, row)
        if page == "performance.md":
            for row in rows:
                named = re.findall(r"`([a-z_]+)` \|$", row.strip())
                assert named and named[0] in suites, row
