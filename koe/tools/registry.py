"""The tool registry: a function's name, description and argument schema come from the function itself."""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from koe.protocol import FunctionTool

log = logging.getLogger("koe.tools")

__all__ = ["REGISTRY", "Tool", "ToolArgumentsError", "ToolContext", "ToolRegistry", "tool"]


class ToolArgumentsError(ValueError):
    """The model's arguments do not fit the function's schema; the message says what, for the model to fix."""


@dataclass(frozen=True)
class ToolContext:
    """Who is asking, given to a tool parameter annotated `ToolContext`.

    `visitor` is the visitor id the store files conversations under (None: the owner, who sees all,
    as on History); `timezone` an IANA name from the visitor's browser (None: unknown); `store` the
    `koe.store.SessionStore`, `conversation_id` the running conversation's id (both None outside the app).
    """

    visitor: str | None = None
    timezone: str | None = None
    store: Any = None
    conversation_id: str | None = None


def _strip_titles(schema: Any) -> Any:
    """pydantic's schema without its generated "title" keys (noise in every prompt)."""
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items()
                if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


@dataclass(frozen=True)
class Tool:
    """One registered function: `call(arguments)` after `parse(arguments_json)`."""

    name: str
    description: str
    function: Callable[..., Any]
    arguments: type[BaseModel]  # the signature as a model: extra keys refused, types checked
    context_parameter: str | None  # the parameter that receives the ToolContext, if any

    @classmethod
    def of(cls, function: Callable[..., Any], name: str | None = None) -> "Tool":
        """Build from a function with typed parameters and a docstring; TypeError if it has neither."""
        name = name or function.__name__
        doc = inspect.getdoc(function)
        if not doc:
            raise TypeError(f"tool {name}: give the function a docstring (the model reads it to decide when to "
                            "call it)")
        hints = typing.get_type_hints(function, include_extras=True)
        fields: dict[str, Any] = {}
        context = None
        for p in inspect.signature(function).parameters.values():
            hint = hints.get(p.name)
            if hint is ToolContext:
                context = p.name
                continue
            if hint is None or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise TypeError(f"tool {name}: parameter {p.name!r} needs a type annotation and a name the model "
                                "can use")
            fields[p.name] = (hint, ... if p.default is p.empty else p.default)
        model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
        return cls(name, doc.split("\n\n")[0].replace("\n", " "), function, model, context)

    def declaration(self) -> FunctionTool:
        """The function tool as the Realtime session declares it (JSON Schema from pydantic)."""
        schema = _strip_titles(self.arguments.model_json_schema())
        schema.setdefault("properties", {})
        return FunctionTool(name=self.name, description=self.description, parameters=schema)

    def parse(self, arguments: str) -> dict[str, Any]:
        """The model's JSON arguments as Python values; ToolArgumentsError naming what is wrong."""
        try:
            data = json.loads(arguments or "{}")
        except ValueError as exc:
            raise ToolArgumentsError(f"the arguments are not valid JSON: {exc}") from None
        try:
            parsed = self.arguments.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                                 for e in exc.errors(include_url=False))
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}") from None
        return {field: getattr(parsed, field) for field in type(parsed).model_fields}

    def call(self, values: dict[str, Any], context: ToolContext) -> Any:
        """Call the function (sync or async: the caller awaits an awaitable result)."""
        if self.context_parameter is not None:
            values = {**values, self.context_parameter: context}
        return self.function(**values)


class ToolRegistry:
    """Tools by name. Thread-safe for reading; registration happens at import time."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._loaded: dict[Path, float] = {}  # module file → mtime it was loaded at
        self.load_errors: dict[str, str] = {}  # module file → why it did not load

    def register(self, function: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
        """Register `function` (usable bare, `@tool`, or as `@tool(name="...")`); returns it unchanged.
        A name registered again (a reloaded module) is replaced."""
        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            entry = Tool.of(fn, name)
            FunctionTool(name=entry.name)  # the name must be one OpenAI accepts
            self._tools[entry.name] = entry
            return fn
        return add(function) if function is not None else add

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def declarations(self, names: list[str] | None = None) -> list[FunctionTool]:
        """Declarations of the named tools (all when None), for `session.tools`; unknown names are skipped."""
        return [self._tools[n].declaration() for n in (self.names() if names is None else names) if n in self._tools]

    def load_folder(self, folder: str | Path) -> list[str]:
        """Import every `*.py` in `folder` (not `_*.py`) whose file is new or changed since it was loaded:
        their `@tool` functions register here. A module that fails is logged and listed in
        `load_errors`, the others still load. Returns the names of the modules loaded now."""
        loaded = []
        for path in sorted(Path(folder).glob("*.py")):
            mtime = path.stat().st_mtime
            if path.name.startswith("_") or self._loaded.get(path) == mtime:
                continue
            self._loaded[path] = mtime
            module_name = f"koe_user_tools.{path.stem}"
            try:
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            except Exception as exc:  # a person's module: say what failed, keep the app up
                log.warning("tool module %s did not load: %s", path, exc)
                self.load_errors[str(path)] = f"{type(exc).__name__}: {exc}"
                continue
            self.load_errors.pop(str(path), None)
            loaded.append(path.stem)
        return loaded


REGISTRY = ToolRegistry()


def tool(function: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Register a function in the default registry: `@tool` or `@tool(name="...")`."""
    return REGISTRY.register(function, name=name)
