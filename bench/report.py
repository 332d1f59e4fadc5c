from __future__ import annotations
import json
from typing import Any
def render(results: dict[str, Any], profile: dict[str, Any] | None) -> str:
    return "```\n" + json.dumps(results["summary"], indent=1) + "\n```\n"
