"""Which `authorization` values name a token (RFC 6750 §2.1), checked on the interceptor itself."""

from __future__ import annotations

import io

import jobwire
import pytest
from jobwire_server.api.auth import Token, TokenAuthInterceptor, hash_token
from jobwire_server.cli import main

SECRET = "abc-DEF_123.~+/=="
INTERCEPTOR = TokenAuthInterceptor([Token("t", bytes.fromhex(hash_token(SECRET)), frozenset({"admin"}))])


@pytest.mark.parametrize("value", [f"Bearer {SECRET}", f"bearer {SECRET}", f"BEARER {SECRET}"])
def test_accepted(value: str) -> None:
    assert INTERCEPTOR.authenticate([("authorization", value)]) is not None


@pytest.mark.parametrize("value", [
    f"Bearer  {SECRET}", f"Bearer {SECRET} ", f" Bearer {SECRET}", f"Bearer\t{SECRET}", f"Bearer{SECRET}",
    f"Token {SECRET}", SECRET, "Bearer ", "Bearer", f"Bearer {SECRET}\n", "Bearer a=b", "Bearer é",
])
def test_refused(value: str) -> None:
    assert INTERCEPTOR.authenticate([("authorization", value)]) is None


def test_two_values_are_refused() -> None:
    value = f"Bearer {SECRET}"
    assert INTERCEPTOR.authenticate([("authorization", value), ("Authorization", value)]) is None


@pytest.mark.parametrize("token", ["has space", "tab\there", "é", "a=b"])
def test_sdk_refuses_a_token_it_could_not_send(token: str) -> None:
    with pytest.raises(ValueError, match="RFC 6750"):
        jobwire.Client("127.0.0.1:1", token=token)


def test_hash_token_refuses_a_token_no_client_can_send(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("two words\n"))
    assert main(["hash-token"]) == 2
    assert "RFC 6750" in capsys.readouterr().err
