"""A 405 lists every method of its path in `Allow`; the OpenAPI schema of image fields states the forms the
validator reads, so a string the schema admits (`"0"` was one) is one the validator reads too."""

from __future__ import annotations

import base64
import random
import re

import pytest

from service.api.inputs import ImageRejected, _b64_bytes, is_url
from service.api.schemas import IMAGE_MAX_LENGTH, IMAGE_PATTERN
from tests.conftest import png_data_url


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "PROPFIND"])
def test_405_on_a_job_lists_get_and_delete(api, method):
    r = api.request(method, "/jobs/0123456789abcdef")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert [m.strip() for m in r.headers["allow"].split(",")] == ["GET", "DELETE"]


def test_every_documented_path_allows_what_it_documents(api):
    for path, operations in api.get("/openapi.json").json()["paths"].items():
        documented = {m.upper() for m in operations}
        method = next(m for m in ("PUT", "PATCH", "OPTIONS", "POST") if m not in documented)
        r = api.request(method, re.sub(r"\{[^}]+\}", "x", path))
        assert r.status_code == 405, (method, path)
        assert {m.strip() for m in r.headers["allow"].split(",")} == documented, path


def test_image_fields_in_the_schema_carry_the_pattern(api):
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    images = [(name, field, spec) for name, schema in schemas.items()
              for field, spec in schema.get("properties", {}).items() if spec.get("maxLength") == IMAGE_MAX_LENGTH]
    assert len(images) >= 5
    assert all(spec.get("pattern") == IMAGE_PATTERN for _, _, spec in images), images


def schema_admits(ref: str) -> bool:
    return len(ref) >= 1 and re.search(IMAGE_PATTERN, ref) is not None


def validator_reads(ref: str) -> bool:
    """Whether inputs.py takes `ref`'s form (a URL's scheme, or base64 that decodes to some bytes)."""
    if is_url(ref):
        scheme, sep, rest = ref.strip().partition("://")
        return scheme.lower() in ("http", "https") and rest[:1] not in ("", "/", "?", "#") and not rest[0].isspace()
    try:
        return len(_b64_bytes(ref, 10**9)) > 0
    except ImageRejected:
        return False


def test_the_schema_and_the_validator_agree_on_forms():
    png = png_data_url(8, 8)
    bare = png.split(",", 1)[1]
    examples = ["0", "", "AAA", "AAAA", "AA==", "AAA=", "AAAA=", "AA=A", "A===", " AAAA\nAAAA ", bare,
                bare[:40] + "\n" + bare[40:], png, png.upper()[:22] + png[22:], "data:image/gif;base64,AAAA",
                "data:image/png;base64,", "data:,AAAA", "https://example.com/a.png", "HTTP://example.com/a",
                "  https://example.com/a", "https://", "https:///a", "ftp://example.com/a", "//example.com/a"]
    rng = random.Random(0)
    prefixes = ["", "", "data:image/png;base64,", "Data:Image/WEBP;base64,", "data:image/jpg;base64,",
                "data:image/svg;base64,", "data:"]
    for _ in range(3000):
        body = "".join(rng.choice("Aa0+/=== \n-") for _ in range(rng.randrange(0, 11)))
        examples.append(rng.choice(prefixes) + body)
    disagree = [e for e in examples if schema_admits(e) != validator_reads(e)]
    assert not disagree, disagree[:10]
    assert not schema_admits("0") and schema_admits(png) and schema_admits(bare)


def test_a_schema_valid_image_is_accepted_and_zero_is_refused(api):
    image = base64.b64encode(base64.b64decode(png_data_url(64, 64).split(",", 1)[1])).decode()
    assert re.search(IMAGE_PATTERN, image)
    r = api.post("/generate", json={"task": "img2img", "prompt": "x", "image": "0"})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "image"
