"""Cache export and import: BuildKit's remote cache format (``cacheconfig.v0``) for buildsvc.

- :mod:`config`: the cache config document (layers, records) and its checks;
- :mod:`options`: ``--export-cache``/``--import-cache`` attributes, the deprecated forms too;
- :mod:`layers`: a snapshot's diff written as a layer blob (tar, whiteouts, gzip/zstd/none);
- :mod:`manifest`: the index or image manifest that names the config and the layer blobs;
- :mod:`layout`: an OCI image layout directory as a cache store (locked, atomic ``index.json``);
- :mod:`export`: what a solve's results become (records, layer chains) and writing them out;
- :mod:`imports`: reading a cache back: which layer chains each record needs, verified;
- :mod:`layer_store`: ``<root>/cache/layers``, each snapshot's blob made once, trusted while its
  snapshot, file and boot are the ones it was made with;
- :mod:`ahead`: those blobs made as a solve's steps commit, when the solve asked for an export.

This package knows nothing about registries, snapshotters or the event log: the daemon wiring
(``buildsvc.daemon.cache_exports``) hands it the callables that reach those (and attaches
:class:`ahead.LayersAhead` to the event store, which then hands it the appended rows).
"""
