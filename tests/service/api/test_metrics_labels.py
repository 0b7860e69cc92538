"""HTTP metrics' labels are bounded: a method the parser accepts but Fresco does not serve counts as "other"."""

from __future__ import annotations


def test_unknown_methods_share_one_label(api):
    for method in ("PROPFIND", "MKCOL", "PURGE", "SEARCH"):
        assert api.request(method, "/healthz").status_code == 405
    api.get("/healthz")
    text = api.get("/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("fresco_http_requests_total{")]
    methods = {line.split('method="')[1].split('"')[0] for line in lines}
    assert "other" in methods and methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    assert 'fresco_http_requests_total{handler="/healthz",method="other",status="405"} 4.0' in text
