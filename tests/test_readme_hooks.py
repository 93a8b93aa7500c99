"""The README's hook table names exactly the hooks of ``hookspecs``, with their parameters."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from aiida_sqla_plugin import hookspecs

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _spec_signatures() -> set[str]:
    """``name(param, ...)`` of every function marked as a hook spec."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {
        f"{name}({', '.join(inspect.signature(function).parameters)})"
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, marker)
    }


def test_readme_hook_table_matches_the_hookspecs() -> None:
    match = re.search(r"<!-- hooks -->\n(.*?)<!-- /hooks -->", README, re.S)
    assert match, "README.md has no <!-- hooks --> ... <!-- /hooks --> block"
    documented = set(re.findall(r"^\| `(aiida_\w+\([^)]*\))` \|", match.group(1), re.M))
    assert documented and documented == _spec_signatures()
