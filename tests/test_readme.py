"""The README's Python snippets run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run():
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert snippets, "README has no python snippet"
    for code in snippets:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
    rollout = namespace["rollout"]
    assert tuple(rollout.shape) == (256, 50)
    assert namespace["vec_env"].num_envs == 256 and namespace["sb3_env"].num_envs == 256


def test_readme_setup_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = "python -m pytest -q -n 2"
    assert test_command in text and test_command in ci
    assert "torchwm-rl demo" in text
