"""`digest dns-check` and the records behind it: SPF, DKIM (from the configured key), DMARC."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from digest.cli import main
from digest.deliverability import DeliverabilityError, dkim_public_key, dns_records
from digest.mail.dkim import dkim_sign

from .conftest import make_settings

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                        serialization.NoEncryption())


def test_records_for_the_sending_domain(tmp_path: Path) -> None:
    (tmp_path / "dkim.pem").write_bytes(PEM)
    settings = make_settings(tmp_path, mail_from="Paper Digest <digest@papers.example.org>",
                             dkim_private_key_path=str(tmp_path / "dkim.pem"),
                             dkim_selector="s1", mail_backend="smtp", smtp_host="smtp.relay.test")
    report = dns_records(settings, ("sendgrid.net",), "quarantine", "dmarc@papers.example.org")
    spf, dkim_record, dmarc = report.records
    assert report.problems == []
    assert spf.name == "papers.example.org."
    assert spf.value == "v=spf1 mx include:sendgrid.net a:smtp.relay.test ~all"
    assert dkim_record.name == "s1._domainkey.papers.example.org."
    assert dmarc.name == "_dmarc.papers.example.org."
    assert dmarc.value == ("v=DMARC1; p=quarantine; adkim=r; aspf=r; "
                           "rua=mailto:dmarc@papers.example.org")
    # The published key is the one that verifies what we sign.
    message = b"From: digest@papers.example.org\r\nSubject: hi\r\nDate: x\r\n\r\nbody\r\n"
    signed = dkim_sign(settings, message)
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: dkim_record.value.encode())
    # Long TXT values are split into strings of at most 255 characters.
    strings = re.findall(r'"([^"]*)"', dkim_record.zone_line())
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == dkim_record.value


def test_missing_key_and_misaligned_domain_are_reported(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mail_from="digest@localhost", dkim_domain="other.test")
    report = dns_records(settings)
    assert [r.name.split(".")[0] for r in report.records] == ["localhost", "_dmarc"]
    text = " ".join(report.problems)
    assert "openssl genrsa" in text and "does not align" in text and "domain you own" in text


def test_keys_that_cannot_sign_are_refused() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(DeliverabilityError, match="RSA"):
        dkim_public_key(ec_pem)
    with pytest.raises(DeliverabilityError, match="PEM"):
        dkim_public_key(b"not a key")
    der = base64.b64decode(dkim_public_key(PEM))
    assert serialization.load_der_public_key(der).public_numbers() == (
        KEY.public_key().public_numbers())


def test_dns_check_prints_zone_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dkim.pem").write_bytes(PEM)
    env = {"DATA_DIR": str(tmp_path / "data"), "MAIL_FROM": "Digest <digest@example.org>",
           "DKIM_PRIVATE_KEY_PATH": str(tmp_path / "dkim.pem"), "DKIM_SELECTOR": "digest"}
    result = CliRunner().invoke(main, ["dns-check", "--include", "mailgun.org"], env=env)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith(";")]
    assert lines[0] == 'example.org.\t3600\tIN\tTXT\t"v=spf1 mx include:mailgun.org ~all"'
    assert lines[1].startswith('digest._domainkey.example.org.\t3600\tIN\tTXT\t"v=DKIM1; k=rsa; p=')
    assert lines[2] == '_dmarc.example.org.\t3600\tIN\tTXT\t"v=DMARC1; p=none; adkim=r; aspf=r"'
    env["DKIM_PRIVATE_KEY_PATH"] = str(tmp_path / "nope.pem")
    missing = CliRunner().invoke(main, ["dns-check"], env=env)
    assert missing.exit_code == 1 and "cannot read DKIM_PRIVATE_KEY_PATH" in missing.output
