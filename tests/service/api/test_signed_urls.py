"""Result URLs' signing secret: random and kept (in Redis, or the data directory with the embedded Redis),
never derived from the API keys; and no `expires` beyond the configured TTL."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import stat
import time

from service.api.auth import digest
from service.settings import Settings
from service.signed_urls import CLOCK_SKEW_S, REDIS_KEY, SECRET_FILE, UrlSigner, _secret_from_file

KEYS = {"alice": digest("alice-key")}


def signer(**settings) -> UrlSigner:
    return UrlSigner(Settings(**{"api_keys": KEYS, "redis_url": None, **settings}))


def query(signed: str) -> tuple[str, str]:
    expires, signature = (part.split("=")[1] for part in signed.lstrip("?").split("&"))
    return expires, signature


def test_knowing_the_key_digests_mints_nothing(tmp_path):
    """The old default secret was the digests themselves: a URL signed with it, far in the future, is refused."""
    urls = signer(data_dir=tmp_path)
    expires = int(time.time()) + 600
    old_key = hashlib.sha256(b"fresco-result-urls\0" + "\n".join(sorted(KEYS.values())).encode()).digest()
    forged = hmac.new(old_key, f"job1/0.png:{expires}".encode(), hashlib.sha256).hexdigest()
    assert not urls.verify("job1", "0.png", str(expires), forged)
    assert urls.verify("job1", "0.png", *query(urls.sign("job1", "0.png")))
    # Another deployment with the same keys has another secret.
    other = signer(data_dir=tmp_path / "other")
    assert not other.verify("job1", "0.png", *query(urls.sign("job1", "0.png")))


def test_the_secret_file_is_private_and_shared_by_every_process_on_the_data_dir(tmp_path):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        secrets = pool.map(_secret_from_file, [tmp_path] * 8)
    assert len(set(secrets)) == 1 and len(secrets[0]) == 64
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no temporary file left behind
    a, b = signer(data_dir=tmp_path), signer(data_dir=tmp_path)
    assert b.verify("j", "0.png", *query(a.sign("j", "0.png")))


def test_with_a_redis_url_every_process_sharing_it_agrees(module_server, module_redis, tmp_path):
    a = signer(redis_url=module_server.url, data_dir=tmp_path / "host-a")
    b = signer(redis_url=module_server.url, data_dir=tmp_path / "host-b")  # another host: another data dir
    assert b.verify("j", "0.png", *query(a.sign("j", "0.png")))
    assert len(module_redis.get(REDIS_KEY)) == 64
    assert not (tmp_path / "host-a").exists()


def test_the_setting_wins_wherever_it_is_set(tmp_path):
    a = signer(url_signing_secret="s3cret", data_dir=tmp_path / "a")
    b = signer(url_signing_secret="s3cret", data_dir=tmp_path / "b")
    assert b.verify("j", "0.png", *query(a.sign("j", "0.png")))
    assert not (tmp_path / "a" / SECRET_FILE).exists()


def test_expires_beyond_the_ttl_is_refused_even_well_signed(tmp_path):
    urls = signer(data_dir=tmp_path, result_url_ttl_s=600)
    now = int(time.time())
    for expires, valid in ((now + 600, True), (now + 600 + CLOCK_SKEW_S - 5, True),
                           (now + 600 + CLOCK_SKEW_S + 5, False), (now + 10 * 365 * 86400, False), (now - 1, False)):
        assert urls.verify("j", "0.png", str(expires), urls._signature("j", "0.png", expires)) is valid, expires
    assert not urls.verify("j", "0.png", "١٢٣", "x")  # digits, but not ASCII ones


def test_without_keys_nothing_is_signed_and_no_secret_is_made(tmp_path):
    urls = UrlSigner(Settings(api_keys={}, redis_url=None, data_dir=tmp_path))
    assert urls.sign("j", "0.png") == "" and urls.verify("j", "0.png", None, None)
    assert not (tmp_path / SECRET_FILE).exists()
