"""The ``contimg`` command line: the application layer over contimg, catalog and flows.

It lives outside ``contimg/`` because some commands (``query``, ``status``,
``run``, ``serve``) need the catalog and Prefect, which the science package must
never import. Each sub-command is a module with ``register(subparsers)``; the
module's handler imports what it needs lazily so ``contimg --help`` stays fast.
"""
