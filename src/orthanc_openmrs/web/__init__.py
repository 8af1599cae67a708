"""The review pages: the studies the service could not decide alone, resolved in a browser by
people signed in with their own OpenMRS accounts (`app.py` builds them; `/review/` on `run`'s
HTTP surface)."""
