//! Tests of [`super`].

use super::*;

/// A file of this header text and `data_len` zero bytes of data.
fn file(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data_len, 0);
    b
}

fn message(bytes: &[u8]) -> String {
    match read(bytes) {
        Ok(h) => panic!("accepted: {h:?}"),
        Err(Error::Corrupt(m)) => m,
        Err(e) => panic!("not Corrupt: {e:?}"),
    }
}

const KNOWN: &str = "BF16, BOOL, C64, F16, F32, F4, F64, F6_E2M3, F6_E3M2, F8_E4M3, F8_E5M2, \
                     F8_E8M0, I16, I32, I64, I8, U16, U32, U64, U8";

#[test]
fn dtype_table() {
    assert_eq!(known_dtypes(), KNOWN);
    for (i, d) in Dtype::ALL.into_iter().enumerate() {
        assert_eq!(d as usize, i);
        assert_eq!(Dtype::from_name(d.name()), Some(d));
    }
    assert_eq!(Dtype::from_name("f32"), None);
    assert_eq!((Dtype::Bf16.name(), Dtype::Bf16.bits()), ("BF16", 16));
    assert_eq!((Dtype::F6E3M2.name(), Dtype::F6E3M2.bits()), ("F6_E3M2", 6));
    assert_eq!(Dtype::F4.nbytes(&[3]), None);
    assert_eq!(Dtype::F4.nbytes(&[2, 3]), Some(3));
    assert_eq!(Dtype::F64.nbytes(&[]), Some(8));
    assert_eq!(Dtype::F64.nbytes(&[usize::MAX, usize::MAX, 0]), Some(0));
    assert_eq!(Dtype::U8.nbytes(&[usize::MAX, 2]), None);
    assert_eq!(
        Dtype::F4.nbytes(&[usize::MAX, usize::MAX, usize::MAX]),
        None
    );
}

/// `test_not_a_safetensors_file` of tests/test_safetensors.py, and the first BAD_FILES of
/// tests/test_contract.py.
#[test]
fn not_a_safetensors_file() {
    let len = |n: u64| n.to_le_bytes().to_vec();
    let cat = |a: Vec<u8>, b: &[u8]| [a.as_slice(), b].concat();
    for (bytes, want) in [
        (vec![], "not a safetensors file (0 bytes; the 8-byte header length is missing)"),
        (b"abc".to_vec(), "not a safetensors file (3 bytes; the 8-byte header length is missing)"),
        (vec![1, 0, 0], "not a safetensors file (3 bytes; the 8-byte header length is missing)"),
        (len(1_000_000_000), "not a safetensors file (header length 1000000000 is above the 100 MB limit)"),
        (cat(len(1 << 62), b"{}"), "not a safetensors file (header length 4611686018427387904 is above the 100 MB limit)"),
        (cat(len(50), b"{}"), "header length 50 runs past the end of the 10-byte file (truncated, or not a safetensors file)"),
        (cat(len(2), b"\xff\xfe"), "not a safetensors file (header is not UTF-8)"),
        (cat(len(2), b"[]"), "not a safetensors file (header does not start with '{')"),
        (cat(len(3), b"{x}"), "not a safetensors file (header is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        (len(0), "not a safetensors file (header does not start with '{')"),
        (cat(len(4), b"{abc"), "not a safetensors file (header is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        (cat(len(3), b" {}"), "not a safetensors file (header does not start with '{')"),
    ] {
        assert_eq!(message(&bytes), want);
    }
    // header_len alone: the prefix may be longer or shorter than 8 bytes.
    assert_eq!(header_len(&cat(len(2), b"{}xx"), 12), Ok(2));
    assert!(header_len(&[2, 0], 12).is_err());
    assert_eq!(
        header_len(&len(MAX_HEADER), 8 + MAX_HEADER),
        Ok(MAX_HEADER as usize)
    );
    assert!(header_len(&len(MAX_HEADER + 1), u64::MAX).is_err());
    assert!(header_len(&len(u64::MAX), u64::MAX).is_err());
}

/// `test_header_json_problems`, `test_bad_tensor_entries`,
/// `test_offsets_truncation_overlap_gap_and_trailing_bytes` (tests/test_safetensors.py) and
/// BAD_FILES (tests/test_contract.py), with more cases: each message is the one Python's
/// `_read_header` gives for the same bytes (without its path prefix).
#[test]
fn messages_match_python() {
    let known = format!("(known: {KNOWN})");
    let cases: &[(&str, usize, String)] = &[
        // test_header_json_problems
        (r#"{"a": 1, "a": 2}"#, 0, "not a safetensors file (header is not valid JSON: duplicate key 'a')".into()),
        (r#"{"a": NaN}"#, 0, "not a safetensors file (header is not valid JSON: non-standard JSON constant NaN)".into()),
        (r#"{"__metadata__": {"k": 1}}"#, 0, "__metadata__ must map strings to strings".into()),
        (r#"{"__metadata__": ["k"]}"#, 0, "__metadata__ must map strings to strings".into()),
        (r#"{"__metadata__": null}"#, 0, "__metadata__ must map strings to strings".into()),
        // test_bad_tensor_entries
        (r#"{"my.tensor": "nope"}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got str".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [2]}}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got ['dtype', 'shape']".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got ['data_offsets', 'dtype', 'extra', 'shape']".into()),
        (r#"{"my.tensor": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype 'Q4' {known}")),
        (r#"{"my.tensor": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype 5 {known}")),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape [-2] (non-negative ints)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape [2.0] (non-negative ints)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [true], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape [True] (non-negative ints)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape 2 (non-negative ints)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}"#, 8, "tensor 'my.tensor': bad data_offsets [8, 0] (needs [begin, end], 0 <= begin <= end)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}"#, 8, "tensor 'my.tensor': bad data_offsets [0] (needs [begin, end], 0 <= begin <= end)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [-1, 7]}}"#, 8, "tensor 'my.tensor': bad data_offsets [-1, 7] (needs [begin, end], 0 <= begin <= end)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': a F32 tensor of shape [3] needs 12 bytes, but its data_offsets [0, 8] hold 8".into()),
        (r#"{"my.tensor": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}"#, 8, "tensor 'my.tensor': a F4 tensor of shape [3] is not whole bytes".into()),
        // more entries
        (r#"{"my.tensor": null}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got NoneType".into()),
        (r#"{"my.tensor": 1.5}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got float".into()),
        (r#"{"my.tensor": [1]}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got list".into()),
        (r#"{"my.tensor": true}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got bool".into()),
        (r#"{"my.tensor": {}}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got []".into()),
        (r#"{"my.tensor": {"dtype": null, "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype None {known}")),
        (r#"{"my.tensor": {"dtype": [1, {"x": "y'"}], "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype [1, {{'x': \"y'\"}}] {known}")),
        (r#"{"my.tensor": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype 'f32' {known}")),
        (r#"{"my.tensor": {"dtype": "F32", "shape": null, "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape None (non-negative ints)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}"#, 8, "tensor 'my.tensor': bad data_offsets [0, 8.0] (needs [begin, end], 0 <= begin <= end)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}"#, 8, "tensor 'my.tensor': bad data_offsets [0, 8, 8] (needs [begin, end], 0 <= begin <= end)".into()),
        (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": "0,8"}}"#, 8, "tensor 'my.tensor': bad data_offsets '0,8' (needs [begin, end], 0 <= begin <= end)".into()),
        (r#"{"my.tensor": {"dtype": "F6_E2M3", "shape": [2, 2], "data_offsets": [0, 3]}}"#, 8, "the tensors hold 3 bytes of data but the file has 8 (unexpected trailing bytes)".into()),
        (r#"{"my.tensor": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}"#, 8, "the tensors hold 1 bytes of data but the file has 8 (unexpected trailing bytes)".into()),
        (r#"{"my.tensor": {"dtype": "BF16", "shape": [], "data_offsets": [0, 2]}}"#, 8, "the tensors hold 2 bytes of data but the file has 8 (unexpected trailing bytes)".into()),
        (r#"{"my.tensor": {"dtype": "U8", "shape": [2, 3, 0], "data_offsets": [0, 0]}}"#, 8, "the tensors hold 0 bytes of data but the file has 8 (unexpected trailing bytes)".into()),
        (r#"{"my.tensor": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': a F64 tensor of shape [4294967296, 4294967296] needs 147573952589676412928 bytes, but its data_offsets [0, 8] hold 8".into()),
        (r#"{"my.tensor": {"dtype": "C64", "shape": [1], "data_offsets": [0, 16]}}"#, 8, "tensor 'my.tensor': a C64 tensor of shape [1] needs 8 bytes, but its data_offsets [0, 16] hold 16".into()),
        // test_offsets_truncation_overlap_gap_and_trailing_bytes
        (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}"#, 13, "tensor 'b': data_offsets [8, 16] run past the end of the data (13 bytes; the file is truncated)".into()),
        (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#, 16, "tensor 'b': data_offsets [4, 12] overlaps tensor 'a' (which ends at 8)".into()),
        (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}"#, 20, "tensor 'b': data_offsets [12, 20] leaves a gap after tensor 'a' (which ends at 8)".into()),
        (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#, 12, "tensor 'a': data_offsets [4, 12] leaves a gap after the start of the data (which ends at 0)".into()),
        (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}"#, 18, "the tensors hold 16 bytes of data but the file has 18 (unexpected trailing bytes)".into()),
        (r#"{}"#, 1, "the tensors hold 0 bytes of data but the file has 1 (unexpected trailing bytes)".into()),
        ("{\"it's\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}, \"say \\\"hi\\\"\\n\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 16, "tensor 'say \"hi\"\\n': data_offsets [4, 12] leaves a gap after the start of the data (which ends at 0)".into()),
        (r#"{"z": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}, "a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, 17, "the tensors hold 16 bytes of data but the file has 17 (unexpected trailing bytes)".into()),
        // BAD_FILES of tests/test_contract.py
        (r#"{"a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}"#, 44, "tensor 'a': data_offsets [0, 48] run past the end of the data (44 bytes; the file is truncated)".into()),
        (r#"{"a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 100]}}"#, 100, "tensor 'a': a F32 tensor of shape [4, 3] needs 48 bytes, but its data_offsets [0, 100] hold 100".into()),
        (r#"{"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}"#, 4, format!("tensor 'a': unsupported dtype 'Q9' {known}")),
        (r#"{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#, 4, "tensor 'a': bad shape [-1] (non-negative ints)".into()),
    ];
    for (header, data_len, want) in cases {
        assert_eq!(&message(&file(header, *data_len)), want, "{header}");
    }
}

#[test]
fn deep_nesting_is_not_valid_json() {
    let deep = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let m = message(&file(&deep, 0));
    assert!(
        m.starts_with("not a safetensors file (header is not valid JSON: nesting deeper"),
        "{m}"
    );
}

/// Where the rules are the reference safetensors library's rather than Python's: integers
/// beyond u64 are not shapes or offsets (Python accepted them as ints), an element count
/// beyond u128 bits is refused without printing it, and a lone surrogate is not a string.
#[test]
fn huge_integers_and_lone_surrogates() {
    for (header, want) in [
        (
            r#"{"t": {"dtype": "F32", "shape": [18446744073709551616], "data_offsets": [0, 8]}}"#,
            "tensor 't': bad shape [18446744073709551616] (non-negative ints)",
        ),
        (
            r#"{"t": {"dtype": "F32", "shape": [0, 1000000000000000000000000000000], "data_offsets": [0, 0]}}"#,
            "tensor 't': bad shape [0, 1000000000000000000000000000000] (non-negative ints)",
        ),
        (
            r#"{"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 18446744073709551616]}}"#,
            "tensor 't': bad data_offsets [0, 18446744073709551616] (needs [begin, end], 0 \
             <= begin <= end)",
        ),
        (
            r#"{"t": {"dtype": "U8", "shape": [18446744073709551615, 18446744073709551615, 2], "data_offsets": [0, 8]}}"#,
            "tensor 't': a U8 tensor of shape [18446744073709551615, 18446744073709551615, 2] \
             needs at least 2^125 bytes, but its data_offsets [0, 8] hold 8",
        ),
        (
            r#"{"t": {"dtype": "F4", "shape": [18446744073709551615, 18446744073709551615, 3], "data_offsets": [0, 8]}}"#,
            "tensor 't': a F4 tensor of shape [18446744073709551615, 18446744073709551615, 3] \
             is not whole bytes",
        ),
    ] {
        assert_eq!(message(&file(header, 8)), want);
    }
    // A zero dimension beside huge (u64) ones: zero bytes, as in Python.
    let h = r#"{"t": {"dtype": "F64", "shape": [18446744073709551615, 18446744073709551615, 0], "data_offsets": [0, 0]}}"#;
    let (header, _) = read(&file(h, 0)).unwrap();
    assert_eq!(header.tensors[0].shape, [usize::MAX, usize::MAX, 0]);
    let h = r#"{"\ud800": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}"#;
    let m = message(&file(h, 0));
    assert!(
        m.contains("header is not valid JSON: Lone surrogate"),
        "{m}"
    );
}

#[test]
fn valid_headers() {
    // Python's json.dumps spacing, padding spaces, unicode names, `-0`, metadata anywhere.
    let h = r#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"format": "pt", "é": "\u00e9"}, "名": {"dtype": "I8", "shape": [-0, 3], "data_offsets": [8, 8]}}   "#;
    let bytes = file(h, 8);
    let (header, data) = read(&bytes).unwrap();
    assert_eq!(data.len(), 8);
    assert_eq!(
        header.metadata,
        [("format".into(), "pt".into()), ("é".into(), "é".into())]
    );
    assert_eq!(header.get_metadata("format"), Some("pt"));
    let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w", "名"]);
    let w = header.tensor("w").unwrap();
    assert_eq!(
        (w.dtype, w.shape.as_slice(), w.begin, w.end),
        (Dtype::F32, &[2][..], 0, 8)
    );
    assert_eq!(w.bytes(data), &[0; 8]);
    assert_eq!(header.tensor("名").unwrap().shape, [0, 3]);
    // Ties in (begin, end) keep file order; no tensors and no data is fine.
    let h = r#"{"b": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}"#;
    let (header, _) = read(&file(h, 0)).unwrap();
    assert_eq!(header.tensors[0].name, "b");
    assert_eq!(read(&file("{}", 0)).unwrap().0, Header::default());
}

/// Bytes of Python's `_encode_header` for the same arguments.
#[test]
fn encode_header_matches_python() {
    type Entry<'a> = (&'a str, Dtype, &'a [usize], usize);
    type Case<'a> = (&'a [Entry<'a>], &'a [(&'a str, &'a str)], &'a [u8]);
    let cases: [Case; 4] = [
        (&[], &[], b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "),
        (
            &[("a", Dtype::F32, &[2], 8)],
            &[],
            b"8\x00\x00\x00\x00\x00\x00\x00{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}  ",
        ),
        (
            &[("w", Dtype::F64, &[2, 3], 48), ("b", Dtype::Bf16, &[], 2), ("s", Dtype::F4, &[0, 4], 0)],
            &[("format", "pt"), ("k\"\\", "v\n\t\r\x08\x0c\x01\x1f\x7f é😀")],
            b"\xf8\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":{\"format\":\"pt\",\"k\\\"\\\\\":\"v\\n\\t\\r\\b\\f\\u0001\\u001f\x7f \xc3\xa9\xf0\x9f\x98\x80\"},\"w\":{\"dtype\":\"F64\",\"shape\":[2,3],\"data_offsets\":[0,48]},\"b\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[48,50]},\"s\":{\"dtype\":\"F4\",\"shape\":[0,4],\"data_offsets\":[50,50]}}       ",
        ),
        (
            &[("名前", Dtype::F8E4M3, &[1], 1), ("x", Dtype::Bool, &[1], 1)],
            &[("a", "")],
            b"\x90\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":{\"a\":\"\"},\"\xe5\x90\x8d\xe5\x89\x8d\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]},\"x\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[1,2]}}   ",
        ),
    ];
    for (tensors, metadata, want) in cases {
        let got = encode_header(tensors, metadata);
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&got));
        assert_eq!(got.len() % 8, 0);
    }
}

/// Python's `_data_order`: widest dtype first, then by name (code points).
#[test]
fn data_order_widest_first_then_name() {
    let items = [
        ("b", Dtype::I8),
        ("a", Dtype::F32),
        ("c", Dtype::F64),
        ("é", Dtype::F32),
        ("Z", Dtype::F32),
        ("f4", Dtype::F4),
        ("f6", Dtype::F6E2M3),
        ("a", Dtype::U8),
    ];
    // Python: ['c', 'Z', 'a', 'é', 'a', 'b', 'f6', 'f4']
    assert_eq!(data_order(&items), [2, 4, 1, 3, 7, 0, 6, 5]);
}

#[test]
fn write_then_read() {
    let a: Vec<u8> = (0..24).collect();
    let b = [7u8, 9];
    let bytes = write(
        &[
            ("small", Dtype::U8, &[2], &b),
            ("big", Dtype::F64, &[3], &a),
        ],
        &[("format", "pt")],
    )
    .unwrap();
    let (header, data) = read(&bytes).unwrap();
    assert_eq!(header.metadata, [("format".into(), "pt".into())]);
    let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["big", "small"]);
    assert_eq!(header.tensor("big").unwrap().bytes(data), a);
    assert_eq!(header.tensor("small").unwrap().bytes(data), b);
    assert_eq!((bytes.len() - data.len()) % 8, 0);
    // Empty.
    let bytes = write(&[], &[]).unwrap();
    assert_eq!(read(&bytes).unwrap().0, Header::default());
}

#[test]
fn write_refuses_bad_arguments() {
    let four = [0u8; 4];
    for (tensors, metadata, want) in [
        (
            vec![("__metadata__", Dtype::U8, &[4][..], &four[..])],
            vec![],
            Error::Value("'__metadata__' is reserved and cannot name a tensor".into()),
        ),
        (
            vec![("x", Dtype::U8, &[4], &four), ("x", Dtype::I8, &[4], &four)],
            vec![],
            Error::Value("tensor name 'x' appears twice".into()),
        ),
        (
            vec![],
            vec![("k", "1"), ("k", "2")],
            Error::Value("metadata key 'k' appears twice".into()),
        ),
        (
            vec![("x", Dtype::F32, &[2], &four)],
            vec![],
            Error::Shape("tensor 'x': F32 tensor of shape (2,) needs 8 bytes, got 4".into()),
        ),
        (
            vec![("x", Dtype::F4, &[3, 1], &four)],
            vec![],
            Error::Shape("tensor 'x': F4 tensor of shape (3, 1) does not fill whole bytes".into()),
        ),
        (
            vec![("x", Dtype::U8, &[usize::MAX, usize::MAX, 2], &four)],
            vec![],
            Error::Shape(format!(
                "tensor 'x': U8 tensor of shape ({m}, {m}, 2) needs at least 2^125 bytes, got 4",
                m = usize::MAX
            )),
        ),
        (
            vec![("x", Dtype::U8, &[usize::MAX, 2], &four)],
            vec![],
            Error::Shape(format!(
                "tensor 'x': U8 tensor of shape ({}, 2) needs {} bytes, got 4",
                usize::MAX,
                2 * (usize::MAX as u128)
            )),
        ),
    ] {
        assert_eq!(write(&tensors, &metadata), Err(want.clone()));
        assert_eq!(write_sealed(&tensors, &metadata), Err(want));
    }
}

fn sealed() -> Vec<u8> {
    let w: Vec<u8> = (0..12).map(|i| i * 17).collect();
    write_sealed(
        &[
            ("scales", Dtype::F32, &[2], &[0, 0, 128, 63, 0, 0, 0, 64]),
            ("w", Dtype::I8, &[3, 4], &w),
        ],
        &[("dynaq.kind", "weight"), ("dynaq.version", "1")],
    )
    .unwrap()
}

#[test]
fn sealed_round_trip() {
    let bytes = sealed();
    let (header, data) = read_sealed(&bytes).unwrap();
    assert_eq!(header.get_metadata("dynaq.kind"), Some("weight"));
    let crc = header.get_metadata(CHECKSUM_KEY).unwrap();
    assert_eq!(header.metadata.last().unwrap().0, CHECKSUM_KEY);
    assert!(
        crc.len() == 8
            && crc
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let mut zeroed = bytes.clone();
    let at = bytes.windows(8).position(|w| w == crc.as_bytes()).unwrap();
    zeroed[at..at + 8].copy_from_slice(ZEROS.as_bytes());
    assert_eq!(format!("{:08x}", crc32fast::hash(&zeroed)), crc);
    assert_eq!(header.tensor("w").unwrap().bytes(data)[1], 17);
}

/// Every single-bit flip of a sealed buffer is refused, by `read` or by `verify_seal`,
/// without a panic.
#[test]
fn every_bit_flip_is_refused() {
    let bytes = sealed();
    for i in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[i / 8] ^= 1 << (i % 8);
        let r = read(&b).and_then(|(h, _)| verify_seal(&b, &h));
        assert!(matches!(r, Err(Error::Corrupt(_))), "bit {i}: {r:?}");
    }
}

#[test]
fn truncated_or_extended_buffers_are_refused() {
    let bytes = sealed();
    for n in 0..bytes.len() {
        assert!(read_sealed(&bytes[..n]).is_err(), "cut at {n}");
    }
    for extra in [&b"\0"[..], b" ", b"xx", &[0; 8]] {
        let b = [bytes.as_slice(), extra].concat();
        let m = message(&b);
        assert!(m.ends_with("(unexpected trailing bytes)"), "{m}");
    }
}

#[test]
fn seal_problems() {
    let plain = write(&[("x", Dtype::U8, &[1], &[1])], &[("k", "v")]).unwrap();
    let (header, _) = read(&plain).unwrap();
    assert_eq!(
        verify_seal(&plain, &header),
        Err(Error::Corrupt(
            "checksum missing (no 'dynaq.crc32' metadata)".into()
        ))
    );
    for value in ["0000000", "000000000", "0000000A", "0000000g", "é0000000"] {
        let b = write(&[], &[(CHECKSUM_KEY, value)]).unwrap();
        let (h, _) = read(&b).unwrap();
        let want = format!("checksum malformed: '{value}' is not 8 lowercase hex digits");
        assert_eq!(verify_seal(&b, &h), Err(Error::Corrupt(want)));
    }
    // The digits written with an escape: not found as written.
    let h = r#"{"__metadata__":{"dynaq.crc32":"\u00300000000"}}"#;
    let b = file(h, 0);
    let (header, _) = read(&b).unwrap();
    assert_eq!(
        verify_seal(&b, &header),
        Err(Error::Corrupt(
            "checksum entry not found as written in the header".into()
        ))
    );
    // A key ending in `"dynaq.crc32` repeats the entry's bytes.
    let h = r#"{"__metadata__":{"x\"dynaq.crc32":"00000000","dynaq.crc32":"00000000"}}"#;
    let b = file(h, 0);
    let (header, _) = read(&b).unwrap();
    assert_eq!(
        verify_seal(&b, &header),
        Err(Error::Corrupt(
            "checksum entry appears more than once in the header".into()
        ))
    );
    let r = write_sealed(&[], &[("x\"dynaq.crc32", "1")]);
    assert!(matches!(r, Err(Error::Value(m)) if m.contains("ambiguous")));
    let r = write_sealed(&[], &[(CHECKSUM_KEY, "1")]);
    assert_eq!(
        r,
        Err(Error::Value(
            "metadata key 'dynaq.crc32' is reserved for the checksum".into()
        ))
    );
    // A wrong CRC.
    let mut b = sealed();
    let (header, _) = read(&b).unwrap();
    let crc = header.get_metadata(CHECKSUM_KEY).unwrap().to_owned();
    let other = format!("{:08x}", u32::from_str_radix(&crc, 16).unwrap() ^ 1);
    let at = b.windows(8).position(|w| w == crc.as_bytes()).unwrap();
    b[at..at + 8].copy_from_slice(other.as_bytes());
    let (header, _) = read(&b).unwrap();
    assert_eq!(
        verify_seal(&b, &header),
        Err(Error::Corrupt(
            "checksum mismatch: the bytes were altered".into()
        ))
    );
}
