"""The ``router`` command line (click); ``main`` is the console script ``router``.

``root`` holds the command group, ``common`` what the commands share (the errors they
report as one line), and one module per command or command group: ``serve`` (serve and
checker), ``config``, ``status``, ``replaylog``, ``pki``, ``perf``. Modules a command
needs beyond click are imported inside it, so that ``router --help`` starts fast.
"""

from router.cli.common import OPERATOR_ERRORS
from router.cli.root import main

__all__ = ["OPERATOR_ERRORS", "main"]
