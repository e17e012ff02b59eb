//! Replays the kept fuzzing corpora (`fuzz/corpus/TARGET/`) and the inputs
//! that once made a target fail (`fuzz/regressions/TARGET/`) through the
//! same parser functions the fuzz targets drive (`normgate::fuzz`): a
//! panic here is a regression.

use std::path::Path;

#[test]
fn every_kept_fuzz_input_is_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in normgate::fuzz::TARGETS {
        let mut replayed = 0;
        for folder in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(folder).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "fuzz target {name} panicked on {}", path.display());
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no kept inputs for fuzz target {name}");
    }
}
