"""A tiny OpenID Connect provider on loopback, for tests: the authorization code flow, nothing more.

There is no login form: `/authorize` signs in whoever the test named last (`sign_in_as`) and sends the
browser straight back with a code. `/token` checks the client and the code, and answers with an
id_token signed RS256 by a key made at start (its public half at `/jwks`), carrying the nonce the app
sent. `/logout` is the end-session endpoint: it sends the browser back where the app asked.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from joserfc import jwt
from joserfc.jwk import RSAKey


class OIDCProvider:
    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.key = RSAKey.generate_key(2048, auto_kid=True)
        self.claims: dict[str, object] = {}
        self._codes: dict[str, dict] = {}  # code → the claims and nonce it was issued for, and its redirect_uri
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self.metadata_url = f"{self.url}/.well-known/openid-configuration"

    def sign_in_as(self, sub: str, email: str) -> None:
        """Who the next /authorize signs in."""
        self.claims = {"sub": sub, "email": email, "email_verified": True, "name": sub.title()}

    def start(self) -> OIDCProvider:
        threading.Thread(target=self._server.serve_forever, name="oidc-provider", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def metadata(self) -> dict:
        return {"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                "end_session_endpoint": f"{self.url}/logout", "response_types_supported": ["code"],
                "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}

    def authorize(self, query: dict[str, str]) -> str:
        """The redirect back to the app: a one-time code for the current claims, and the app's state."""
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            raise ValueError("unknown client or unsupported response type")
        if not self.claims:
            raise ValueError("nobody to sign in: the test calls sign_in_as first")
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"claims": dict(self.claims), "nonce": query.get("nonce"),
                             "redirect_uri": query["redirect_uri"]}
        back = urllib.parse.urlencode({"code": code, "state": query.get("state", "")})
        return f"{query['redirect_uri']}?{back}"

    def token(self, form: dict[str, str], authorization: str | None) -> dict:
        if authorization and authorization.startswith("Basic "):  # client_secret_basic
            client_id, _, client_secret = base64.b64decode(authorization[6:]).decode().partition(":")
            client_id, client_secret = urllib.parse.unquote(client_id), urllib.parse.unquote(client_secret)
        else:  # client_secret_post
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if (client_id, client_secret) != (self.client_id, self.client_secret):
            raise PermissionError("invalid_client")
        grant = self._codes.pop(form.get("code", ""), None)
        if form.get("grant_type") != "authorization_code" or grant is None \
                or form.get("redirect_uri") != grant["redirect_uri"]:
            raise ValueError("invalid_grant")
        now = int(time.time())
        claims = {**grant["claims"], "iss": self.url, "aud": self.client_id, "iat": now, "exp": now + 300}
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        id_token = jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)
        return {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                "id_token": id_token}


def _handler(provider: OIDCProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/.well-known/openid-configuration":
                self._json(200, provider.metadata())
            elif url.path == "/jwks":
                self._json(200, {"keys": [provider.key.as_dict(private=False)]})
            elif url.path == "/authorize":
                try:
                    self._redirect(provider.authorize(query))
                except (KeyError, ValueError) as exc:
                    self._json(400, {"error": "invalid_request", "error_description": str(exc)})
            elif url.path == "/logout":
                self._redirect(query.get("post_logout_redirect_uri", provider.url))
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if self.path != "/token":
                return self._json(404, {"error": "not_found"})
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            try:
                self._json(200, provider.token(dict(urllib.parse.parse_qsl(body)), self.headers.get("Authorization")))
            except PermissionError:
                self._json(401, {"error": "invalid_client"})
            except ValueError:
                self._json(400, {"error": "invalid_grant"})

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args) -> None:  # quiet: pytest shows failures, not every request
            pass

    return Handler
