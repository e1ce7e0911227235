"""The chaos suite: worker processes killed, stopped and cut off while a ledger records every run.

`_harness.py` is the toolkit (docstring: the API), `chaos_app.py` the worker process; each
`test_*.py` is one scenario of docs/chaos.md, run on every real broker.
"""
