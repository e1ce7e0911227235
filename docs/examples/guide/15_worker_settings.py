from signal import SIGQUIT

from repid import Worker

# --8<-- [start:snippet]
Worker(
    graceful_shutdown_time=100.0,  # seconds
    messages_limit=10_000,
    handle_signals=[SIGQUIT],
)
# --8<-- [end:snippet]
