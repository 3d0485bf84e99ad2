//! Replays the `acpi` fuzz corpus and seeds through the fuzz target's entry point.

use std::path::Path;

#[test]
fn acpi_corpus_replays() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["corpus/acpi", "seeds/acpi"] {
        for e in std::fs::read_dir(fuzz.join(dir)).unwrap() {
            let p = e.unwrap().path();
            let ok = vmm::fuzzing::acpi_config(&std::fs::read(&p).unwrap());
            if p.parent().unwrap().ends_with("seeds/acpi") {
                assert!(ok, "{}", p.display());
            }
            n += 1;
        }
    }
    assert!(n >= 2);
}
