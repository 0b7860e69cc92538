"""A LoRA URL's query kept out of a job's params (service/lora_urls.py): split at submit into the URL
shown and the full one, restored for the worker, hidden again in what it writes back and in recipes."""

from __future__ import annotations

from service import lora_urls
from service.recipe import clean_params

TOKEN = "sig=5ecret"


def test_shown_url_drops_credentials_query_and_fragment():
    assert lora_urls.shown_url(f"https://u:p@h.example:8443/a/b.safetensors?{TOKEN}#x") == \
        "https://h.example:8443/a/b.safetensors"
    assert lora_urls.shown_url(f"https://[2001:db8::1]:8/a.safetensors?{TOKEN}") == "https://[2001:db8::1]:8/a.safetensors"
    assert lora_urls.shown_url("https://h.example/a.safetensors") == "https://h.example/a.safetensors"
    assert lora_urls.shown_url("https://[::1") == ""


def test_split_then_restore_gives_the_full_urls_back():
    full = f"https://h.example/a.safetensors?{TOKEN}"
    params = {"prompt": "x", "loras": [{"name": "style", "scale": 1.0}, {"url": full, "scale": 0.5},
                                       {"url": "https://h.example/plain.safetensors", "scale": 1.0}]}
    shown, kept = lora_urls.split(params)
    assert TOKEN not in repr(shown)
    assert shown["loras"][1] == {"url": "https://h.example/a.safetensors", "scale": 0.5}
    assert kept == {"1": full}  # only the URL that lost something
    assert lora_urls.restore(shown, kept) == params
    assert lora_urls.restore(shown, None) == shown
    assert lora_urls.split({"prompt": "x", "loras": []}) == ({"prompt": "x", "loras": []}, {})
    assert lora_urls.hide(params["loras"]) == shown["loras"]


def test_restore_ignores_an_entry_that_is_not_the_same_url():
    shown, kept = lora_urls.split({"loras": [{"url": f"https://h.example/a.safetensors?{TOKEN}", "scale": 1}]})
    other = {"loras": [{"url": "https://elsewhere.example/a.safetensors", "scale": 1}]}
    assert lora_urls.restore(other, kept) == other
    assert lora_urls.restore({"loras": []}, kept) == {"loras": []}


def test_a_recipe_shows_no_lora_url_query():
    params = {"prompt": "x", "loras": [{"url": f"https://u:p@h.example/a.safetensors?{TOKEN}", "scale": 1.0}]}
    assert clean_params(params)["loras"] == [{"url": "https://h.example/a.safetensors", "scale": 1.0}]
