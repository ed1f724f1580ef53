"""C2PA Content Credentials: files signed here with a throwaway certificate chain, exact findings asserted,
tampered and malformed manifests give problems, never crashes. Offline; signing takes milliseconds."""

import datetime as dt
import io
import json
import sys
import types
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

c2pa = pytest.importorskip("c2pa")
pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from aigi.cli import app  # noqa: E402
from aigi.provenance import Provenance  # noqa: E402
from aigi.provenance.c2pa import TRUST_ANCHORS_ENV, c2pa_findings  # noqa: E402
from aigi.provenance.fusion import fuse  # noqa: E402

runner = CliRunner()
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
SUMMARY = "C2PA by aigi test org: created by Example Diffusion 1.0 (trainedAlgorithmicMedia)"
UNTRUSTED_NOTE = "; signed, but the signer is not on a trust list"


# -- a throwaway CA and signing certificate ---------------------------------------------------------------------
def _subject(common_name: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(**on) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def chain():
    """A root CA (P-256) and a leaf it issued: KeyUsage digitalSignature (critical), EKU emailProtection, SKI, AKI.
    C2PA refuses self-signed leaves and leaves without KeyUsage or AKI, so all of these are needed."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _subject("aigi test root", "aigi test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_subject("aigi test signer", "aigi test org"))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"certs": _pem(leaf) + _pem(ca), "key": key_pem, "ca": _pem(ca), "serial": str(leaf.serial_number)}


def _picture(fmt: str) -> bytes:
    im = Image.new("RGB", (64, 48))
    im.putdata([((x * 4) % 256, (y * 5) % 256, (x * y) % 256) for y in range(48) for x in range(64)])
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _sign(chain, data: bytes, mime: str, manifest: dict | None = None, intent=None) -> bytes:
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain["certs"], chain["key"], None))  # no TSA: offline
    manifest = manifest or {
        "claim_generator_info": [{"name": "aigi-test", "version": "0.1"}],
        "title": "generated picture",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED,
                            "softwareAgent": {"name": "Example Diffusion", "version": "1.0"},
                        }
                    ]
                },
            }
        ],
    }
    builder = c2pa.Builder(manifest)
    if intent is not None:
        builder.set_intent(intent)
    out = io.BytesIO()
    builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


@pytest.fixture(scope="module")
def signed(chain):
    return {"JPEG": _sign(chain, _picture("JPEG"), "image/jpeg"), "PNG": _sign(chain, _picture("PNG"), "image/png")}


def _read(data: bytes, **kw):
    """c2pa_findings on its own; a file PIL cannot open (cut inside a segment) gets a stand-in with the format."""
    try:
        im = Image.open(io.BytesIO(data))
    except OSError:
        im = types.SimpleNamespace(format="PNG" if data.startswith(b"\x89PNG") else "JPEG")
    problems: list[str] = []
    findings = c2pa_findings(im, data, problems, **kw)
    return findings, problems


# -- signed files -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_signed_by_an_unknown_signer_is_moderate(chain, signed, fmt, monkeypatch):
    monkeypatch.delenv(TRUST_ANCHORS_ENV, raising=False)
    findings, problems = _read(signed[fmt])
    assert problems == []
    (f,) = findings
    assert (f.source, f.claim, f.strength) == ("c2pa", "generated", "moderate")
    assert f.summary == SUMMARY + UNTRUSTED_NOTE
    d = f.details
    assert (d["issuer"], d["common_name"], d["alg"]) == ("aigi test org", "aigi test signer", "Es256")
    assert d["cert_serial_number"] == chain["serial"] and "time" not in d  # no time stamp authority
    assert d["claim_generator"].startswith("aigi-test 0.1")
    assert d["actions"] == [
        {"action": "c2pa.created", "digitalSourceType": TRAINED, "softwareAgent": "Example Diffusion 1.0"}
    ]
    assert d["ingredients"] == [] and d["validation_state"] == "Valid"
    assert d["validation_status"] == ["signingCredential.untrusted"] and d["trusted"] is False


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_trust_anchor_makes_it_strong(chain, signed, fmt, tmp_path, monkeypatch):
    (f,), problems = _read(signed[fmt], trust_anchors=chain["ca"])
    assert problems == [] and (f.claim, f.strength, f.summary) == ("generated", "strong", SUMMARY)
    assert (
        f.details["trusted"] is True
        and f.details["validation_state"] == "Trusted"
        and f.details["validation_status"] == []
    )
    bundle = tmp_path / "anchors.pem"
    bundle.write_bytes(chain["ca"])
    monkeypatch.setenv(TRUST_ANCHORS_ENV, str(bundle))
    (f,), problems = _read(signed[fmt])
    assert problems == [] and f.strength == "strong"
    monkeypatch.setenv(TRUST_ANCHORS_ENV, str(tmp_path / "missing.pem"))
    (f,), problems = _read(signed[fmt])
    assert f.strength == "moderate"
    assert problems == [
        f"C2PA trust anchors unreadable: {tmp_path / 'missing.pem'} (No such file or directory); signers checked against no trust list"
    ]


def test_fusion_basis(chain, signed):
    (moderate,), _ = _read(signed["JPEG"])
    (strong,), _ = _read(signed["JPEG"], trust_anchors=chain["ca"])
    for finding, basis in (
        (strong, "generated (declared: C2PA by aigi test org)"),
        (moderate, "generated (declared: C2PA by aigi test org; signer not on a trust list)"),
    ):
        v = fuse(0.03, 0.5, Provenance("x.jpg", [finding]))
        assert (v.label, v.basis, v.source) == ("generated", basis, "declared")


def test_inspect_and_detect_cli_show_it(signed, tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ANCHORS_ENV, raising=False)
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "signed.jpg").write_bytes(signed["JPEG"])
    (d / "signed.png").write_bytes(signed["PNG"])
    res = runner.invoke(app, ["inspect", "--json", str(d)])
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    for name in ("signed.jpg", "signed.png"):
        f = rows[name]["findings"][0]
        assert (f["source"], f["claim"], f["strength"], f["summary"]) == (
            "c2pa",
            "generated",
            "moderate",
            SUMMARY + UNTRUSTED_NOTE,
        )
        assert rows[name]["problems"] == []
    res = runner.invoke(app, ["detect", "--json", str(d)])
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    for name in ("signed.jpg", "signed.png"):
        assert rows[name]["verdict"] == "generated"
        assert rows[name]["basis"] == "generated (declared: C2PA by aigi test org; signer not on a trust list)"
        assert rows[name]["provenance"]["findings"][0]["source"] == "c2pa"


def test_edited_from_an_ai_ingredient(chain, signed):
    manifest = {
        "claim_generator_info": [{"name": "photo-editor", "version": "2"}],
        "title": "retouched",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [{"action": "c2pa.edited", "softwareAgent": {"name": "Photo Editor", "version": "2"}}]
                },
            }
        ],
    }
    data = _sign(chain, signed["JPEG"], "image/jpeg", manifest, intent=c2pa.C2paBuilderIntent.EDIT)
    (f,), problems = _read(data)
    assert problems == []
    assert (f.claim, f.strength) == ("ai-edited", "moderate")
    assert f.summary == (
        "C2PA by aigi test org: edited from an AI-generated ingredient "
        "(created by Example Diffusion 1.0 (trainedAlgorithmicMedia))" + UNTRUSTED_NOTE
    )
    assert [a["action"] for a in f.details["actions"]] == ["c2pa.opened", "c2pa.edited"]
    assert [i["relationship"] for i in f.details["ingredients"]] == ["parentOf"]
    assert (
        fuse(0.1, 0.5, Provenance("x", [f])).basis
        == "AI-edited (declared: C2PA by aigi test org; signer not on a trust list)"
    )


# -- tampered, malformed, absent -----------------------------------------------------------------------------------
def _flip(data: bytes, start: int, n: int) -> bytes:
    b = bytearray(data)
    for i in range(start, start + n):
        b[i] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_pixels_changed_after_signing(signed, fmt):
    data = signed[fmt]
    (f,), problems = _read(_flip(data, len(data) - 40, 8))  # the image data, after the manifest
    assert (f.claim, f.strength) == ("generated", "weak")
    assert f.summary.startswith(
        "C2PA manifest fails validation (assertion.dataHash.mismatch): by aigi test org, created by Example Diffusion"
    )
    assert f.details["validation_state"] == "Invalid" and f.details["trusted"] is False
    assert problems == [
        "C2PA manifest fails validation: assertion.dataHash.mismatch (the pixels were changed after signing)"
    ]
    v = fuse(0.2, 0.5, Provenance("x", [f]))
    assert v.basis == "generated (declared: C2PA by aigi test org; manifest fails validation; detector 0.20)"


def _manifest_edit(data: bytes, edit) -> bytes:
    """Apply ``edit`` to the manifest store's container (the PNG caBX chunk, the JPEG APP11 segment) and rewrite the
    container's length (and CRC), so that PIL still opens the file and only the manifest reader sees the damage."""
    if data.startswith(b"\x89PNG"):
        at = data.find(b"caBX") - 4
        length = int.from_bytes(data[at : at + 4], "big")
        payload = edit(data[at + 8 : at + 8 + length])
        chunk = len(payload).to_bytes(4, "big") + b"caBX" + payload + zlib.crc32(b"caBX" + payload).to_bytes(4, "big")
        return data[:at] + chunk + data[at + 12 + length :]
    at = data.find(b"\xff\xeb")
    length = int.from_bytes(data[at + 2 : at + 4], "big")
    payload = edit(data[at + 4 : at + 2 + length])
    assert len(payload) + 2 <= 0xFFFF, "the test manifest must fit one APP11 segment"
    return data[: at + 2] + (len(payload) + 2).to_bytes(2, "big") + payload + data[at + 2 + length :]


def _damage(data: bytes) -> dict[str, bytes]:
    """The same damage to a manifest store (given as bytes from the JUMBF superbox on)."""
    box = data.find(b"jumb")
    claim = data.find(b"c2cl")  # the claim box, inside the manifest
    return {
        "zeroed_header": data[:box] + bytes(36) + data[box + 36 :],
        "garbage_in_claim": _flip(data, claim + 60, 40),
        "garbage_inserted": data[: claim + 50] + bytes(range(256)) + data[claim + 50 :],
    }


def _variants(signed) -> dict[str, bytes]:
    jpg, png = signed["JPEG"], signed["PNG"]
    out = {"truncated.jpg": jpg[: jpg.find(b"c2cl") + 100], "truncated.png": png[: png.find(b"c2cl") + 100]}
    for kind in ("zeroed_header", "garbage_in_claim", "garbage_inserted"):
        for ext, data in (("jpg", jpg), ("png", png)):
            out[f"{kind}.{ext}"] = _manifest_edit(data, lambda payload, kind=kind: _damage(payload)[kind])
    out["garbage_appended.jpg"] = jpg + b"\x00garbage after the image" * 10
    out["unsigned.jpg"], out["unsigned.png"] = _picture("JPEG"), _picture("PNG")
    out["signed.bmp"] = _picture("BMP")
    return out


# What c2pa_findings says about each file's C2PA data (None: no finding, no problem), by a stable prefix.
EXPECTED_PROBLEMS = {
    "truncated.jpg": "C2PA data unreadable: Other: asset could not be parsed",
    "truncated.png": "C2PA data unreadable: Other: asset could not be parsed",
    "zeroed_header.jpg": "C2PA data unreadable: a manifest store is embedded but the reader does not recognise it",
    "zeroed_header.png": "C2PA data unreadable: Verify: unexpected end of file",
    "garbage_in_claim.jpg": "C2PA data unreadable: Decoding: claim could not be converted from CBOR",
    "garbage_in_claim.png": "C2PA data unreadable: Decoding: claim could not be converted from CBOR",
    "garbage_inserted.jpg": "C2PA data unreadable: Verify: invalid box header",
    "garbage_inserted.png": "C2PA data unreadable: Verify: invalid box header",
    "garbage_appended.jpg": "C2PA manifest fails validation: assertion.dataHash.mismatch (the pixels were changed after signing)",
    "unsigned.jpg": None,
    "unsigned.png": None,
    "signed.bmp": None,
}


def test_malformed_manifests_are_problems_not_crashes(signed):
    for name, data in _variants(signed).items():
        findings, problems = _read(data)
        expected = EXPECTED_PROBLEMS[name]
        if expected is None:
            assert (findings, problems) == ([], []), name
        else:
            assert len(problems) == 1 and problems[0].startswith(expected), (name, problems)
            assert [f.strength for f in findings] == (["weak"] if name == "garbage_appended.jpg" else []), name


def test_malformed_folder_through_the_cli(signed, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    for name, data in _variants(signed).items():
        (d / name).write_bytes(data)
    res = runner.invoke(app, ["inspect", "--json", str(d)])
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    assert set(rows) == set(EXPECTED_PROBLEMS)
    for name, expected in EXPECTED_PROBLEMS.items():
        if name.startswith(
            "truncated"
        ):  # PIL cannot open a file cut inside a segment/chunk; the C2PA reader still looks
            assert (
                rows[name]["problems"][0]
                == "metadata unreadable: the file could not be opened (OSError: Truncated File Read)"
            )
            assert rows[name]["problems"][1].startswith("C2PA data unreadable: Other: asset could not be parsed"), rows[
                name
            ]
        elif expected is None:
            assert rows[name]["findings"] == [] and rows[name]["problems"] == [], name
        else:
            assert [p for p in rows[name]["problems"] if p.startswith("C2PA")][0].startswith(expected), name
    assert rows["garbage_appended.jpg"]["findings"][0]["strength"] == "weak"
    table = runner.invoke(app, ["inspect", str(d)])
    assert table.exit_code == 0 and "C2PA data unreadable" in table.output


def test_remote_manifest_is_not_fetched(chain):
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain["certs"], chain["key"], None))
    builder = c2pa.Builder(
        {
            "claim_generator_info": [{"name": "aigi-test", "version": "0.1"}],
            "assertions": [
                {
                    "label": "c2pa.actions",
                    "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": TRAINED}]},
                }
            ],
        }
    )
    builder.set_no_embed()
    builder.set_remote_url("http://127.0.0.1:9/manifest.c2pa")
    out = io.BytesIO()
    builder.sign(signer, "image/jpeg", io.BytesIO(_picture("JPEG")), out)
    findings, problems = _read(out.getvalue())
    assert findings == [] and problems == ["C2PA manifest is remote (not fetched): http://127.0.0.1:9/manifest.c2pa"]


def test_without_the_package(signed, monkeypatch):
    monkeypatch.setitem(sys.modules, "c2pa", None)  # import c2pa now raises ImportError
    assert _read(signed["PNG"]) == ([], ["C2PA not checked: the c2pa-python package is not installed"])
    assert _read(signed["JPEG"]) == ([], ["C2PA not checked: the c2pa-python package is not installed"])
    assert _read(_picture("JPEG")) == ([], [])
