"""Bad settings fail when LMCache builds its storage manager - at start-up, before any chunk is
stored - with kvstack's typed errors: a chunk layout kvstack cannot encode (dtype, shape), a
recipe that drops tokens, a missing head_dim, a plugin adapter without a store or with an
unreachable Redis."""

from __future__ import annotations

import pytest

pytest.importorskip("lmcache.v1.distributed", reason="LMCache is not installed: `make test-lmcache` runs these")

from lmcache_helpers import PLUGIN, storage_manager  # noqa: E402

from kvstack.errors import ConfigError, RecipeError, TransportError  # noqa: E402


def _fs(tmp_path, **serde) -> dict:
    return {"type": "fs", "base_path": str(tmp_path), "serde": {"type": "kvstack", **serde}}


@pytest.mark.parametrize("serde,error,match", [
    ({"head_dim": 64, "layout": {"shape": [2, 30, 256, 192], "dtype": "float8_e4m3fn"}}, ConfigError, "dtype"),
    ({"head_dim": 64, "layout": {"shape": [30, 256, 576], "dtype": "bfloat16"}}, ConfigError, "single-plane"),
    ({"head_dim": 64, "layout": {"shape": [2, 30, 256, 200], "dtype": "bfloat16"}}, ConfigError, "head_dim"),
    ({"head_dim": 96, "recipe": "int4:rot"}, RecipeError, "power-of-two"),
    ({"head_dim": 64, "recipe": "snapkv:0.25 > int4"}, RecipeError, "every token"),
    ({"recipe": "int4"}, ConfigError, "head_dim"),
    ({"head_dim": 64, "bits": 4}, ConfigError, "unknown setting"),
])
def test_bad_serde_settings_fail_when_the_storage_manager_is_built(tmp_path, serde, error, match):
    with pytest.raises(error, match=match):
        storage_manager(_fs(tmp_path, **serde))
    assert not any(tmp_path.iterdir())  # nothing was stored


def test_bad_plugin_settings_fail_when_the_storage_manager_is_built(tmp_path):
    with pytest.raises(ConfigError, match="store"):
        storage_manager({**PLUGIN, "adapter_params": {}})
    with pytest.raises(ConfigError, match="unknown"):
        storage_manager({**PLUGIN, "adapter_params": {"store": str(tmp_path), "coder": "ans"}})
    with pytest.raises(TransportError, match="redis-server"):
        storage_manager({**PLUGIN, "adapter_params": {"store": "redis://127.0.0.1:1/0"}})
