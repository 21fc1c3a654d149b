"""Worker processes (SPEC §7): a supervised pool, crash isolation, hard timeouts, cancel, and
detached tasks that outlive the kernel.

Not ``concurrent.futures.ProcessPoolExecutor``: one dead worker breaks its whole pool
(``BrokenProcessPool``); here a dead worker fails only its own task and is replaced (DESIGN
principle 10). The pieces:

- a **zygote** (``zygote.py``): a new interpreter started with ``subprocess`` (a threaded
  kernel is never forked) that preloads nbtasks, diskcache and cloudpickle, ignores SIGINT, forks
  the workers and reports their exit status;
- **workers** (``child.py``, running the core's attempt lifecycle through ``attempt.py``): each
  owns the record of the task it runs (DESIGN principle 2). It claims it,
  writes progress, output, heartbeats and the result to the store itself (group-committed by its
  own writer, as the core does), and reports the final record here at once, so waiters wake
  without a store round trip. This process mirrors what it is told (``Store.observe``) and never
  writes the record while the worker lives; if the worker dies, this process owns the record
  again: it writes the outcome, and persists any final record the worker reported but may not
  have committed yet;
- one **supervisor thread** here (``pool.py``): it reads the workers' reports, keeps every
  worker fed (one job running and one queued in its socket, as ``ProcessPoolExecutor`` does, so
  a worker never waits for a round trip to this process), mirrors running tasks' records from
  the store ~10 times a second (this process's ``TaskResult``s and widgets see them live),
  enforces hard timeouts and cancels (SIGTERM, then SIGKILL after a grace period) and turns a
  worker's death into its task's outcome (``WorkerLost`` naming the signal or exit code,
  ``TaskTimeout``, ``CANCELLED``), retries included (``outcomes.py``, through the core's
  ``record_outcome``).

A submit hands the job to a worker from the submitting thread (no thread hop). Its payload (the
task and its options, pickled with cloudpickle: ``executors/payload.py``) was made at submit by
``Runtime.build``, so what cannot be pickled fails there and nothing is stored. Messages go over
a framed channel (``channel.py``).

A **detached** task (``detach=True``) gets a worker of its own, forked in a new session: a kernel
restart, the kernel dying or Interrupt do not reach it. Its record names that worker as its owner
before it starts, so a new kernel's sweep leaves it RUNNING; once its parent is gone it acts on
cancel requests and its hard timeout by itself.

A task running in a pool worker **submits other tasks** through this process (``calls.py``; the
worker's side is ``child_app.py``):
its App builds, commits and runs them as if they were submitted here, in a thread of their own
(never the supervisor's: a submit may wait for the store or run an ``apply()``). While such a task
runs, nothing is queued behind it in its worker: it may be waiting for what it submitted.
"""
