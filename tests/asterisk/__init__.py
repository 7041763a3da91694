"""A real Asterisk for the tests: built from source once (build.py), run per session (pbx.py)."""
