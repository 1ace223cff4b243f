"""Long jobs on Celery (issue 6): the app, its broker, the tasks, the worker.

Job *state* never lives in Celery: a job is a resource in the store (a
:class:`~atoll.model.Drill`), and a Celery message only says "work on drill
D". So any client follows a job through the REST API, a duplicate message is
harmless (the runner claims the drill with CAS and skips finished steps), and
a lost message is recovered by the control plane's janitor, which re-enqueues
a drill whose worker stopped heartbeating — or rolls it back.

Brokers (:func:`~atoll.jobs.app.make_celery`):

* ``redis://host:port/db`` — a real Redis, for workers on several machines;
* ``filesystem:///abs/dir`` — the embedded default: messages are files in a
  directory (kombu's filesystem transport), no server at all, so ``atoll up``
  stays self-contained. It does not redeliver a message whose worker was
  SIGKILLed (measured: the file is consumed on receipt) — the janitor covers
  that case for both brokers.
"""
