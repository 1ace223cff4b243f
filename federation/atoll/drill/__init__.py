"""Failover drills and what-if analysis (issue 6).

* :mod:`.plan` — pure: which services move where when clusters leave, and
  the DNS answers each client region would get (the DNS server's own
  ``build_zone`` and ``decide``, so predictions and traffic cannot disagree).
* :mod:`.runner` — the drill engine: disrupt, verify against every DNS
  server, hold, restore, verify, report; resumable from the recorded steps.
* :mod:`.chaos` — disrupting a lab cluster for real by killing its processes.
"""
