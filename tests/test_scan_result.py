"""`ScanResult` conveniences that need optional packages."""

import sys

import numpy as np
import pyarrow as pa
import pytest

from jaxflow._scan.api import ScanResult


def _result(tmp_path):
    table = pa.table({"index": np.arange(3), "status": np.zeros(3, np.int8)})
    return ScanResult(manifest={"spec": {}}, out=tmp_path, complete=True, report=None,
                      table=table)


def test_to_pandas_without_pandas_names_the_extra(tmp_path, monkeypatch):
    result = _result(tmp_path)
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now fails
    with pytest.raises(ModuleNotFoundError) as info:
        result.to_pandas()
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'jaxflow[pandas]'" in message


def test_to_pandas_with_pandas(tmp_path):
    pytest.importorskip("pandas")
    df = _result(tmp_path).to_pandas()
    assert list(df.columns) == ["index", "status"] and df["status"].dtype == np.int8
