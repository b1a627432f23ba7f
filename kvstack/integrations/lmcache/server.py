"""``python -m kvstack.integrations.lmcache.server [lmcache server options]``: ``lmcache server`` with
the ``"kvstack"`` serializer registered first.

LMCache's serializers are looked up by name in a registry filled at import time; a serializer
from another package has to be registered in the server's own process before LMCache parses
its ``--l2-adapter`` settings. This launcher does exactly that and then hands every argument to
LMCache's own CLI, unchanged (``--help`` lists them).
"""

from __future__ import annotations

import sys

from kvstack.integrations.lmcache import register
from kvstack.integrations.lmcache.deps import lmcache_module


def main(argv: list[str] | None = None) -> None:
    register()
    cli = lmcache_module("lmcache.cli.main")
    cli.main(["server", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
