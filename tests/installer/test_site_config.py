"""site.toml: the generated file documents every key; bad input names its line and fix."""

import pytest
from cmdop_install.errors import UserError
from cmdop_install.site import SCHEMA, default_site, parse_site, render_site_toml

pytestmark = pytest.mark.unit


def test_generated_site_toml_documents_every_key_and_parses_to_the_defaults():
    text = render_site_toml(default_site())
    assert parse_site(text) == default_site()
    lines = text.splitlines()
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in lines
        for name in keys:
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
            assert lines[index - 1].startswith("# ") and "Default:" in lines[index - 1]


def test_defaults_follow_the_security_model():
    site = default_site()
    assert site["rate_limits"] == {"auth_per_minute": 10, "session_per_minute": 100,
                                   "file_per_minute": 50, "input_kb_per_minute": 1024}
    assert site["sessions"] == {"idle_timeout_minutes": 30}
    assert site["audit"]["retention_days"] == 90
    assert site["tokens"] == {"access_ttl_seconds": 3600, "refresh_ttl_days": 30}
    assert site["postgres"]["major"] == 15 and site["site"]["debian_release"] == "bookworm"
    assert site["centrifugo"]["binary"] == "" and not site.centrifugo_enabled


def _broken(replace: str, with_: str) -> str:
    text = render_site_toml(default_site())
    assert replace in text
    return text.replace(replace, with_, 1)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("replace, with_, key, what", [
    ("port = 5432", "port = \"5432\"", "postgres.port", "must be an integer"),
    ("port = 5432", "port = 99999", "postgres.port", "must be between 1 and 65535"),
    ("retention_days = 90", "retention_days = true", "audit.retention_days",
     "must be an integer"),
    ("workers = 4", "workerz = 4", "control_plane.workerz", "unknown key"),
    ('domain = "cmdop.example.com"', 'domain = "not a name"', "site.domain",
     "must be a lower-case DNS name"),
    ('public_url = "https://cmdop.example.com"', 'public_url = "http://cmdop.example.com"',
     "site.public_url", "https:// URL"),
    ('public_url = "https://cmdop.example.com"', 'public_url = "https://other.example.com"',
     "site.public_url", "host differs from site.domain"),
    ('binary = ""', 'binary = "centrifugo"', "centrifugo.binary", "absolute path"),
    ("[audit]", "[auditing]", "auditing", "unknown section"),
])
def test_bad_values_report_file_line_key_what_and_fix(replace, with_, key, what):
    text = _broken(replace, with_)
    with pytest.raises(UserError) as err:
        parse_site(text)
    line = _line_of(text, with_)
    message = err.value.message
    assert message.startswith(f"site.toml:{line}: {key}: "), message
    assert what in message and message.endswith(")")
    assert err.value.exit_code == 2


def test_toml_syntax_error_names_its_line():
    text = _broken("workers = 4", "workers = = 4")
    with pytest.raises(UserError) as err:
        parse_site(text)
    assert err.value.message.startswith(f"site.toml:{_line_of(text, 'workers = = 4')}: syntax: ")
    assert err.value.exit_code == 2


def test_pki_lifetimes_must_outlast_the_renewal_window():
    text = _broken("leaf_days = 397", "leaf_days = 30")
    with pytest.raises(UserError, match=r"pki.leaf_days: must be longer than pki.renew_days"):
        parse_site(text)


@pytest.mark.parametrize("user", ["root", "cmdop", "postgres", "www-data"])
def test_agent_user_cannot_be_a_service_account(user):
    text = _broken('user = "cmdop-agent"', f'user = "{user}"')
    with pytest.raises(UserError, match=r"agent.user: must not be root or a service account"):
        parse_site(text)


def test_public_certificate_and_key_go_together():
    text = _broken('tls_cert_file = ""', 'tls_cert_file = "/etc/ssl/cmdop.pem"')
    with pytest.raises(UserError, match=r"site.tls_cert_file: tls_cert_file and tls_key_file "
                                        r"go together \(set both or neither\)"):
        parse_site(text)
