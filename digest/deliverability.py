"""The DNS records a sender's domain needs before mailbox providers accept bulk mail from it.

Gmail and Yahoo ask bulk senders for SPF and DKIM that pass, a DMARC policy, and one-click
unsubscribe (RFC 8058) whose headers the DKIM signature covers. `dns_records` lists the three
TXT records for MAIL_FROM's domain, the DKIM one with the public half of the configured key;
`digest dns-check` prints them in zone-file form.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from .settings import Settings

TXT_CHUNK = 255  # a TXT record is a list of strings of at most 255 bytes each


@dataclass(frozen=True)
class DnsRecord:
    name: str  # fully qualified, with the final dot
    value: str
    why: str
    type: str = "TXT"

    def zone_line(self) -> str:
        """The record as a zone-file line, the value split into 255-byte strings."""
        chunks = [self.value[i : i + TXT_CHUNK] for i in range(0, len(self.value), TXT_CHUNK)]
        quoted = " ".join(f'"{chunk}"' for chunk in chunks)
        return f"{self.name}\t3600\tIN\t{self.type}\t{quoted}"


@dataclass
class DnsReport:
    domain: str
    records: list[DnsRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what to fix first, with how


class DeliverabilityError(ValueError):
    """The DKIM key cannot be read or used; the message says how to fix it."""


def dkim_public_key(private_key_pem: bytes) -> str:
    """The p= of the DKIM record: the base64 DER SubjectPublicKeyInfo of an RSA private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DeliverabilityError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DeliverabilityError("the DKIM key must be RSA (rsa-sha256)")
    if key.key_size < 1024:
        raise DeliverabilityError(f"a {key.key_size}-bit key is too short: use 2048 bits")
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def dns_records(
    settings: Settings,
    spf_includes: tuple[str, ...] = (),
    dmarc_policy: str = "none",
    dmarc_report_to: str = "",
) -> DnsReport:
    """SPF, DKIM and DMARC TXT records for the domain of MAIL_FROM (and DKIM_DOMAIN)."""
    domain = settings.mail_domain
    report = DnsReport(domain)
    if domain in ("localhost",) or "." not in domain:
        report.problems.append(
            f"MAIL_FROM's domain is {domain!r}: set MAIL_FROM to an address at a domain you own."
        )
    senders = ["mx", *(f"include:{d}" for d in spf_includes)]
    if settings.mail_backend == "smtp" and settings.smtp_host not in ("localhost", "127.0.0.1"):
        senders.append(f"a:{settings.smtp_host}")
    report.records.append(DnsRecord(
        f"{domain}.", f"v=spf1 {' '.join(senders)} ~all",
        "SPF: which servers may send as this domain (add your provider's include:).",
    ))
    dkim_domain = settings.dkim_signing_domain
    if not settings.dkim_private_key_path:
        report.problems.append(
            "DKIM_PRIVATE_KEY_PATH is not set, so mail goes out unsigned: make a key with "
            "`openssl genrsa -out dkim.pem 2048`, set DKIM_PRIVATE_KEY_PATH=dkim.pem, and run "
            "this again for its record."
        )
    else:
        try:
            pem = Path(settings.dkim_private_key_path).expanduser().read_bytes()
        except OSError as exc:
            raise DeliverabilityError(
                f"cannot read DKIM_PRIVATE_KEY_PATH={settings.dkim_private_key_path!r}: {exc}"
            ) from exc
        report.records.append(DnsRecord(
            f"{settings.dkim_selector}._domainkey.{dkim_domain}.",
            f"v=DKIM1; k=rsa; p={dkim_public_key(pem)}",
            f"DKIM: the public key for selector {settings.dkim_selector!r}.",
        ))
    if dkim_domain != domain and not domain.endswith("." + dkim_domain):
        report.problems.append(
            f"DKIM_DOMAIN={dkim_domain!r} does not align with MAIL_FROM's domain {domain!r}: "
            "DMARC will not pass on DKIM."
        )
    dmarc = f"v=DMARC1; p={dmarc_policy}; adkim=r; aspf=r"
    if dmarc_report_to:
        dmarc += f"; rua=mailto:{dmarc_report_to}"
    report.records.append(DnsRecord(
        f"_dmarc.{domain}.", dmarc,
        "DMARC: what receivers do with mail that fails SPF and DKIM alignment "
        "(start with p=none, then quarantine).",
    ))
    return report
