"""Behaviour tests written once and run on every broker (see `conftest.BROKERS`)."""
