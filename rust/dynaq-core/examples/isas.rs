//! Prints the kernel paths this CPU supports, one line, space-separated (used by `.ci/run`).

fn main() {
    let names: Vec<&str> = dynaq_core::isa::detected()
        .iter()
        .map(|i| i.name())
        .collect();
    println!("{}", names.join(" "));
}
