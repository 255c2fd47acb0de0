"""Ready-made worker resources for common clients.

Each module imports its library only inside the worker, so importing the module
works without the library installed; install the matching extra to use it
(from a checkout: ``pip install -e '.[sqlalchemy]'`` and so on).

- [`safepool.integrations.sqlalchemy`][]: one engine per worker, a fresh
  Session per task, rolled back and closed around it.
- [`safepool.integrations.psycopg`][] (psycopg 3) and
  [`safepool.integrations.psycopg2`][]: one connection pool per worker; the
  task's connection is rolled back and returned after it.
- [`safepool.integrations.kafka`][]: a confluent-kafka ``Producer`` per worker,
  flushed on teardown.
- [`safepool.integrations.mqtt`][]: a paho-mqtt client per worker with its
  network thread (``loop_start``), disconnected on teardown.
"""
