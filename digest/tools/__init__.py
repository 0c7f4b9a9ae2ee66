"""Developer tools beside the library, never imported by it: `digest bench` and `digest eval`.

Only the CLI reaches them, lazily, inside the commands that run them, so the library (and a
worker or web process) never loads their dependencies or `workers`. tests/test_bench.py checks
that no library module imports them.
"""
