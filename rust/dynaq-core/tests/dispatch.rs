//! The `DYNAQ_MAX_ISA` cap and the kernel table (the CI runs this under each cap).

use dynaq_core::dispatch::{gemm_kernel, quant_kernels};
use dynaq_core::isa::{self, Isa};

#[test]
fn environment_cap_is_respected() {
    let active = isa::active_isa();
    match std::env::var("DYNAQ_MAX_ISA") {
        Ok(v) if !v.trim().is_empty() => {
            let cap = Isa::from_name(&v).expect("CI passes valid names");
            assert!(active <= cap, "active {active} above cap {cap}");
            // The cap names a detected path in CI, so it is the one running.
            if cap.is_supported() {
                assert_eq!(active, cap);
            }
            println!("DYNAQ_MAX_ISA={v}: active path {active}");
        }
        _ => assert_eq!(Some(&active), isa::detected().last()),
    }
    assert_eq!(gemm_kernel(active).isa, active);
    assert_eq!(quant_kernels(active).isa, active);
    assert!(isa::env_warning().is_none());
}

#[test]
fn every_path_resolves_to_a_supported_kernel() {
    for isa in Isa::ALL {
        let g = gemm_kernel(isa);
        assert!(g.isa.is_supported(), "{} not supported", g.name);
        assert!(g.isa <= isa || g.isa == Isa::Scalar);
        let q = quant_kernels(isa);
        assert!(q.isa.is_supported());
        println!(
            "{isa}: gemm {} / {} / {}",
            g.name, q.name_minmax, q.name_quantize
        );
    }
}

#[test]
fn other_architectures_paths_are_refused() {
    let foreign = if cfg!(target_arch = "x86_64") {
        Isa::Neon
    } else {
        Isa::Avx2
    };
    assert!(isa::set_max_isa(Some(foreign)).is_err());
}
