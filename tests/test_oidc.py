"""Sign-in with Streamlit's `st.login` in a real browser, against an OIDC provider on loopback.

The app runs with an `[auth]` section pointing at `oidc_provider.OIDCProvider` (the authorization code
flow: Authlib fetches the metadata, swaps the code for an RS256 id_token and checks it against the
provider's JWKS and the nonce). Without signing in no page opens; signed in, the visitor is
`oidc:<subject>` and sees only that account's conversations; Sign out (through the provider's
end-session endpoint) asks to sign in again.
"""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from koe.store import SessionStore

from oidc_provider import OIDCProvider
from test_browser import WEBRTC_IFRAME, chromium, serve, write_wav
from test_browser import pytestmark  # noqa: F401  (skips the module without Chromium)
from test_browser_demo import assert_every_page_gated
from test_pages import said

CLIENT_ID, CLIENT_SECRET = "koe-demo", secrets.token_urlsafe(16)
WORDS = {"alice": "alice talks about apples", "bob": "bob talks about bananas"}
PROMPT = "Sign in to use this demo."


@pytest.fixture(scope="module")
def provider():
    provider = OIDCProvider(CLIENT_ID, CLIENT_SECRET).start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def app(tmp_path_factory, provider):
    """The app with sign-in (its own secrets file only) and one conversation of each account on disk."""
    data = tmp_path_factory.mktemp("oidc")
    store = SessionStore(data / "koe.sqlite3")
    for sub, words in WORDS.items():
        said(store, f"oidc:{sub}", words)
    store.close()
    secrets_file = data / "secrets.toml"  # Streamlit puts its own port in for {port}
    secrets_file.write_text(f"""[auth]
redirect_uri = "http://localhost:{{port}}/oauth2callback"
cookie_secret = "{secrets.token_hex(32)}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
server_metadata_url = "{provider.metadata_url}"
""")
    # An OpenAI key (never used: nothing is started) makes OpenAI the sidebar's default backend, so the
    # main page does not load the local models.
    yield from serve(data, STREAMLIT_SECRETS_FILES=str(secrets_file), OPENAI_API_KEY="sk-test-unused",
                     OPENAI_BASE_URL="http://127.0.0.1:9")


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path / "profile", write_wav(tmp_path / "silence.wav", np.zeros(4_800, np.int16))) as context:
        yield context


def sign_in(page, provider, sub: str) -> None:
    provider.sign_in_as(sub, f"{sub}@example.com")
    page.get_by_role("button", name="Sign in").click()
    visitor = f"oidc:{sub}"
    page.get_by_text(f"Visitor …{visitor[-6:]}: you see only your own conversations.").wait_for()


def test_no_page_opens_without_signing_in(app, browser):
    url, _ = app
    page = browser.new_page()
    page.set_default_timeout(30_000)
    assert_every_page_gated(page, url, PROMPT, absent=("apples", "bananas"))
    page.get_by_role("button", name="Sign in").wait_for()


def test_each_account_sees_only_its_own_conversations_until_it_signs_out(app, browser, provider):
    url, _ = app
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    for sub, other in (("alice", "bob"), ("bob", "alice")):
        sign_in(page, provider, sub)  # to the provider and back to the main page, signed in
        page.frame_locator(WEBRTC_IFRAME).get_by_role("button", name="Start").wait_for()
        assert page.get_by_text(PROMPT).count() == 0
        assert any(cookie["name"] == "_streamlit_user" for cookie in browser.cookies())

        page.goto(url + "/History")
        page.get_by_text(WORDS[sub]).first.wait_for()
        assert WORDS[other] not in page.content()

        page.locator('[data-testid="stSidebar"]').get_by_role("button", name="Sign out").click()
        # The page shows the prompt before the browser leaves it: wait until it is back from the provider.
        page.wait_for_url(url + "/")
        page.get_by_text(PROMPT).wait_for()
        assert not any(cookie["name"] == "_streamlit_user" for cookie in browser.cookies())
