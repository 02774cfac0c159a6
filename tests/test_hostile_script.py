"""scripts/hostile.py: how it judges a case, on commands written here (no torch in them)."""

import sys

from conftest import load_script


def command(body: str, out) -> list[str]:
    return [sys.executable, "-c", f"import sys, pathlib\nout = pathlib.Path({str(out)!r})\n"
            + body, "--out", str(out)]


def test_a_case_passes_on_a_clean_refusal_or_run_and_fails_otherwise(tmp_path):
    hostile = load_script("scripts/hostile.py")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text('{"old": 1}')
    refuse = "print('error: --x 3: too big', file=sys.stderr); sys.exit(2)"
    cases = {
        refuse: None,
        "(out / 'a.json').write_text('{\"new\": 2}')": None,
        "raise ValueError('x')": "traceback",
        refuse.replace("print(", "print('error: one', file=sys.stderr); print("):
            "not one error line",
        "(out / 'b.json').write_text('{}'); " + refuse: f"{out} changed on refusal",
        "sys.exit(1)": "exit 1",
        "(out / 'a.json').write_text('{\"ev\": NaN}')": "NaN in a.json",
    }
    for body, why in cases.items():
        assert hostile.judge(command(body, out), None, tmp_path)[0] == why, body
        for extra in set(out.iterdir()) - {out / "a.json"}:
            extra.unlink()
        (out / "a.json").write_text('{"old": 1}')
