"""Check executors of the router: plugin runner, executor processes, pool, command catalog.

See ``checkers/README.md``. The public names live in their modules:
:mod:`checkers.pool` (``CheckerPool``), :mod:`checkers.catalog` (``Catalog``),
:mod:`checkers.messages` (``CheckRequest``, ``CheckOutcome``, ``outcome_to_cr``),
:mod:`checkers.runner` (``run_plugin``, ``run_internal_dummy``) and
:mod:`checkers.errors`. This file imports nothing, so an executor process only loads
what it uses.
"""
