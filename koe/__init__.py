"""Koe: talk to a realtime AI model from a browser. The engine: protocol, client, relay, store, local backend."""
