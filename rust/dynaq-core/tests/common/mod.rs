//! Helpers shared by the integration tests: the paths to test, the test scale and a small
//! deterministic generator.

#![allow(dead_code)]

use dynaq_core::isa::detected;
use dynaq_core::Isa;

/// The paths to test: every detected one up to the `DYNAQ_MAX_ISA` cap when it is set (so that
/// `DYNAQ_MAX_ISA=scalar` tests the scalar path alone and `DYNAQ_MAX_ISA=avx2` scalar and AVX2,
/// e.g. under valgrind), every detected one otherwise; of those, only the ones named in
/// `DYNAQ_TEST_PATHS` when it is set (comma-separated; `scripts/test-aarch64.sh` tests one path
/// per process under QEMU). Names the paths of this architecture left out.
pub fn paths() -> Vec<Isa> {
    let cap = std::env::var("DYNAQ_MAX_ISA")
        .ok()
        .and_then(|v| Isa::from_name(&v).ok());
    let named: Option<Vec<Isa>> = std::env::var("DYNAQ_TEST_PATHS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.split(',')
                .map(|name| Isa::from_name(name.trim()).expect("DYNAQ_TEST_PATHS names paths"))
                .collect()
        });
    for &isa in Isa::of_this_arch() {
        if !detected().contains(&isa) {
            println!("skipping the {isa:?} path: this CPU does not support it");
        } else if cap.is_some_and(|c| isa > c && isa != Isa::Scalar) {
            println!("skipping the {isa:?} path: above DYNAQ_MAX_ISA");
        }
    }
    detected()
        .iter()
        .copied()
        .filter(|&isa| cap.is_none_or(|c| isa <= c || isa == Isa::Scalar))
        .filter(|isa| named.as_ref().is_none_or(|n| n.contains(isa)))
        .collect()
}

/// Set by `scripts/test-aarch64.sh` under emulation: the slowest sweeps run their small set.
pub fn quick() -> bool {
    std::env::var("DYNAQ_TEST_QUICK").is_ok_and(|v| v == "1")
}

/// How much work the heavy tests do, from `DYNAQ_TEST_SCALE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// `small`: grids and case counts shrunk for slow runs (valgrind is 20-50x slower), keeping
    /// the odd shapes 1..9, 15/16/17, 31/32/33, 63/64/65 and one reduction beyond `K_CHUNK`.
    Small,
    /// Unset (or `full`): the normal test suite.
    Full,
    /// `long`: many more random cases (an opt-in randomized soak run).
    Long,
}

/// The scale of this run (`DYNAQ_TEST_SCALE=small|full|long`; anything else is `full`).
pub fn scale() -> Scale {
    match std::env::var("DYNAQ_TEST_SCALE").as_deref().map(str::trim) {
        Ok("small") => Scale::Small,
        Ok("long") => Scale::Long,
        _ => Scale::Full,
    }
}

/// Property-test cases: `full` as given, a sixth of it (at least 4) for `small`, and
/// `DYNAQ_PROPTEST_CASES` (default 100 times `full`) for `long`.
pub fn cases(full: u32) -> u32 {
    match scale() {
        Scale::Small => (full / 6).max(4),
        Scale::Full => full,
        Scale::Long => std::env::var("DYNAQ_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(full * 100),
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn u8(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    pub fn i8(&mut self) -> i8 {
        (self.next() >> 56) as i8
    }
    /// Uniform in `[-1, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}
