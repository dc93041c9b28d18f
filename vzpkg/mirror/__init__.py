"""Template mirrors: publish a signed static tree, pull with full verification.

Published tree (any static web server, rsync target or object store can serve
it; paths are relative to the mirror's base URL)::

    index.json                                      the catalogue (signed)
    index.json.asc                                  its detached signature
    caches/<name>/<serial>/<name>.tar.zst           the cache tarball
    caches/<name>/<serial>/<name>.tar.zst.asc       its detached signature
    caches/<name>/<serial>/<name>.manifest.json     its manifest

``index.json`` is ``{"format": 1, "generated": ISO-8601, "caches": [...]}``
with one entry per cache name (the published serial): name, distribution,
release, arch, set, serial, size, sha256, compression, created, packages (the
manifest's package count), and the relative paths ``tarball``, ``manifest``,
``signature`` plus ``manifest_sha256``.  The index is the only file trusted on
its signature alone; every other byte is checked against it, and the tarball
also against its own signature.

Other modules call:

* :func:`pull_cache` — fetch one cache when it is missing (``vzctl create``);
* :func:`mirror_config` — the merged mirror/trust configuration;
* :func:`publish` / :class:`Puller` — what the CLI commands run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vzpkg.core.settings import Settings
    from vzpkg.mirror.config import MirrorConfig, TrustedKey, mirror_config
    from vzpkg.mirror.fetch import NoProgress, Progress
    from vzpkg.mirror.index import Index, IndexEntry
    from vzpkg.mirror.progress import TextProgress
    from vzpkg.mirror.publisher import PublishReport, publish
    from vzpkg.mirror.pull import Pulled, Puller, PullReport
    from vzpkg.store.cachestore import CacheEntry

# Every name is imported on first use (PEP 562): a pull never pays for the publisher
# (its store writes, gpg and dates), a publish never for the HTTP client.  (The
# publisher's module is not called ``publish``: importing it would rebind
# vzpkg.mirror.publish, the function, to the module.)
_LAZY = {
    "MirrorConfig": "config", "TrustedKey": "config", "mirror_config": "config",
    "NoProgress": "fetch", "Progress": "fetch", "Index": "index", "IndexEntry": "index",
    "TextProgress": "progress", "PublishReport": "publisher", "publish": "publisher",
    "Pulled": "pull", "Puller": "pull", "PullReport": "pull",
}

__all__ = ["Index", "IndexEntry", "MirrorConfig", "NoProgress", "Progress", "PublishReport",
           "PullReport", "Pulled", "Puller", "TextProgress", "TrustedKey", "mirror_config",
           "publish", "pull_cache"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def pull_cache(name: str, settings: Settings, *, progress: Progress | None = None,
               config: MirrorConfig | None = None) -> CacheEntry:
    """Make cache *name* present and current in ``settings.cache_dir``.

    Tries the configured mirrors in order; returns the store's entry for the
    cache.  Raises ConfigError when no mirror or trusted key is configured and
    MirrorError (naming every mirror's failure) when no mirror could supply
    it; in that case nothing already in the cache directory was replaced.
    """
    from vzpkg.core.errors import MirrorError
    from vzpkg.mirror.config import mirror_config
    from vzpkg.mirror.pull import Puller
    from vzpkg.store.cachestore import CacheStore
    from vzpkg.store.manifest import expand_name

    store = CacheStore(settings.cache_dir)
    with Puller(store, config or mirror_config(settings), progress) as puller:
        report = puller.pull([name])
    if not report.ok:
        _, why = report.failed[0]
        raise MirrorError(f"cannot pull cache {name}:\n  {why}",
                          hint="check the mirrors in pull.mirrors / TEMPLATE_MIRRORS, or "
                               "build the cache locally with 'vzpkg build'")
    entry = store.entry(expand_name(name))
    if entry is not None:
        return entry
    raise MirrorError(f"cache {name} was pulled but is not in {settings.cache_dir}")
