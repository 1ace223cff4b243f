"""``atoll up``: a whole federation on one machine, as real processes.

* :mod:`.topology` — pure: which clusters, regions, addresses and demo services.
* :mod:`.supervisor` — starts, watches and stops child processes.
* :mod:`.manifest` — the machine-readable description of a running lab.
* :mod:`.up` — the orchestration behind the command.
"""
