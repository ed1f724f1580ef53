"""The HTTP API (``aigi serve``): every endpoint, every limit and its status, mixed batches, the same schema as
``aigi detect --json``, concurrency and batching, and uploads that never touch the disk."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from serving import image_bytes, live_server
from typer.testing import CliRunner

from aigi import api
from aigi.cli import app as cli
from aigi.serve import schema
from aigi.serve.app import Limits, create_app
from aigi.serve.batcher import Batcher


@pytest.fixture(scope="module")
def default_model():
    return api.load()


def _client(models, **limits) -> TestClient:
    return TestClient(create_app(models, Limits(**limits)))


def _files(*items):
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


GOOD = [("a.png", image_bytes(1)), ("b.jpg", image_bytes(2, fmt="JPEG", smooth=False))]
GOOD_IMAGES = GOOD
BAD = ("notes.png", b"this is text, not a picture")


def test_health_ready_and_models(default_model):
    with _client({"default": default_model}) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        (info,) = client.get("/v1/models").json()
    assert info["name"] == "default" and info["default"] and info["detector"] == default_model.config.detector
    assert info["threshold"] == pytest.approx(default_model.threshold) and info["heatmap"] is True
    assert info["band"] == list(default_model.config.band) and info["trained_on"]


def test_a_bad_file_gets_its_error_and_the_others_their_verdicts(default_model):
    with _client({"default": default_model}) as client:
        res = client.post("/v1/detect", files=_files(GOOD[0], BAD, GOOD[1]))
    assert res.status_code == 200
    body = res.json()
    assert [r["path"] for r in body["results"]] == ["a.png", "notes.png", "b.jpg"]
    assert body["results"][1]["verdict"] == "error" and "not" in body["results"][1]["error"]
    assert all(r["verdict"] in ("generated", "real", "uncertain") for r in body["results"][::2])
    assert body["model"] == "default" and body["band"] == list(default_model.config.band)
    schema.DetectResponse.model_validate(body)  # the OpenAPI schema describes what is sent


def test_the_answer_is_the_clis_json_for_the_same_files(default_model, tmp_path):
    for name, data in (*GOOD, BAD):
        (tmp_path / name).write_bytes(data)
    cli_rows = json.loads(CliRunner().invoke(cli, ["detect", "--json", str(tmp_path)]).stdout)["results"]
    with _client({"default": default_model}) as client:
        api_rows = client.post("/v1/detect", files=_files(*GOOD, BAD)).json()["results"]
    by_name = {r["path"].rsplit("/", 1)[-1]: {**r, "path": None} for r in cli_rows}
    for row in api_rows:
        cli_row = by_name[row["path"]]
        assert {**row, "path": None, "error": None, "basis": None} == {**cli_row, "error": None, "basis": None}
        assert (row["error"] is None) == (cli_row["error"] is None)


def test_json_base64_bodies_give_the_same_verdicts_as_multipart(default_model):
    payload = {"images": [{"name": n, "data": base64.b64encode(d).decode()} for n, d in GOOD]}
    with _client({"default": default_model}) as client:
        as_json = client.post("/v1/detect", json=payload).json()
        as_files = client.post("/v1/detect", files=_files(*GOOD)).json()
        bad = client.post("/v1/detect", json={"images": [{"name": "x", "data": "%%%"}]})
        wrong = client.post("/v1/detect", json={"pictures": []})
    assert as_json == as_files
    assert bad.status_code == 422 and "not base64" in bad.json()["error"]
    assert wrong.status_code == 422 and "pictures" in wrong.json()["error"]


def test_options_threshold_provenance_and_explain(default_model, probe_dir):
    with _client({"default": default_model, "probe": api.load(probe_dir)}) as client:
        decided = client.post("/v1/detect?threshold=0.0&provenance=false&explain=true", files=_files(GOOD[0])).json()
        no_map = client.post("/v1/detect?model=probe&explain=true", files=_files(GOOD[0]))
        unknown = client.post("/v1/detect?model=nope", files=_files(GOOD[0]))
    (row,) = decided["results"]
    assert decided["band"] is None and decided["threshold"] == 0.0 and row["detector_verdict"] == "generated"
    assert "provenance" not in row and base64.b64decode(row["heatmap"]).startswith(b"\x89PNG")
    assert no_map.status_code == 422 and "no per-patch map" in no_map.json()["error"]
    assert unknown.status_code == 404 and "default, probe" in unknown.json()["error"]


def test_inspect_reads_provenance_without_a_model(default_model):
    with _client({"default": default_model}) as client:
        res = client.post("/v1/inspect", files=_files(GOOD[0], BAD))
    assert res.status_code == 200
    rows = res.json()["results"]
    assert [r["path"] for r in rows] == ["a.png", "notes.png"] and rows[1]["problems"]
    schema.InspectResponse.model_validate(res.json())


def test_each_limit_answers_with_its_status_and_a_json_error(default_model):
    with _client({"default": default_model}, max_upload_mb=0.2, max_images=2, max_megapixels=0.008) as client:
        big = client.post("/v1/detect", files=_files(("big.png", image_bytes(3, size=(600, 600), smooth=False))))
        many = client.post("/v1/detect", files=_files(*GOOD, GOOD[0]))
        pixels = client.post("/v1/detect", files=_files(("wide.png", image_bytes(4, size=(200, 50))), GOOD[0]))
        chunked = client.post("/v1/detect", content=iter([b"--x\r\n"]), headers={"content-type": "multipart/form-data"})
        text = client.post("/v1/detect", content=b"hello", headers={"content-type": "text/plain"})
        empty = client.post("/v1/detect", files={"note": (None, "no file here")})
        all_bad = client.post("/v1/detect", files=_files(BAD))
    assert big.status_code == 413 and "too large" in big.json()["error"]
    assert many.status_code == 413 and "too many images" in many.json()["error"]
    assert pixels.status_code == 200
    wide, fine = pixels.json()["results"]
    assert wide["verdict"] == "error" and "too many pixels (200 x 50" in wide["error"] and fine["verdict"] != "error"
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["error"]
    assert text.status_code == 415
    assert empty.status_code == 422 and "no image" in empty.json()["error"]
    assert all_bad.status_code == 422 and all_bad.json()["results"][0]["verdict"] == "error"


def _slow(monkeypatch, seconds: float) -> None:
    original = Batcher._detect

    def slow(self, items, options):
        time.sleep(seconds)
        return original(self, items, options)

    monkeypatch.setattr(Batcher, "_detect", slow)


async def _post_many(url: str, n: int, files) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/v1/detect", files=files) for _ in range(n)))


def test_a_full_queue_answers_503_with_retry_after_and_a_slow_request_504(default_model, monkeypatch):
    _slow(monkeypatch, 0.5)
    app = create_app({"default": default_model}, Limits(max_queue=1, batch_images=1, batch_wait_ms=0))
    with live_server(app) as url:
        answers = asyncio.run(_post_many(url, 6, _files(GOOD[0])))
    statuses = sorted(r.status_code for r in answers)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    with _client({"default": default_model}, timeout_s=0.1) as client:
        late = client.post("/v1/detect", files=_files(GOOD[0]))
    assert late.status_code == 504 and "longer than 0.1 s" in late.json()["error"]


def test_parallel_requests_get_the_sequential_answers_and_share_model_calls(default_model):
    files = [_files((f"img{i}.png", image_bytes(10 + i))) for i in range(8)]
    with _client({"default": default_model}) as client:
        sequential = [client.post("/v1/detect", files=f).json()["results"] for f in files]
    app = create_app({"default": default_model}, Limits(batch_wait_ms=50))

    async def parallel(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/detect", files=f) for f in files))

    with live_server(app) as url:
        answers = asyncio.run(parallel(url))
        batches = app.state.batchers["default"].batches
    assert [a.json()["results"] for a in answers] == sequential
    assert batches < len(files)  # requests that arrived together were scored together


def test_uploads_stay_in_memory(default_model, monkeypatch):
    import tempfile

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was spooled to disk")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_disk)
    big = image_bytes(5, size=(1200, 1000), smooth=False)  # ~3.6 MB: above Starlette's 1 MiB spool threshold
    assert len(big) > 2**21
    with _client({"default": default_model}) as client:
        res = client.post("/v1/detect?provenance=false", files=_files(("big.png", big)))
    assert res.status_code == 200 and res.json()["results"][0]["verdict"] != "error"


def test_one_log_line_per_request_without_file_names(default_model, caplog):
    with caplog.at_level(logging.INFO, logger="aigi.serve"):
        with _client({"default": default_model}) as client:
            client.post("/v1/detect", files=_files(("secret-name.png", image_bytes(6))))
    lines = [r.getMessage() for r in caplog.records if r.name == "aigi.serve"]
    assert len(lines) == 1 and lines[0].startswith("POST /v1/detect 200 1 images") and "secret" not in lines[0]


def test_the_openapi_schema_documents_bodies_and_errors(default_model):
    with _client({"default": default_model}) as client:
        spec = client.get("/openapi.json").json()
    detect = spec["paths"]["/v1/detect"]["post"]
    assert set(detect["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"200", "411", "413", "415", "422", "503", "504"} <= set(detect["responses"])
    assert {"/v1/inspect", "/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])


def test_the_page_and_its_assets_are_served_locally(default_model):
    with _client({"default": default_model}) as client:
        page = client.get("/")
        script = client.get("/static/app.js")
    assert page.status_code == 200 and "<form" in page.text and "/static/app.js" in page.text
    assert "http://" not in page.text.replace("http://127", "") and "https://" not in page.text  # no CDN
    assert script.status_code == 200 and "/v1/detect" in script.text


def test_worker_processes_build_the_same_app_from_the_environment(probe_dir, monkeypatch):
    from aigi.serve.app import CONFIG_VAR, from_environment

    limits = Limits(max_images=3).model_dump()
    monkeypatch.setenv(CONFIG_VAR, json.dumps({"models": [str(probe_dir), str(probe_dir)], "limits": limits}))
    app = from_environment()
    assert list(app.state.models) == ["probe", "probe-2"] and app.state.limits.max_images == 3
    with TestClient(app) as client:
        many = client.post("/v1/detect", files=_files(*GOOD, *GOOD))
    assert many.status_code == 413


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'", name="uvicorn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    res = CliRunner().invoke(cli, ["serve"])
    assert res.exit_code == 2 and res.output.strip() == (
        "error: aigi serve needs the serve extra (uvicorn is missing): pip install 'aigi[serve]'"
    )


@pytest.mark.parametrize("trim", [True, False])
def test_freed_memory_goes_back_after_each_batch_unless_told_not_to(default_model, monkeypatch, trim):
    calls = []
    monkeypatch.setattr("aigi.serve.batcher.release_freed_memory", lambda: calls.append(1))
    with _client({"default": default_model}, trim_memory=trim) as client:
        for _ in range(2):
            assert client.post("/v1/detect", files=_files(GOOD[0])).status_code == 200
    assert len(calls) == (2 if trim else 0)


def test_think_gives_each_result_its_path_and_refuses_what_it_cannot_do(default_model, probe_dir):
    from aigi import api as library

    probe = library.load(probe_dir)
    with _client({"default": default_model, "probe": probe}) as client:
        slow = client.post("/v1/detect?think=slow", files=_files(*GOOD)).json()["results"]
        auto = client.post("/v1/detect?think=auto", files=_files(*GOOD)).json()["results"]
        plain = client.post("/v1/detect", files=_files(*GOOD)).json()["results"]
        refusals = [
            client.post("/v1/detect?think=auto&threshold=0.5", files=_files(GOOD[0])),
            client.post("/v1/detect?think=slow&provenance=false", files=_files(GOOD[0])),
            client.post("/v1/detect?think=auto&model=probe", files=_files(GOOD[0])),
            client.post("/v1/detect?think=maybe", files=_files(GOOD[0])),
        ]
        fast_probe = client.post("/v1/detect?think=fast&model=probe", files=_files(GOOD[0]))
    assert all(r["thinking"]["path"] == "slow" and r["thinking"]["explanation"]["text"] for r in slow)
    assert all(r["thinking"]["mode"] == "auto" and r["thinking"]["reason"] for r in auto)
    assert all("thinking" not in r for r in plain)
    assert [r.status_code for r in refusals] == [422, 422, 422, 422]
    assert "slow path" in refusals[2].json()["error"]
    assert fast_probe.status_code == 200 and fast_probe.json()["results"][0]["thinking"]["path"] == "fast"


def test_a_newcomers_findings_stay_fixed(default_model, tmp_path):
    """Query errors in the documented shape; model=default is always the first model; an image refused for its
    pixels keeps the provenance field; data: URLs are taken; /docs needs no CDN; /v1/inspect of nothing readable
    is 422."""
    big = image_bytes(3, size=(1200, 1000))
    with _client({"mine": default_model}, max_megapixels=1.0) as client:
        bad_query = client.post("/v1/detect?threshold=2", files=_files(GOOD[0]))
        by_default = client.post("/v1/detect?model=default", files=_files(GOOD[0]))
        refused = client.post("/v1/detect", files=_files(GOOD[0], ("big.png", big))).json()["results"][1]
        data_url = "data:image/png;base64," + base64.b64encode(GOOD[0][1]).decode()
        as_url = client.post("/v1/detect", json={"images": [{"name": "a.png", "data": data_url}]})
        docs = client.get("/docs")
        asset = client.get("/docs-assets/swagger-ui-bundle.js")
        inspect_bad = client.post("/v1/inspect", files=_files(BAD))
    assert bad_query.status_code == 422 and bad_query.json() == {
        "error": "threshold=2: Input should be less than or equal to 1"
    }
    assert by_default.status_code == 200 and by_default.json()["model"] == "mine"
    assert refused["verdict"] == "error" and "--max-megapixels" in refused["error"] and "provenance" in refused
    assert as_url.status_code == 200 and as_url.json()["results"][0]["verdict"] != "error"
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text and "https://" not in docs.text.replace("https://swagger.io", "")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    assert inspect_bad.status_code == 422 and inspect_bad.json()["results"][0]["problems"]


def test_serve_refuses_a_port_in_use_before_loading_anything():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(cli, ["serve", "--port", str(port)])
    assert res.exit_code == 2 and f"--port {port}: cannot listen there" in res.output and "Traceback" not in res.output


def test_a_reasoner_answers_beside_the_evidence_of_think_slow(default_model):
    from test_reasoner import GOOD, Scripted

    reasoner = Scripted([f"<answer>{json.dumps(GOOD)}</answer>"])
    with TestClient(create_app({"default": default_model}, Limits(), reasoner)) as client:
        (result,) = client.post("/v1/detect?think=slow", files=_files(GOOD_IMAGES[0])).json()["results"]
    assert result["thinking"]["reasoner"]["answer"] == GOOD and result["thinking"]["evidence"]
