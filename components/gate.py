"""The gate every page calls first: settings check, OIDC sign-in, access code, and who the visitor is.

`require_access()` returns the `Visitor` or stops the page (`st.stop()`). The visitor's id survives a
reload through a signed pass in the URL (`?pass=`; see koe/access.py for why not a cookie), so a
reload or a bookmarked page needs no second code entry, and each visitor keeps seeing their own
conversations. With OIDC sign-in the id is the provider's subject, stable on its own.
"""

from __future__ import annotations

import logging
import secrets
import time

import streamlit as st

from koe.access import (MAX_CODE_CHARS, AccessConfig, Role, Visitor, backoff_keys, client_address, new_visitor_id,
                        role_for_code)
from koe.config import ConfigError

from components import runtime

log = logging.getLogger("koe.app")
PASS_PARAM = "pass"


def require_access() -> Visitor:
    try:
        access = runtime.config().access
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
    subject = _signed_in_subject()
    visitor = st.session_state.get("koe_visitor")
    if visitor is None or (subject is not None and visitor.id != subject):  # new, or another account signed in
        visitor = _visitor_from_pass(subject)
    if visitor is None:
        if access.access_code is not None:
            role = _code_form(st.container(), "This demo needs an access code.", "koe-access")
            if role is None:
                st.stop()
            _remember(access, Visitor(subject or new_visitor_id(), role))
            st.rerun()  # draw the page without the form
        role = "owner" if access.personal and subject is None else "visitor"
        visitor = Visitor(subject or new_visitor_id(), role)
    _remember(access, visitor)
    _offer_owner_sign_in(access, visitor)
    return visitor


def _auth_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no or unreadable secrets file: no sign-in provider
        return False


def _signed_in_subject() -> str | None:
    """The OIDC subject when an [auth] provider is configured (stops the page until signed in)."""
    if not _auth_configured():
        return None
    if st.user.get("is_logged_in"):  # (absent, not False, where no user info exists, e.g. under AppTest)
        st.sidebar.button("Sign out", on_click=st.logout)
        return f"oidc:{st.user.get('sub') or st.user.get('email')}"
    st.info("Sign in to use this demo.")
    if st.button("Sign in", type="primary"):
        try:
            st.login()
        except Exception as exc:  # e.g. an incomplete [auth] section
            st.error(f"Sign-in is not available: {exc}")
    st.stop()


def _visitor_from_pass(subject: str | None) -> Visitor | None:
    token = st.query_params.get(PASS_PARAM)
    if token is None:
        return None
    visitor = runtime.passes().read(token)
    if visitor is None or (subject is not None and visitor.id != subject):
        st.warning("This link's sign-in has expired or is not valid: enter the access code again.")
        del st.query_params[PASS_PARAM]
        return None
    return visitor


def _backoff_keys(visitor_id: str | None) -> tuple[str, ...]:
    """This visitor's back-off keys: their browser session, their pass, their address where known."""
    session = st.session_state.setdefault("koe-gate-key", secrets.token_hex(8))
    hops = runtime.config().access.trusted_proxy_hops
    address = client_address(st.context.ip_address, st.context.headers.get("X-Forwarded-For"), hops)
    return backoff_keys(session, visitor_id, address)


def _code_form(container, prompt: str, key: str, visitor_id: str | None = None) -> Role | None:
    """A code form; the role the code grants once a right one is submitted, else None. Wrong codes
    make this visitor's next tries wait (koe.access.Backoff), and the page says so while they wait."""
    with container.form(key):
        st.write(prompt)
        code = st.text_input("Access code", type="password", max_chars=MAX_CODE_CHARS, key=f"{key}-code")
        submitted = st.form_submit_button("Enter", type="primary")
    if not submitted:
        return None
    code = code.strip()
    if not code:
        container.error("Enter the code you were given.")
        return None
    keys = _backoff_keys(visitor_id)
    backoff = runtime.backoff()
    wait_s = backoff.delay(*keys)
    if wait_s:  # said before the wait, so the visitor sees why nothing happens yet
        log.warning("access code try waits %.1f s (%s)", wait_s, next((k for k in keys if k.startswith("ip:")),
                                                                    "address unknown"))
        container.warning(f"Wrong codes were tried from this browser or network: this try waits {wait_s:.1f} s "
                          "before it is checked.")
        time.sleep(wait_s)  # bounded (Backoff.max_s); this is the script thread, not the event loop
    role = role_for_code(code, runtime.config().access)
    if role is None:
        backoff.failed(*keys)
        log.warning("wrong access code (%s)", next((k for k in keys if k.startswith("ip:")), "address unknown"))
        container.error("That code is not right. Each wrong try makes the next one wait a little longer.")
        return None
    backoff.succeeded(*(k for k in keys if not k.startswith("ip:")))
    return role


def _offer_owner_sign_in(access: AccessConfig, visitor: Visitor) -> None:
    """A visitor may become the owner with the admin code (the main form takes it too)."""
    if access.admin_code is None or visitor.owner:
        return
    with st.sidebar.expander("Owner sign-in"):
        role = _code_form(st.container(), "The owner sees every conversation.", "koe-owner", visitor.id)
    if role == "owner":
        _remember(access, Visitor(visitor.id, "owner"))
        st.rerun()


def _remember(access: AccessConfig, visitor: Visitor) -> None:
    """Keep the visitor for this session and, where codes are in use, a pass for the next reload."""
    if st.session_state.get("koe_visitor") != visitor:
        st.session_state["koe_visitor"] = visitor
        st.session_state.pop("koe_pass", None)
    if not access.personal:
        token = st.session_state.setdefault("koe_pass", runtime.passes().issue(visitor))
        if st.query_params.get(PASS_PARAM) != token:
            st.query_params[PASS_PARAM] = token
    if not access.personal or not visitor.owner:
        st.sidebar.caption("Owner: you see every conversation." if visitor.owner
                           else f"Visitor …{visitor.id[-6:]}: you see only your own conversations.")
