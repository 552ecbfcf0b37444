"""rules.py: route and exclude rules, and RFC 7240 ``Prefer`` parsing."""

from __future__ import annotations

import pytest

from wsgi_deferred.errors import ConfigurationError, DeferredError
from wsgi_deferred.rules import NO_PREFERENCES, Preferences, RuleSet, parse_prefer, wsgi_path

# -- RuleSet -----------------------------------------------------------------------------------


def test_rule_without_methods_matches_every_method() -> None:
    rules = RuleSet(["/export"])
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        assert rules.matches(method, "/export"), method
    assert not rules.matches("GET", "/exports")
    assert not rules.matches("GET", "/")


def test_rule_with_methods_matches_only_those() -> None:
    rules = RuleSet(["POST /render/<id>"])
    assert rules.matches("POST", "/render/42")
    assert rules.matches("post", "/render/42")  # methods compare case-insensitively
    assert not rules.matches("GET", "/render/42")
    assert not rules.matches("PUT", "/render/42")
    assert not rules.matches("POST", "/render/")
    assert not rules.matches("POST", "/render/42/more")


def test_method_lists_and_converters() -> None:
    rules = RuleSet(["GET,POST /reports/<path:rest>", "put /items/<int:n>"])
    assert rules.matches("GET", "/reports/2024/q1.csv")
    assert rules.matches("POST", "/reports/x")
    assert not rules.matches("DELETE", "/reports/x")
    assert rules.matches("PUT", "/items/7")
    assert not rules.matches("PUT", "/items/seven")  # the int converter must apply


def test_single_string_is_one_rule() -> None:
    rules = RuleSet("POST /render/<id>")
    assert rules.specs == ("POST /render/<id>",)
    assert rules.matches("POST", "/render/1")


def test_empty_ruleset_is_falsy_and_matches_nothing() -> None:
    for empty in (RuleSet(), RuleSet(None), RuleSet([])):
        assert not empty
        assert empty.prefixes == ()
        assert not empty.matches("GET", "/")
    assert RuleSet(["/x"])
    assert "'/x'" in repr(RuleSet(["/x"]))


def test_prefixes_are_static_text_before_first_converter() -> None:
    rules = RuleSet(["POST /render/<id>", "/reports/<path:rest>", "/export"])
    assert rules.prefixes == ("/export", "/render/", "/reports/")


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        "render/<id>",  # no leading slash
        "POST render",
        ",, /x",  # a method list with no method in it
        ", /x",
        "P@ST /x",
        "GET /a /b",  # three parts
        "/x/<nosuchconverter:y>",
        "/x/<int:y",  # unbalanced
        "/x/<a>/<a>",  # duplicate variable
    ],
)
def test_invalid_rules_raise_configuration_error(spec: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RuleSet([spec])
    assert isinstance(info.value, DeferredError)


def test_non_string_rule_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        RuleSet([42])  # type: ignore[list-item]


def test_non_ascii_rules_match_pep3333_path_info() -> None:
    rules = RuleSet(["/berichte/größe/<id>"])
    path_info = wsgi_path("/berichte/größe/7")
    assert path_info != "/berichte/größe/7"  # PATH_INFO holds UTF-8 bytes as latin-1
    assert rules.matches("GET", path_info)
    assert rules.prefixes == (wsgi_path("/berichte/größe/"),)
    # A non-ASCII variable part works as well.
    assert RuleSet(["/r/<name>"]).matches("GET", wsgi_path("/r/日本語"))


def test_undecodable_path_info_does_not_raise() -> None:
    rules = RuleSet(["/r/<name>"])
    # Latin-1 text that is not UTF-8 once encoded: matched as it is, no exception.
    assert rules.matches("GET", "/r/\xff\xfe")
    assert not rules.matches("GET", "/other/\xff")


def test_wsgi_path() -> None:
    assert wsgi_path("/plain") == "/plain"
    assert wsgi_path("/é") == "/\xc3\xa9"


# -- Prefer ------------------------------------------------------------------------------------


def test_no_header_means_no_preferences() -> None:
    assert parse_prefer(None) is NO_PREFERENCES
    assert parse_prefer("") is NO_PREFERENCES
    assert Preferences(False, None) == NO_PREFERENCES


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("respond-async", Preferences(True, None)),
        ("Respond-Async", Preferences(True, None)),
        ("wait=10", Preferences(False, 10.0)),
        ("wait=0.5", Preferences(False, 0.5)),
        ('wait="3"', Preferences(False, 3.0)),
        ("respond-async, wait=5", Preferences(True, 5.0)),
        ("wait=5, respond-async", Preferences(True, 5.0)),
        ("respond-async;foo=bar", Preferences(True, None)),
        (" respond-async ,  wait = 2 ", Preferences(True, 2.0)),
        ("return=minimal, respond-async", Preferences(True, None)),
        ("wait=1, wait=9", Preferences(False, 1.0)),  # the first wait wins (RFC 7240 §2)
        ("wait=0", Preferences(False, 0.0)),
    ],
)
def test_parse_prefer(header: str, expected: Preferences) -> None:
    assert parse_prefer(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "wait=abc",
        "wait=",
        "wait",
        "wait=-1",
        "wait=inf",
        "wait=nan",
        "wait=1e999",
        "respond-async-please",
        "async",
        ";;;,,,",
        "=",
        "wait=½",
        "\x00\xff",
        "respond_async",
    ],
)
def test_garbage_prefer_values_are_ignored(header: str) -> None:
    assert parse_prefer(header) == NO_PREFERENCES


def test_garbage_wait_does_not_hide_respond_async() -> None:
    assert parse_prefer("wait=soon, respond-async") == Preferences(True, None)
