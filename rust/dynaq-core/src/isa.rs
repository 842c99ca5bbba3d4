//! Kernel paths (ISAs): the [`Isa`] enum, CPU detection once per process, and the
//! `DYNAQ_MAX_ISA` cap.
//!
//! Every path computes the same integers (see the crate docs); capping the path only changes speed.
//! The cap comes from the environment variable `DYNAQ_MAX_ISA` when first needed, and can be changed
//! at run time with [`set_max_isa`], so that one machine can exercise every path it has. This
//! module knows nothing of kernels: [`crate::dispatch`] maps a path to its kernels.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// A kernel path. The order within one architecture is the order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Isa {
    /// Portable Rust, every CPU.
    Scalar = 0,
    /// x86-64 AVX2 (Haswell and later, Zen 1 and later).
    Avx2 = 1,
    /// x86-64 AVX-512 F/BW/VL with VNNI (`vpdpbusd`): Cascade Lake, Ice Lake, Zen 4 and later.
    Avx512Vnni = 2,
    /// aarch64 Advanced SIMD (every ARMv8 CPU).
    Neon = 3,
    /// aarch64 dot product (`sdot`/`udot`, ARMv8.2+).
    Dotprod = 4,
    /// aarch64 int8 matrix multiply (`smmla`/`usmmla`, ARMv8.6+).
    I8mm = 5,
}

impl Isa {
    /// Every path, in cap order within each architecture.
    pub const ALL: [Isa; 6] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::Dotprod,
        Isa::I8mm,
    ];

    /// The name used by `DYNAQ_MAX_ISA`, `cpu_info()` and the kernel names.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::Dotprod => "dotprod",
            Isa::I8mm => "i8mm",
        }
    }

    /// Parses a path name (case-insensitive, surrounding blanks ignored).
    pub fn from_name(name: &str) -> Result<Isa> {
        let wanted = name.trim().to_ascii_lowercase();
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = Isa::ALL.iter().map(|i| i.name()).collect();
                Error::Isa(format!(
                    "unknown ISA name {name:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }

    fn from_u8(v: u8) -> Isa {
        Isa::ALL[v as usize]
    }

    /// The paths of this build's architecture, in cap order (scalar first).
    pub fn of_this_arch() -> &'static [Isa] {
        if cfg!(target_arch = "x86_64") {
            &[Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
        } else if cfg!(target_arch = "aarch64") {
            &[Isa::Scalar, Isa::Neon, Isa::Dotprod, Isa::I8mm]
        } else {
            &[Isa::Scalar]
        }
    }

    /// Whether this CPU can run the path (detected once).
    pub fn is_supported(self) -> bool {
        detected().contains(&self)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU features this build looks at, with whether each is present.
pub fn cpu_features() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        vec![
            ("sse4.1", std::is_x86_feature_detected!("sse4.1")),
            ("avx", std::is_x86_feature_detected!("avx")),
            ("avx2", std::is_x86_feature_detected!("avx2")),
            ("fma", std::is_x86_feature_detected!("fma")),
            ("avx512f", std::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::is_x86_feature_detected!("avx512bw")),
            ("avx512vl", std::is_x86_feature_detected!("avx512vl")),
            ("avx512dq", std::is_x86_feature_detected!("avx512dq")),
            ("avx512vnni", std::is_x86_feature_detected!("avx512vnni")),
            ("avxvnni", std::is_x86_feature_detected!("avxvnni")),
        ]
    }
    #[cfg(target_arch = "aarch64")]
    {
        vec![
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            (
                "dotprod",
                std::arch::is_aarch64_feature_detected!("dotprod"),
            ),
            ("i8mm", std::arch::is_aarch64_feature_detected!("i8mm")),
        ]
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Vec::new()
    }
}

fn has(feature: &str) -> bool {
    cpu_features().iter().any(|(f, on)| *f == feature && *on)
}

/// The paths this CPU supports, scalar first (detected once per process).
pub fn detected() -> &'static [Isa] {
    static DETECTED: OnceLock<Vec<Isa>> = OnceLock::new();
    DETECTED.get_or_init(|| {
        Isa::of_this_arch()
            .iter()
            .copied()
            .filter(|isa| match isa {
                Isa::Scalar => true,
                Isa::Avx2 => has("avx2"),
                Isa::Avx512Vnni => {
                    has("avx2")
                        && has("avx512f")
                        && has("avx512bw")
                        && has("avx512vl")
                        && has("avx512vnni")
                }
                Isa::Neon => has("neon"),
                Isa::Dotprod => has("neon") && has("dotprod"),
                Isa::I8mm => has("neon") && has("dotprod") && has("i8mm"),
            })
            .collect()
    })
}

/// `u8::MAX` means "not read from the environment yet".
static CAP: AtomicU8 = AtomicU8::new(u8::MAX);
/// A warning about `DYNAQ_MAX_ISA`, kept for the bindings to show once.
static ENV_WARNING: OnceLock<Option<String>> = OnceLock::new();

/// The best detected path not above `cap` (scalar at worst).
pub fn best_up_to(cap: Isa) -> Isa {
    detected()
        .iter()
        .copied()
        .rfind(|isa| *isa <= cap)
        .unwrap_or(Isa::Scalar)
}

fn cap_from_env() -> Isa {
    let best = *detected().last().unwrap_or(&Isa::Scalar);
    let mut warning = None;
    let cap = match std::env::var("DYNAQ_MAX_ISA") {
        Err(_) => best,
        Ok(v) if v.trim().is_empty() => best,
        Ok(v) => match Isa::from_name(&v) {
            Ok(isa) if Isa::of_this_arch().contains(&isa) => isa,
            Ok(isa) => {
                warning = Some(format!(
                    "DYNAQ_MAX_ISA={v:?} names the {isa} path, which this architecture does not \
                     have; using {best}"
                ));
                best
            }
            Err(e) => {
                warning = Some(format!("DYNAQ_MAX_ISA ignored: {e}; using {best}"));
                best
            }
        },
    };
    let _ = ENV_WARNING.set(warning);
    cap
}

/// The cap now in force (the best path when nothing caps it).
pub fn max_isa() -> Isa {
    let v = CAP.load(Ordering::Relaxed);
    if v != u8::MAX {
        return Isa::from_u8(v);
    }
    let cap = cap_from_env();
    // Another thread may have raced us; both read the same environment, keep the first.
    let _ = CAP.compare_exchange(u8::MAX, cap as u8, Ordering::Relaxed, Ordering::Relaxed);
    Isa::from_u8(CAP.load(Ordering::Relaxed))
}

/// The warning produced while reading `DYNAQ_MAX_ISA`, if the value was not usable.
pub fn env_warning() -> Option<String> {
    max_isa();
    ENV_WARNING.get().cloned().flatten()
}

/// Caps the path at `isa` (`None` lifts the cap) and returns the path now active.
///
/// Naming a path of another architecture is an error; naming a path of this architecture that
/// the CPU lacks is allowed and selects the best supported path below it.
pub fn set_max_isa(isa: Option<Isa>) -> Result<Isa> {
    max_isa(); // read the environment first, so that it never overrides this call later
    let cap = match isa {
        None => *detected().last().unwrap_or(&Isa::Scalar),
        Some(isa) if Isa::of_this_arch().contains(&isa) => isa,
        Some(isa) => {
            return Err(Error::Isa(format!(
                "the {isa} path does not exist on this architecture; paths here: {}",
                names(Isa::of_this_arch())
            )))
        }
    };
    CAP.store(cap as u8, Ordering::Relaxed);
    Ok(active_isa())
}

/// The path kernels run on now: the best detected path not above the cap.
pub fn active_isa() -> Isa {
    best_up_to(max_isa())
}

fn names(isas: &[Isa]) -> String {
    isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()).unwrap(), isa);
        }
        assert_eq!(Isa::from_name(" AVX2 ").unwrap(), Isa::Avx2);
        assert!(Isa::from_name("sse9").is_err());
    }

    #[test]
    fn scalar_always_detected() {
        assert_eq!(detected()[0], Isa::Scalar);
        assert!(Isa::Scalar.is_supported());
    }
}
