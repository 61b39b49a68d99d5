"""HuJSON: JSON plus comments and trailing commas, every value with its line, every error with one."""

from __future__ import annotations

import json
import random

import pytest

from server.policy.errors import PolicyError
from server.policy.hujson import MAX_DEPTH, parse


def test_plain_json_parses_like_json():
    text = '{"a": [1, -2.5e3, "x\\u00e9\\n", true, false, null], "b": {"c": {}}, "d": []}'
    assert parse(text).plain() == json.loads(text)


def test_comments_and_trailing_commas():
    text = """
    // a line comment
    {
      "a": 1, /* block
                 comment over lines */
      "b": [1, 2, 3,],   // trailing comma in an array
      "c": {"d": "e",},  // ... and in an object
      "url": "http://x//y", "star": "/* not a comment */",
    }
    /* after */ // end
    """
    assert parse(text).plain() == {"a": 1, "b": [1, 2, 3], "c": {"d": "e"},
                                   "url": "http://x//y", "star": "/* not a comment */"}


def test_lines_of_values_and_keys():
    text = '{\n  "acls": [\n    /* x\n    y */ {"src":\n      ["a"]}\n  ],\n  "hosts": {}\n}'
    root = parse(text)
    assert root.line == 1
    assert root.key_lines == {"acls": 2, "hosts": 7}
    rule = root.value["acls"].value[0]
    assert rule.line == 4
    assert rule.key_lines["src"] == 4
    assert rule.value["src"].line == 5
    assert rule.value["src"].value[0].line == 5


def test_bom_and_crlf():
    assert parse('\ufeff{\r\n"a"\r\n:\r\n1}').key_lines == {"a": 2}


def test_surrogate_pair():
    assert parse('"\\ud83d\\ude00"').value == "\U0001F600"


BAD = [
    ("", 1, "empty file"),
    ("{", 1, "unterminated object"),
    ('{"a": 1,\n\n', 3, "unterminated object (opened on line 1)"),
    ('{"a": 1 "b": 2}', 1, "expected ',' or '}'"),
    ('{"a": [1, 2}', 1, "expected ',' or ']'"),
    ('{"a": [,]}', 1, "unexpected ','"),
    ('{"a": [1,,2]}', 1, "unexpected ','"),
    ('{"a": 1,,}', 1, "expected a quoted key"),
    ("{a: 1}", 1, "expected a quoted key"),
    ("{'a': 1}", 1, "expected a quoted key"),
    ('{"a": \'x\'}', 1, "double quotes"),
    ('{"a": "x\n"}', 1, "line break inside a string"),
    ('{\n"a": "x', 2, "unterminated string"),
    ('{"a": "\\x"}', 1, "invalid escape"),
    ('{"a": "\\u12"}', 1, "four hex digits"),
    ('{"a": "\\ud800"}', 1, "unpaired surrogate"),
    ('{"a": 01}', 1, "invalid number"),
    ('{"a": 1.}', 1, "digits after '.'"),
    ('{"a": 1e}', 1, "exponent"),
    ('{"a": -}', 1, "invalid number"),
    ('{"a": tru}', 1, "expected a value"),
    ('{"a": truex}', 1, "expected a value"),
    ('{"a": NaN}', 1, "expected a value"),
    ('{"a": 1}\n}', 2, "after the end"),
    ('{"a": 1}\n\n{"b": 2}', 3, "after the end"),
    ('{\n"a": 1,\n"a": 2}', 3, "duplicate key 'a' (first on line 2)"),
    ("{\n/* never closed\n", 2, "unterminated /* comment"),
    ('{"a":\n\n]', 3, "unexpected ']'"),
    ('{"a": 1 /}', 1, "unexpected '/'"),
    ('{"a":\x01}', 1, "U+0001"),
]


@pytest.mark.parametrize("text,line,message", BAD)
def test_errors_name_file_line_and_problem(text, line, message):
    with pytest.raises(PolicyError) as err:
        parse(text, "policy.hujson")
    assert err.value.line == line
    assert message in err.value.message
    assert str(err.value).startswith(f"policy.hujson:{line}: ")


def test_depth_is_bounded():
    parse("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(PolicyError, match="nested deeper"):
        parse("[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2))


def test_random_garbage_parses_or_raises_policy_error_only():
    """The h11 fuzz invariant: any input either parses or raises PolicyError, nothing else."""
    rng = random.Random(1234)
    seeds = ['{"a": [1, {"b": "c"}, true], "d": null}', '{"x": "\\u00e9 //", /* c */ "y": [1,2,],}']
    alphabet = '{}[],:"\\/*\n 0123456789.-+eEtrufalsn\'x\u00e9'
    for _ in range(3000):
        s = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(s) + 1)
            if op < 0.4 and s:
                del s[min(pos, len(s) - 1)]
            elif op < 0.8:
                s.insert(pos, rng.choice(alphabet))
            else:
                s[min(pos, len(s) - 1):] = []
        text = "".join(s)
        try:
            node = parse(text)
        except PolicyError as exc:
            assert exc.line is not None and 1 <= exc.line <= text.count("\n") + 1
        else:
            node.plain()
