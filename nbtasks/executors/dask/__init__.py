"""Dask: tasks run on a ``dask.distributed`` cluster; this process stays their owner.

Dask schedules (priorities, data locality, resilience, many machines); nbtasks keeps what Dask
does not: the record in the store, metadata, retries with backoff, caching, widgets. The
client process owns every record (DESIGN principle 2): workers never open the store. What a
running task reports comes back through Dask itself (no shared filesystem): the worker side
(``worker.py``, the core's attempt lifecycle with a seam that sends instead of recording) logs
events on a topic of this executor's own, and the client subscribed to it (``client.py``). One
dispatcher thread (``executor.py``) applies them, in order, with ``store.change``:

* a "started" event claims the task (READY -> RUNNING) with the worker's start time and id;
* progress, output and ``update_state`` arrive throttled at the source (<= 10/s per task),
  ``set_metadata`` at once, and the last values with the return value;
* finished futures are gathered in batches, and ``Attempt.end`` records the outcome, runs the
  hooks, retries (nbtasks' policy with backoff: Dask's own ``retries`` stay 0) and tells the
  runtime (links, chains, chords).

Cancel and ``timeout`` cancel the Dask future and record CANCELLED / ``TaskTimeout`` at once;
the worker notices its cancelled key at its next tick, and the task stops at its next
``progress()``/``check_cancelled()`` (Dask cannot stop a running thread). A worker lost while
it ran a task (the scheduler's ``remove-worker`` event names the tasks it was processing, or
the future errs with ``KilledWorker``) fails the attempt with ``WorkerLost``: retried by the
task's policy, instead of silently re-run by Dask. Futures cancelled behind our back (the
client lost its scheduler connection, or was closed) leave their tasks INTERRUPTED with a
reason that says so.

Workers need nbtasks installed (as they need any library the tasks use); the task functions
themselves travel by value (cloudpickle, ``executors/payload.py``), so notebook functions work.
Errors travel as class path + traceback text (``errors.py``). ``distributed`` is imported
lazily, only here.
"""
