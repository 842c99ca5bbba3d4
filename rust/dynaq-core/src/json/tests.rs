//! Tests of [`super`].

use super::*;

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn repr(text: &str) -> String {
    parse(text).unwrap().py_repr()
}

/// Messages and positions as CPython 3.11's `json.loads` (with dynaq's hooks) gives them.
#[test]
fn errors_read_as_python_writes_them() {
    for (text, want) in [
        ("", "Expecting value: line 1 column 1 (char 0)"),
        (
            "{",
            "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("[", "Expecting value: line 1 column 2 (char 1)"),
        ("[1", "Expecting ',' delimiter: line 1 column 3 (char 2)"),
        (
            r#"{"a" 1}"#,
            "Expecting ':' delimiter: line 1 column 6 (char 5)",
        ),
        (
            r#"{"a":1 "b"}"#,
            "Expecting ',' delimiter: line 1 column 8 (char 7)",
        ),
        (
            r#"{"a":1,}"#,
            "Expecting property name enclosed in double quotes: line 1 column 8 (char 7)",
        ),
        ("[1,]", "Expecting value: line 1 column 4 (char 3)"),
        (r#"{"a":1} x"#, "Extra data: line 1 column 9 (char 8)"),
        (
            "\"abc",
            "Unterminated string starting at: line 1 column 1 (char 0)",
        ),
        (
            "\"ab\\",
            "Unterminated string starting at: line 1 column 1 (char 0)",
        ),
        (
            "\"a\x01\"",
            "Invalid control character at: line 1 column 3 (char 2)",
        ),
        (r#""\q""#, "Invalid \\escape: line 1 column 2 (char 1)"),
        (
            r#""\u12""#,
            "Invalid \\uXXXX escape: line 1 column 3 (char 2)",
        ),
        (
            r#""\u12"xxxx"#,
            "Invalid \\uXXXX escape: line 1 column 3 (char 2)",
        ),
        (
            r#""\u1234"#,
            "Invalid \\uXXXX escape: line 1 column 3 (char 2)",
        ),
        (
            r#""\ud800\uzzzz""#,
            "Invalid \\uXXXX escape: line 1 column 9 (char 8)",
        ),
        ("[1.]", "Expecting ',' delimiter: line 1 column 3 (char 2)"),
        ("[1e]", "Expecting ',' delimiter: line 1 column 3 (char 2)"),
        ("[-]", "Expecting value: line 1 column 2 (char 1)"),
        ("[-x]", "Expecting value: line 1 column 2 (char 1)"),
        ("[01]", "Expecting ',' delimiter: line 1 column 3 (char 2)"),
        ("[nan]", "Expecting value: line 1 column 2 (char 1)"),
        ("[NaN]", "non-standard JSON constant NaN"),
        ("[Infinity]", "non-standard JSON constant Infinity"),
        ("[-Infinity]", "non-standard JSON constant -Infinity"),
        // A syntax error later in the object wins over its duplicate key (Python's hook
        // only runs when the object closes); an inner object closes first.
        (
            r#"{"a":1,"a":2,}"#,
            "Expecting property name enclosed in double quotes: line 1 column 14 (char 13)",
        ),
        (r#"{"a":{"b":1,"b":2},"a":3}"#, "duplicate key 'b'"),
        (r#"{"a":{"b":1,"b":2}"#, "duplicate key 'b'"),
        (
            "\n\n  {\"a\" 1}",
            "Expecting ':' delimiter: line 3 column 8 (char 9)",
        ),
        // Positions count characters, not bytes.
        (
            "[\"é\" x]",
            "Expecting ',' delimiter: line 1 column 6 (char 5)",
        ),
    ] {
        assert_eq!(error(text), want, "{text:?}");
    }
}

#[test]
fn integer_digit_limit_is_cpythons() {
    let ok = format!("[{}]", "1".repeat(4300));
    assert!(parse(&ok).is_ok());
    let ok = format!("[{}.5]", "1".repeat(4400)); // floats have no limit
    assert_eq!(parse(&ok).unwrap().py_repr(), "[inf]");
    for sign in ["", "-"] {
        let text = format!("[{sign}{}]", "1".repeat(4301));
        assert_eq!(
            error(&text),
            "Exceeds the limit (4300 digits) for integer string conversion: value has 4301 \
             digits; use sys.set_int_max_str_digits() to increase the limit"
        );
    }
}

#[test]
fn nesting_is_limited_without_recursing_deeply() {
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(parse(&ok).is_ok());
    let text = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let e = parse(&text).unwrap_err();
    assert!(e.message.contains("nesting deeper than 64 levels"), "{e}");
    assert_eq!(e.offset, Some(6 + MAX_DEPTH - 1));
    let text = format!("{}1{}", "{\"a\":".repeat(65), "}".repeat(65));
    assert!(error(&text).starts_with("nesting deeper than 64 levels: line 1 column 321"));
}

#[test]
fn strings_and_surrogates() {
    let v = parse(r#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00é""#).unwrap();
    assert_eq!(v, Value::String("a\"\\/\u{8}\u{c}\n\r\té😀é".into()));
    for text in [r#""\ud800""#, r#""\udc00x""#, r#""\ud800\u0041""#] {
        let e = parse(text).unwrap_err();
        assert!(e.message.starts_with("Lone surrogate"), "{text}: {e}");
        assert_eq!(e.offset, Some(1));
    }
    // DEL and non-ASCII are not control characters to JSON.
    assert_eq!(
        parse("\"\x7f\u{85}\"").unwrap().as_str(),
        Some("\x7f\u{85}")
    );
    for c in 0u8..0x20 {
        let text = format!("\"{}\"", c as char);
        assert!(error(&text).starts_with("Invalid control character at"));
    }
}

#[test]
fn whitespace_around_the_value() {
    assert_eq!(parse(" \t\r\n{} \n  ").unwrap(), Value::Object(vec![]));
    assert!(error("{}\x0b").starts_with("Extra data"));
    assert!(error("\u{a0}{}").starts_with("Expecting value"));
}

#[test]
fn integers_as_u64() {
    let u = |t: &str| parse(t).unwrap().as_u64();
    assert_eq!(u("0"), Some(0));
    assert_eq!(u("-0"), Some(0));
    assert_eq!(u("18446744073709551615"), Some(u64::MAX));
    assert_eq!(u("18446744073709551616"), None);
    assert_eq!(u(&format!("1{}", "0".repeat(30))), None);
    assert_eq!(u("-1"), None);
    assert_eq!(u("1.0"), None);
    assert_eq!(u("1e2"), None);
    assert_eq!(u("true"), None);
    assert_eq!(u("\"1\""), None);
}

#[test]
fn python_reprs() {
    assert_eq!(
        repr(r#"[null, true, false, -0, 12, "x", [], {}, {"a": [1, {"b": null}]}]"#),
        "[None, True, False, 0, 12, 'x', [], {}, {'a': [1, {'b': None}]}]"
    );
    // Floats, as Python's repr() prints them.
    assert_eq!(
        repr(
            "[1e400, -1e400, 1e-400, -0.0, 1e16, 1e15, 0.0001, 0.00001, 1.5e-7, \
             123456789012345678901234567890.0, 2.0, 2.50, 1E5, 0.1, 1e22, 5e-324]"
        ),
        "[inf, -inf, 0.0, -0.0, 1e+16, 1000000000000000.0, 0.0001, 1e-05, 1.5e-07, \
         1.2345678901234568e+29, 2.0, 2.5, 100000.0, 0.1, 1e+22, 5e-324]"
    );
    // Quotes and escapes, as Python's repr() writes str.
    for (s, want) in [
        ("a'b", r#""a'b""#),
        ("a\"b", r#"'a"b'"#),
        ("a'\"b", r#"'a\'"b'"#),
        ("\\", r"'\\'"),
        ("\t\n\r\x00\x1f\x7f", r"'\t\n\r\x00\x1f\x7f'"),
        ("\u{80}\u{a0}\u{ad}é", r"'\x80\xa0\xadé'"),
        (
            "\u{2028}😀\u{fdd0}\u{e0001}\u{10ffff}",
            r"'\u2028😀\ufdd0\U000e0001\U0010ffff'",
        ),
        ("名前.weight", "'名前.weight'"),
    ] {
        assert_eq!(py_str_repr(s), want, "{s:?}");
    }
    let v = parse(r#"{"a'": "b\"", "\u0000": 1.5}"#).unwrap();
    assert_eq!(v.py_repr(), r#"{"a'": 'b"', '\x00': 1.5}"#);
}

#[test]
fn type_names() {
    let v = parse(r#"[null, true, 1, 1.0, "s", [], {}]"#).unwrap();
    let names: Vec<_> = v.as_array().unwrap().iter().map(Value::type_name).collect();
    assert_eq!(
        names,
        ["NoneType", "bool", "int", "float", "str", "list", "dict"]
    );
}
