"""Function tools in the UI: which ones the session offers (sidebar), and running them for a call."""

from __future__ import annotations

import streamlit as st

from koe.access import Visitor
from koe.protocol import FunctionTool, SessionSettings
from koe.relay import Relay
from koe.store import SessionStore
from koe.tool_runner import ToolRunner, stored_in
from koe.tools import ToolContext, ToolRegistry, default_registry

from components import runtime


def registry() -> ToolRegistry:
    """The built-ins plus the modules in KOE_TOOLS_DIR (a changed or new module is loaded on the next rerun)."""
    folder = runtime.config().backend.tools_dir
    return default_registry(str(folder) if folder else None)


def tool_picker(base: SessionSettings) -> list:
    """In the sidebar, before the settings form: the tools to offer, as the session's `tools` (other kinds,
    such as MCP servers set elsewhere, are kept); like every setting, applied by Apply. Outside the form
    because a multiselect inside one commits its choice only as it loses the focus, and the click on Apply
    that takes the focus away was lost to that redraw."""
    tools = registry()
    offered = [t.name for t in base.tools if isinstance(t, FunctionTool) and tools.get(t.name)]
    chosen = st.sidebar.multiselect("Tools the AI may use", tools.names(), default=offered, key="tools",
                            format_func=lambda name: f"{name}: {tools.get(name).description}",
                            help="Functions that run on this server when the AI calls them: the time, arithmetic, "
                                 "a search of your past conversations, and your own modules in KOE_TOOLS_DIR.")
    for path, why in tools.load_errors.items():
        st.sidebar.warning(f"Tool module {path} did not load: {why}")
    return [*tools.declarations(chosen), *(t for t in base.tools if not isinstance(t, FunctionTool))]


def attach(relay: Relay, store: SessionStore, conversation_id: str, visitor: Visitor) -> None:
    """Run the AI's function calls for this conversation on the relay's loop; each call is stored
    (a `koe.tool_call` event, and its duration on the call's transcript row)."""
    context = ToolContext(visitor=None if visitor.owner else visitor.id, timezone=st.context.timezone,
                          store=store, conversation_id=conversation_id)

    relay.use_tools(ToolRunner(registry(), context, timeout_s=runtime.config().backend.tool_timeout_s,
                               on_call=stored_in(store, conversation_id)))
