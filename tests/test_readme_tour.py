"""The README's five-minute tour runs as written and prints what the README says it prints."""

import os
import re
import subprocess
import sys

from tests.helpers import ROOT, cli_env

NUMBER = r"-?[0-9][0-9.e+-]*"


def _tour() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    start = text.index("## A five-minute tour")
    begin = text.index("```bash\n", start) + len("```bash\n")
    return text[begin : text.index("```", begin)]


def _line_pattern(expected: str) -> str:
    """A printed line as the README shows it: numbers may differ, ``...`` stands for more."""
    parts = re.split(f"({NUMBER}|\\.\\.\\.)", expected.strip())
    out = []
    for part in parts:
        if part == "...":
            out.append(".*")
        elif re.fullmatch(NUMBER, part or "x"):
            out.append(NUMBER)
        else:
            out.append(re.escape(part))
    return "".join(out)


def _check_json_line(expected: str, printed: str) -> None:
    """Every ``"key": value`` the README shows is in the JSON line printed (numbers may differ)."""
    pairs = re.findall(r'"(\w+)": ("[^"]*"|\[\.\.\.\]|' + NUMBER + ")", expected)
    assert pairs, expected
    for key, value in pairs:
        if value == "[...]":
            want = re.escape(f'"{key}": [')
        elif value.startswith('"'):
            want = re.escape(f'"{key}": {value}')
        else:
            want = re.escape(f'"{key}": ') + NUMBER
        assert re.search(want, printed), (key, value, printed[:400])


def test_the_readme_tour_runs_and_prints_what_it_shows(tmp_path):
    shown_tour = _tour()
    tour = shown_tour.replace("/tmp/", f"{tmp_path}/")
    env = cli_env()
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    proc = subprocess.run(["bash", "-e", "-c", tour], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = (proc.stdout + proc.stderr).replace(str(tmp_path) + "/", "/tmp/")
    expected = [line.split("#   ", 1)[1] for line in shown_tour.splitlines() if "#   " in line]
    assert len(expected) >= 8
    for line in expected:
        shown = line.split("  (", 1)[0].strip()  # a trailing remark in parentheses is not printed
        if shown.startswith("{"):
            json_lines = [p for p in printed.splitlines() if p.startswith("{")]
            assert any(_matches_json(shown, p) for p in json_lines), (shown, json_lines)
        else:
            assert re.search(_line_pattern(shown), printed), (shown, printed[-2000:])


def _matches_json(expected: str, printed: str) -> bool:
    try:
        _check_json_line(expected, printed)
    except AssertionError:
        return False
    return True
