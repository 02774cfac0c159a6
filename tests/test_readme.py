import subprocess
import sys


def test_readme_starts_with_the_two_commands(root):
    first = (root / "README.md").read_text().splitlines()[:5]
    text = "\n".join(first)
    assert "python main.py" in text and "pytest" in text


def test_readme_results_are_generated_from_the_committed_json(root):
    done = subprocess.run([sys.executable, "scripts/readme_results.py", "--check"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_api_example_runs(root, monkeypatch, capsys):
    text = (root / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(root)
    exec(compile(code, "README example", "exec"), {})
    assert capsys.readouterr().out.startswith("rank ")
