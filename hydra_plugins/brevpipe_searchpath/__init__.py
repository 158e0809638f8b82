"""Hydra search-path plugin: makes ``pipelines/*.yaml`` (the DAG declarations) composable, and
stores the components' typed settings (``schema/<kind>/<name>``) that the presets start from.

``conf/pipeline/<name>.yaml`` pulls its stages from ``pipelines/<name>.yaml`` with the
defaults entry ``/<name>@_here_``. Only brevpipe's own config gets this search path.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class BrevpipeSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from brevpipe.engine.config import CONF_DIR, PIPELINES_DIR

        if any(
            str(entry.path).rstrip("/").endswith(str(CONF_DIR)) for entry in search_path.get_path()
        ):
            from brevpipe.engine.schema import store_schemas
            from brevpipe.engine.settings import store_settings

            store_settings()
            store_schemas()
            search_path.append(provider="brevpipe-pipelines", path=f"file://{PIPELINES_DIR}")
