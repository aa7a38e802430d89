"""Sweeps: every mask subset of a base model in one pass, on one machine or a cluster.

Small modules, one job each:

* :mod:`.selection` -- which entries (``--subsets all | k=1 | k<=2 | names``) and
  which datasets (suite names, paper short names, official names).
* :mod:`.protocol` -- :class:`SweepSupport`, the optional per-family contract the
  engine needs (prepare inputs, run encoders, fuse and decode a batch of subsets).
* :mod:`.predfiles` -- where VLMEvalKit writes a prediction file and what it holds.
* :mod:`.checkpoint` -- the append-only, kill-safe per-(base, dataset) checkpoint.
* :mod:`.engine` -- the sweep itself.
* :mod:`.parallel` -- samples split across torchrun ranks or cluster jobs (``--gpus N``, ``--shard-by samples``).
* :mod:`.cluster` / :mod:`.status` -- submitit job arrays and ``encred status``.
* :mod:`.profile` -- per-variant FLOPs, latency and memory (``encred profile``).

Importing this package imports neither torch nor vlmeval.
"""
