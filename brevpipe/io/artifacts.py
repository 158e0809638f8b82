"""Saving and loading stage outputs in the job bucket, by the type of the value."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brevpipe.io import storage

if TYPE_CHECKING:
    import pandas as pd


def save_output(value: Any, url_stem: str, temp_dir: str) -> dict[str, str]:
    """Write ``value`` next to ``url_stem`` (a URL without extension); return its record."""
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        url = f"{url_stem}.csv"
        storage.write_bytes(url, table_to_csv(value))
        return {"kind": "table", "url": url}
    if _is_keras_model(value):
        local = Path(temp_dir, Path(url_stem).name + ".keras")
        value.save(local)
        url = f"{url_stem}.keras"
        storage.upload(local, url)
        return {"kind": "keras", "url": url}
    url = f"{url_stem}.json"
    storage.write_bytes(url, json.dumps(value, indent=2, default=str).encode())
    return {"kind": "json", "url": url}


def load_output(record: dict[str, str], temp_dir: str) -> Any:
    kind, url = record["kind"], record["url"]
    if kind == "table":
        return table_from_csv(storage.read_bytes(url))
    if kind == "keras":
        import keras

        local = Path(temp_dir, Path(url).name)
        storage.download(url, local)
        return keras.models.load_model(local)
    return storage.read_json(url)


def table_to_csv(table: pd.DataFrame) -> bytes:
    """A table as CSV; its ``category`` column (tuples of labels) as JSON lists."""
    table = table.copy()
    if "category" in table:
        table["category"] = [json.dumps(list(c)) for c in table["category"]]
    return table.to_csv(index=False).encode()


def table_from_csv(data: bytes) -> pd.DataFrame:
    """What :func:`table_to_csv` wrote: every column as text, ``category`` as tuples."""
    import pandas as pd

    table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    if "category" in table:
        table["category"] = [tuple(json.loads(c)) for c in table["category"]]
    return table


def _is_keras_model(value: Any) -> bool:
    return type(value).__module__.startswith("keras") and hasattr(value, "save")
