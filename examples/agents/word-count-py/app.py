"""Example agent in Python: counts the words, lines and characters of a text (the same
answer as the Rust `word-count`)."""

from braid_sdk import agent, Context, Error, log


@agent
def run(ctx: Context, input: dict) -> dict:
    text = input.get("text") if isinstance(input, dict) else None
    if not isinstance(text, str):
        raise Error.fatal("the input needs a string field 'text'")
    log.info(f"counting {len(text)} characters")
    return {"words": len(text.split()), "lines": len(text.splitlines()), "chars": len(text)}
