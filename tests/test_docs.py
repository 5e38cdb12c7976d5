"""The plugin author's guide documents every hook, and its example plugin really works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from convlens import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "convlens_spec"))


def writing_a_plugin_section(path: Path) -> str:
    """The text under the "Writing a plugin" heading of ``path``, up to the next heading of its level or above."""
    assert path.is_file(), f"{path} is missing; it must include the 'Writing a plugin' guide"
    text = path.read_text(encoding="utf-8")
    start = re.search(r"^(#+) Writing a plugin\s*$", text, re.M)
    assert start, f'{path.name} has no "Writing a plugin" heading'
    level = len(start.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, start.end())
    return text[start.end() : end.start() if end else len(text)]


def test_hookspecs_are_found():
    assert HOOKS == ["register_datasets", "register_methods", "register_sample_images"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_in_the_readme(hook):
    section = writing_a_plugin_section(ROOT / "README.md")
    assert re.search(rf"^### {hook}\s*$", section, re.M), (
        f"README.md: no '### {hook}' under 'Writing a plugin'"
    )


def test_the_guides_example_plugin_runs_with_the_testing_fixtures(convlens_run, tiny_model, sample_image):
    guide = writing_a_plugin_section(ROOT / "README.md")
    code = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    (method,) = namespace["register_methods"]()
    events = convlens_run(method, tiny_model, sample_image, layer="conv2", k=3)
    assert len(events[-1].data["channels"]) == 3
