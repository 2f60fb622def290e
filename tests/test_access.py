"""Access codes, backoff, visitor passes, settings and ICE configuration (engine level, no Streamlit)."""

from __future__ import annotations

import time

import pytest

from koe.access import AccessConfig, Backoff, Passes, Visitor, backoff_keys, client_address, role_for_code
from koe.config import ConfigError, load_config
from koe.ice import IceConfig, browser_ice_servers, server_ice_servers, to_aiortc, turn_rest_credentials

CODES = AccessConfig(access_code="visitors-welcome", admin_code="owner-only")


def test_codes_grant_their_role_and_nothing_else():
    assert role_for_code("visitors-welcome", CODES) == "visitor"
    assert role_for_code("owner-only", CODES) == "owner"
    for wrong in ("", "visitors-welcom", "visitors-welcome ", "VISITORS-WELCOME", "x" * 10_000, "owner-only\0"):
        assert role_for_code(wrong, CODES) is None, wrong


def test_no_configured_code_matches_anything():
    assert role_for_code("anything", AccessConfig()) is None
    assert AccessConfig().personal and not CODES.personal
    assert role_for_code("owner-only", AccessConfig(admin_code="owner-only")) == "owner"


def test_wrong_codes_wait_longer_each_time_up_to_a_bound_and_are_forgotten():
    now = [0.0]
    backoff = Backoff(base_s=0.5, max_s=4.0, forget_after_s=60, clock=lambda: now[0])
    assert backoff.delay("session", "ip:1") == 0
    waits = []
    for _ in range(6):
        backoff.failed("session", "ip:1")
        waits.append(backoff.delay("session", "ip:1"))
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay("another session", "ip:1") == 4.0  # the IP's failures follow it to a new session
    backoff.succeeded("session")
    assert backoff.delay("session") == 0 and backoff.delay("ip:1") == 4.0
    now[0] += 61
    assert backoff.delay("ip:1") == 0


def test_the_client_address_is_believed_from_x_forwarded_for_only_behind_trusted_proxies():
    # No trusted proxy: the header is anyone's to write, so the socket's peer counts (None on loopback).
    assert client_address("203.0.113.7", "198.51.100.1", 0) == "203.0.113.7"
    assert client_address(None, "198.51.100.1", 0) is None
    # One proxy: the entry it appended (the rightmost); what the client wrote to the left is ignored.
    assert client_address("10.0.0.2", "1.2.3.4, 198.51.100.1", 1) == "198.51.100.1"
    assert client_address("10.0.0.2", "2001:db8::1", 1) == "2001:db8::1"
    # Two proxies: the outer one's entry, second from the right.
    assert client_address("10.0.0.2", "spoofed, 198.51.100.1, 10.0.0.9", 2) == "198.51.100.1"
    for header in (None, "", "not-an-ip", "198.51.100.1"):  # too few entries, or junk: unknown, not shared
        assert client_address("10.0.0.2", header, 2) is None
    with pytest.raises(ConfigError, match="KOE_TRUSTED_PROXY_HOPS"):
        load_config({"KOE_TRUSTED_PROXY_HOPS": "-1"}.get)
    assert load_config({"KOE_TRUSTED_PROXY_HOPS": "1"}.get).access.trusted_proxy_hops == 1


def test_visitors_on_one_host_do_not_share_a_backoff():
    backoff = Backoff(base_s=0.5, max_s=8.0)
    alice, bob = backoff_keys("s1", None, None), backoff_keys("s2", None, None)  # both on loopback
    for _ in range(5):
        backoff.failed(*alice)
    assert backoff.delay(*alice) == 8.0 and backoff.delay(*bob) == 0
    # A known address is shared by design: its failures follow a visitor into a new session.
    carol, dave = backoff_keys("s3", "v_carol", "198.51.100.1"), backoff_keys("s4", None, "198.51.100.1")
    backoff.failed(*carol)
    assert backoff.delay(*dave) == 0.5
    backoff.succeeded(*carol[:2])  # the right code clears the visitor's keys, not the address's
    assert backoff.delay("session:s3") == 0 and backoff.delay(*dave) == 0.5


def test_backoff_memory_is_bounded():
    backoff = Backoff(max_keys=100)
    for i in range(1000):
        backoff.failed(f"ip:{i}")
    assert len(backoff._failures) == 100


def test_passes_round_trip_and_refuse_forgery_expiry_and_code_changes():
    now = [1_000_000.0]
    passes = Passes(AccessConfig(access_code="visitors-welcome", admin_code="owner-only", session_secret="s3cret",
                                 pass_hours=1), clock=lambda: now[0])
    visitor = Visitor("v_abc", "visitor")
    token = passes.issue(visitor)
    assert passes.read(token) == visitor
    visitor_id, role, expires, signature = token.split(".")
    assert passes.read(f"{visitor_id}.owner.{expires}.{signature}") is None  # no promotion by editing
    assert passes.read(f"v_other.{role}.{expires}.{signature}") is None
    for garbage in (None, "", "a.b.c", "a.b.c.d.e", "x" * 5000, token + "0", "é.visitor.1.sig"):
        assert passes.read(garbage) is None
    other_codes = Passes(AccessConfig(access_code="new-code", admin_code="owner-only", session_secret="s3cret"),
                         clock=lambda: now[0])
    assert other_codes.read(token) is None
    now[0] += 3601
    assert passes.read(token) is None


def test_settings_are_validated_with_the_setting_named_and_the_value_never_shown():
    config = load_config({"KOE_MAX_SESSION_MINUTES": "3", "KOE_ACCESS_CODE": "1234", "KOE_STUN_URLS": "stun:a:1, stun:b:2",
                          "OPENAI_API_KEY": "sk-test-secret", "KOE_LOCAL_URL": ""}.get)
    assert config.limits.max_session_minutes == 3 and config.ice.stun_urls == ["stun:a:1", "stun:b:2"]
    assert config.backend.local_url is None and "sk-test-secret" not in repr(config)
    with pytest.raises(ConfigError, match="KOE_MAX_CONCURRENT_SESSIONS") as error:
        load_config({"KOE_MAX_CONCURRENT_SESSIONS": "many-sk-test-secret"}.get)
    assert "sk-test-secret" not in str(error.value)
    with pytest.raises(ConfigError, match="KOE_LOCAL_URL"):
        load_config({"KOE_LOCAL_URL": "ftp://elsewhere"}.get)


def test_long_lived_turn_credentials_stay_on_the_server():
    ice = IceConfig(stun_urls=["stun:stun.example.org:3478"], turn_urls=["turn:turn.example.org:3478"],
                    turn_username="koe", turn_credential="long-lived-password")
    browser, server = browser_ice_servers(ice, "v_1"), server_ice_servers(ice, "v_1")
    assert "long-lived-password" not in repr(browser)
    assert browser == [{"urls": ["stun:stun.example.org:3478"]}]
    assert server[-1]["credential"] == "long-lived-password"
    assert [s.urls for s in to_aiortc(server)] == [["stun:stun.example.org:3478"], ["turn:turn.example.org:3478"]]


def test_coturn_rest_credentials_are_short_lived_and_shared_with_the_browser():
    ice = IceConfig(turn_urls="turn:turn.example.org:3478", turn_secret="coturn-static-auth-secret", turn_ttl_s=600)
    (turn,) = browser_ice_servers(ice, "v_1")
    expires, user = turn["username"].split(":")
    assert user == "v_1" and 0 < int(expires) - time.time() <= 600
    assert "coturn-static-auth-secret" not in repr(turn)
    # coturn's scheme: base64(HMAC-SHA1(secret, "<expiry>:<user>")); a fixed value guards the encoding.
    assert turn_rest_credentials("secret", 0, "u", now=1000) == ("1000:u", "TeXDEJxLb3cYjdxw3qUaLSIyX/4=")
