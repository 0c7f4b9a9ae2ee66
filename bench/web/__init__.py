"""The web load benchmark: gunicorn with the production settings under locust.

`python -m bench.web` (or `make bench-web`) runs it; see `run.py`. `locustfile.py` is what the
simulated clients do, `payloads.py` the requests they build, `gunicorn_probe.py` a gunicorn
config of hooks only, which watches whether a request waits on SMTP while it holds a database
connection.
"""
