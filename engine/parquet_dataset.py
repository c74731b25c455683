"""Parquet files as a lazy Ray Dataset, read without Ray Data's footer-reading actor pool.

Ray Data's default Parquet reader (its "datasource V2") starts a pool of footer-reading actors
for each read, 32 unless RAY_DATA_PARQUET_FOOTER_NUM_ACTORS says otherwise, each one a worker
process to start: on a small cluster their start-up costs more CPU than a pass's own work,
to read the footers of the few files an instruction input or a pair directory holds. The V1
reader reads footers in the driver, or in tasks when there are many files.
"""

from __future__ import annotations

from typing import Sequence


def read_parquet_dataset(fs, paths: str | Sequence[str], **read_args):
    """ray.data.read_parquet(paths) on the fsspec filesystem `fs` through the V1 reader;
    `read_args` go to read_parquet. The DataContext is restored afterwards: the reader is
    chosen when the read is planned."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    from ray.data import DataContext

    context = DataContext.get_current()
    v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, filesystem=PyFileSystem(FSSpecHandler(fs)), **read_args)
    finally:
        context.use_datasource_v2 = v2
