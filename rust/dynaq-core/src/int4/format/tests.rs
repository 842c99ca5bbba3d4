use super::*;
use crate::int4::quant::Method;

fn weight(n: usize, k: usize, group: Option<usize>, symmetric: bool) -> Int4Weight {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.4) * 0.3)
        .collect();
    Int4Weight::from_float(&w, n, k, group, symmetric, Method::Search, None).unwrap()
}

fn read(tensors: &[Tensor], name: &str) -> Result<Int4Weight> {
    Int4Weight::from_tensors(name, |t| {
        tensors
            .iter()
            .find(|x| x.name == t)
            .map(|x| (x.dtype, x.shape.as_slice(), x.data.as_slice()))
    })
}

const CASES: [(usize, usize, Option<usize>); 8] = [
    (1, 32, Some(32)),
    (3, 64, Some(32)),
    (17, 128, Some(64)),
    (4, 256, Some(128)),
    (5, 13, None),
    (2, 96, None),
    (0, 64, Some(32)),
    (4, 0, None),
];

#[test]
fn tensors_round_trip_and_describe_themselves() {
    for (n, k, group) in CASES {
        for symmetric in [false, true] {
            let q = weight(n, k, group, symmetric);
            let t = q.tensors("w");
            let names: Vec<&str> = t.iter().map(|x| x.name.as_str()).collect();
            let mut want = vec!["w", "w_scale"];
            if !symmetric {
                want.push("w_min");
            }
            if group.is_some() {
                want.push("w_gscale");
                if !symmetric {
                    want.push("w_gmin");
                }
            }
            assert_eq!(names, want);
            assert_eq!(t[0].shape, vec![n.div_ceil(2), k]);
            let back = read(&t, "w").unwrap();
            assert_eq!(back, q, "{n}x{k} {group:?} {symmetric}");
        }
    }
}

/// Bits per weight on disk: 4 + 16/G + 64/K asymmetric (at most 4.625 at G = 32 from K = 512).
#[test]
fn bits_per_weight() {
    for (k, group, symmetric, want) in [
        (4096, Some(32), false, 4.0 + 16.0 / 32.0 + 64.0 / 4096.0),
        (512, Some(32), false, 4.625),
        (4096, Some(128), false, 4.0 + 16.0 / 128.0 + 64.0 / 4096.0),
        (4096, Some(32), true, 4.0 + 8.0 / 32.0 + 32.0 / 4096.0),
        (4096, None, false, 4.0 + 64.0 / 4096.0),
    ] {
        let n = 2; // bytes per weight do not depend on N (when even)
        let bytes: usize = weight(n, k, group, symmetric)
            .tensors("w")
            .iter()
            .map(|t| t.data.len())
            .sum();
        let bpw = bytes as f64 * 8.0 / (n * k) as f64;
        assert!(
            (bpw - want).abs() < 1e-9,
            "{k} {group:?} {symmetric}: {bpw} vs {want}"
        );
    }
}

#[test]
fn corrupt_tensors_are_refused_naming_the_tensor() {
    let q = weight(3, 64, Some(32), false);
    let good = q.tensors("w");
    let edit = |f: &dyn Fn(&mut Vec<Tensor>)| {
        let mut t = good.clone();
        f(&mut t);
        read(&t, "w").unwrap_err().to_string()
    };
    let find = |t: &mut Vec<Tensor>, name: &str| t.iter().position(|x| x.name == name).unwrap();
    assert!(edit(&|t| {
        t.remove(0);
    })
    .contains("w: missing"));
    assert!(edit(&|t| {
        let i = find(t, "w_scale");
        t.remove(i);
    })
    .contains("w_scale: missing"));
    assert!(edit(&|t| {
        let i = find(t, "w_gmin");
        t.remove(i);
    })
    .contains("w_gmin: missing"));
    assert!(edit(&|t| {
        let i = find(t, "w_gscale");
        t.remove(i);
    })
    .contains("w_gmin: present without w_gscale"));
    assert!(edit(&|t| {
        t[0].dtype = Dtype::I8;
    })
    .contains("must be a 2-D U8 tensor"));
    assert!(edit(&|t| {
        t[0].shape = vec![1, 64];
        t[0].data.truncate(64);
    })
    .contains("need 2"));
    // G = 64 / 2 = 32 is fine; 64 / 3 is not a group size.
    assert!(edit(&|t| {
        let i = find(t, "w_gscale");
        t[i].shape = vec![3, 3];
        t[i].data = vec![1; 9];
    })
    .contains("G one of 32, 64, 128"));
    // A NaN row factor, a positive minimum factor.
    assert!(edit(&|t| {
        let i = find(t, "w_scale");
        t[i].data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    })
    .contains("NaN"));
    assert!(edit(&|t| {
        let i = find(t, "w_min");
        t[i].data[0..4].copy_from_slice(&1.0f32.to_le_bytes());
    })
    .contains("<= 0"));
    // An odd N leaves the last row's high nibbles unused: they must be 0.
    let odd = weight(3, 64, Some(32), false).tensors("w");
    let mut t = odd.clone();
    t[0].data[64] |= 0x30;
    assert!(read(&t, "w")
        .unwrap_err()
        .to_string()
        .contains("unused high nibbles"));
    // A symmetric weight has no group minima.
    let mut t = weight(2, 64, Some(32), true).tensors("w");
    t.push(Tensor {
        name: "w_gmin".into(),
        dtype: Dtype::U8,
        shape: vec![2, 2],
        data: vec![1; 4],
    });
    assert!(read(&t, "w")
        .unwrap_err()
        .to_string()
        .contains("present without w_min"));
}
