"""Function tools the AI may call: plain Python functions registered in one place.

    from koe.tools import tool

    @tool
    def shout(text: Annotated[str, Field(description="what to shout")]) -> str:
        \"\"\"Say `text` in capitals.\"\"\"
        return text.upper()

The docstring's first paragraph is the description the model reads; the JSON Schema of the
arguments is pydantic's, derived from the signature. A parameter annotated `ToolContext` is not an
argument: it receives who is asking (visitor, time zone, the session store). Built-ins live in
`koe.tools.builtin`; a person adds their own by dropping a module into `KOE_TOOLS_DIR`.
"""

from koe.tools.registry import REGISTRY, Tool, ToolArgumentsError, ToolContext, ToolRegistry, tool

__all__ = ["REGISTRY", "Tool", "ToolArgumentsError", "ToolContext", "ToolRegistry", "tool", "default_registry"]


def default_registry(tools_dir: str | None = None) -> ToolRegistry:
    """The registry with the built-ins, plus the modules in `tools_dir` (once each; see load_folder)."""
    import koe.tools.builtin  # noqa: F401  (registers on import)

    if tools_dir:
        REGISTRY.load_folder(tools_dir)
    return REGISTRY
