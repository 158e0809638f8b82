"""Saving and loading stage outputs in the job bucket, by the type of the value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brevpipe.engine import storage


def save_output(value: Any, url_stem: str, temp_dir: str) -> dict[str, str]:
    """Write ``value`` next to ``url_stem`` (a URL without extension); return its record."""
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        from brevpipe.data.samples import samples_to_csv

        url = f"{url_stem}.csv"
        storage.write_bytes(url, samples_to_csv(value))
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
        from brevpipe.data.samples import samples_from_csv

        return samples_from_csv(storage.read_bytes(url))
    if kind == "keras":
        import keras

        local = Path(temp_dir, Path(url).name)
        storage.download(url, local)
        return keras.models.load_model(local)
    return storage.read_json(url)


def _is_keras_model(value: Any) -> bool:
    return type(value).__module__.startswith("keras") and hasattr(value, "save")
