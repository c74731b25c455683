"""Parquet through Ray Data's V1 reader: the same rows, in file order, and the caller's
DataContext left as it was."""

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from engine.parquet_dataset import read_parquet_dataset


def test_files_read_in_order_with_read_arguments_and_the_context_kept(ray_local, tmp_path):
    from ray.data import DataContext

    pq.write_table(pa.table({"id": ["a", "b"], "n": [1, 2]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"id": ["c"], "n": [3]}), tmp_path / "2.parquet")
    before = DataContext.get_current().use_datasource_v2
    ds = read_parquet_dataset(fsspec.filesystem("file"), [str(tmp_path / "1.parquet"), str(tmp_path / "2.parquet")],
                              columns=["id"])
    assert DataContext.get_current().use_datasource_v2 == before
    assert ds.take_all() == [{"id": "a"}, {"id": "b"}, {"id": "c"}]
