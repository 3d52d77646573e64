"""The parts of the Webapp simulator; ``gateway.simulator`` is the public entry point.

- ``faults.py``: what a test scripts to go wrong, as data; the rate limit's buckets.
- ``exchange.py``: a request's record (``Seen``), its per-request state, its body read counted.
- ``answers.py``: the Webapp's answer and error shapes; JSON bodies and password rules.
- ``connection.py``: waits that end with the client, hang-ups, request faults carried out.
- ``login.py``: login and logout; login faults; tokens issued.
- ``users.py``: who a request is, password changes and revocation, user management.
- ``media.py``: synthetic and uploaded media and their endpoints.
- ``endpoints.py``: messages, contacts, health, metrics, stats, settings; 404 for the rest.
"""
