"""The product catalog: append-only Parquet tables queried with DuckDB.

No Prefect and no ``contimg`` imports: pyarrow, duckdb and the standard library.

* :mod:`catalog.schema`   the typed schema and key of every table
* :mod:`catalog.store`    ``append(catalog_dir, table, rows)``: validate, write, rename into place
* :mod:`catalog.query`    ``connect``, ``query``, ``latest``, ``history``
* :mod:`catalog.compact`  merge small files, safe under concurrent readers and writers
* :mod:`catalog.check`    report (and optionally quarantine) unreadable files
* :mod:`catalog.status`   the data of ``contimg status``
* :mod:`catalog.cal_registry`  caltable sets: register, retire, what to apply at a time
* ``views.sql``          the views, for Python and ``duckdb -init``

See ``docs/catalog.md``.
"""
