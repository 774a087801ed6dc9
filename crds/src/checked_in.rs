//! The CRD YAML checked in under `crds/` and in the Helm chart must equal
//! what the types generate: `kubectl apply` and `helm install` use the files,
//! the controller uses the types, and they must agree.
//!
//! `UPDATE_CRDS=1 cargo test -p switchyard-crds` rewrites both files.

use std::path::PathBuf;

const FILE_NAME: &str = "balancerpolicies.switchyard.dev.yaml";

/// Where the generated CRD is checked in.
fn checked_in_copies() -> [PathBuf; 2] {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let chart_crds = crate_dir.parent().expect("crds/ is in the workspace").join("charts/switchyard/crds");
    [crate_dir.join(FILE_NAME), chart_crds.join(FILE_NAME)]
}

/// Where `on_disk` first differs from `generated`, for the failure message.
fn first_difference(on_disk: &str, generated: &str) -> String {
    let mut on_disk_lines = on_disk.lines();
    for (n, want) in generated.lines().enumerate() {
        match on_disk_lines.next() {
            Some(got) if got == want => continue,
            Some(got) => return format!("line {}: checked in {got:?}, generated {want:?}", n + 1),
            None => return format!("line {}: checked-in file ends, generated {want:?}", n + 1),
        }
    }
    "the checked-in file has extra lines at the end".to_string()
}

#[test]
fn checked_in_crd_yaml_matches_the_types() {
    let generated = crate::crd_yaml();
    let update = std::env::var("UPDATE_CRDS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for path in checked_in_copies() {
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == generated => {}
            Ok(on_disk) => stale.push(format!("{} ({})", path.display(), first_difference(&on_disk, &generated))),
            Err(e) => stale.push(format!("{} ({e})", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "the checked-in BalancerPolicy CRD differs from the one crds/src generates:\n  {}\n\
         Regenerate both copies with\n  UPDATE_CRDS=1 cargo test -p switchyard-crds\n\
         or\n  cargo run -q -p switchyard-controller -- crd > crds/{FILE_NAME}\n  \
         cp crds/{FILE_NAME} charts/switchyard/crds/{FILE_NAME}\nand commit them.",
        stale.join("\n  ")
    );
}
