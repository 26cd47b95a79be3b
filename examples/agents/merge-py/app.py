"""Example agent in Python: merges the outputs of a parallel block into one report
(`{"parts": {...}}` in, `{"parts": N, "report": "..."}` out)."""

import json

from braid_sdk import agent, Context, Error


@agent
def run(ctx: Context, input: dict) -> dict:
    parts = input.get("parts") if isinstance(input, dict) else None
    if not isinstance(parts, dict):
        raise Error.fatal("the input needs an object field 'parts'")
    lines = [f"{name}: {json.dumps(value, sort_keys=True)}" for name, value in sorted(parts.items())]
    return {"parts": len(parts), "report": "\n".join(lines)}
