"""Cache identity (issue 19 item 5): a key names model, context *and recipe*, so pushing a second
recipe's cache of one context adds it beside the first instead of silently replacing it; a key
without the recipe id still names the context's only cache, and answers 300 when there are several."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import torch
from transport_helpers import TOKEN, tiny_llama

import kvstack
from kvstack import wire
from kvstack.errors import InputError, TransportError
from kvstack.transport import CacheKey, Client
from kvstack.transport.keys import recipe_variant

RECIPES = ("int8", "snapkv:0.5,window=8 > int4")


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def context():
    return torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(21))


@pytest.fixture(scope="module")
def caches(model, context):
    return {r: kvstack.compress(model, context, r) for r in RECIPES}


def test_two_recipes_of_one_context_live_side_by_side(serve, store_url, model, context, caches):
    server = serve(store_url)

    async def go():
        async with Client(server.url, TOKEN) as c:
            first = await c.push(caches[RECIPES[0]])
            base = CacheKey.parse(first["key"]).context
            only = await c.pull(base, model)  # one cache of this context: the short key names it
            second = await c.push(caches[RECIPES[1]])
            listed = await c.list()
            pulled = {r: await c.pull(base, model, recipe=r) for r in RECIPES}
            with pytest.raises(TransportError, match="several caches of this context.*recipe="):
                await c.pull(base, model)
            found = await c.find(first["fingerprint"], context, recipe=RECIPES[0])
            return first, second, only, listed, pulled, found

    first, second, only, listed, pulled, found = run(go())
    assert first["key"] != second["key"] and first["prefix"] == second["prefix"]
    assert second["variant"] == recipe_variant(RECIPES[1])
    assert sorted(e["recipe"] for e in listed) == sorted(RECIPES)
    assert wire.cache_differences(only, caches[RECIPES[0]]) == []
    for r in RECIPES:
        assert wire.cache_differences(pulled[r], caches[r]) == [], r
    assert found["key"] == first["key"]


def test_same_recipe_still_replaces_and_short_key_delete_needs_a_choice(serve, store_url, caches):
    server = serve(store_url)

    async def go():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            keys = []
            for r in (*RECIPES, RECIPES[0]):
                async with s.put(f"{server.url}/v1/caches", data=wire.encode(caches[r])) as resp:
                    assert resp.status == 201
                    keys.append((await resp.json())["key"])
            base = str(CacheKey.parse(keys[0]).context)
            async with s.delete(f"{server.url}/v1/caches/{base}", allow_redirects=False) as resp:
                multiple = resp.status, await resp.json()
            async with s.delete(f"{server.url}/v1/caches/{keys[1]}") as resp:
                deleted = resp.status
            async with s.delete(f"{server.url}/v1/caches/{base}") as resp:
                last = resp.status
            async with s.get(f"{server.url}/v1/caches") as resp:
                left = (await resp.json())["caches"]
            return keys, multiple, deleted, last, left

    keys, (status, body), deleted, last, left = run(go())
    assert keys[0] == keys[2]  # the same recipe and context: one key, replaced as before
    assert status == 300 and sorted(e["key"] for e in body["caches"]) == sorted(keys[:2])
    assert deleted == 204 and last == 204 and left == []


def test_recipe_ids_are_checked():
    with pytest.raises(InputError, match="recipe id"):
        CacheKey("abcdef12", "0" * 64, "../../etc")
    with pytest.raises(InputError, match="must look like"):
        CacheKey.parse("a/b/c/d")
    key = CacheKey.parse(f"abcdef12/{'0' * 64}/{recipe_variant('int8')}")
    assert str(key.context) == f"abcdef12/{'0' * 64}" and key.with_recipe("int8") == key


def run(coro):
    return asyncio.run(coro)


def test_the_server_keys_weights_fingerprinted_caches_apart(serve, store_url, model, context):
    from kvstack.errors import ModelError
    from kvstack.hf.fingerprint import model_fingerprint

    tuned = tiny_llama(seed=9)  # the same config: the same config fingerprint
    server = serve(store_url)
    marked = kvstack.compress(model, context, "int8", fingerprint="weights")

    async def go():
        async with Client(server.url, TOKEN) as c:
            plain = await c.push(kvstack.compress(model, context, "int8"))
            info = await c.push(marked)
            pulled = await c.pull(info["key"], model)
            with pytest.raises(ModelError, match="another model"):
                await c.pull(info["key"], tuned)
            return plain, info, pulled

    plain, info, pulled = run(go())
    assert info["fingerprint"] == model_fingerprint(model, "weights") != plain["fingerprint"]
    assert wire.cache_differences(pulled, marked) == []


def test_recipe_ids_name_what_the_recipe_runs_not_its_spelling():
    # spellings of one recipe share a cache; int4 under its old default (groups of 64) is another cache
    assert recipe_variant("int4") == recipe_variant("int4:g32,axis=channel") != recipe_variant("int4:g64")
    assert recipe_variant("qa:16x") == recipe_variant("q2c:0.125,span=16 > int4:g64")
    assert len(recipe_variant("nosuch:1")) == 16  # a stage of another version: its text, hashed
