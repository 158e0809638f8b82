"""Hydra search-path plugin: stores brevpipe's typed settings and the components' typed
settings (``schema/<kind>/<name>``) that the presets start from, when Hydra composes brevpipe's
own config (``conf/``).
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class BrevpipeSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from brevpipe.config.compose import CONF_DIR

        if any(
            str(entry.path).rstrip("/").endswith(str(CONF_DIR)) for entry in search_path.get_path()
        ):
            from brevpipe.config.schema import store_schemas
            from brevpipe.config.settings import store_settings

            store_settings()
            store_schemas()
