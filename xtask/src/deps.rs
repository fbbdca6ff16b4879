//! `cargo xtask check-deps`: the hexagonal dependency direction, enforced.
//!
//! Dependencies point inwards: adapters and the core know the ports and the wire contract,
//! never each other. Only normal and build dependencies count; dev-dependencies are exempt
//! (adapters run the conformance suite, examples test against the memory store). Every
//! `angzarr*` package must match a rule, so a new crate has to be classified here.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cargo;

/// What a package may depend on among the angzarr crates.
enum Allowed {
    /// Exactly these angzarr crates.
    Only(&'static [&'static str]),
    /// Anything (the composition root).
    Anything,
}

/// The rules, first match wins: (package name pattern, allowed angzarr dependencies).
/// A pattern ending in `*` is a prefix.
const RULES: &[(&str, Allowed)] = &[
    ("angzarr-proto", Allowed::Only(&[])),
    ("angzarr-ports", Allowed::Only(&["angzarr-proto"])),
    (
        "angzarr-core",
        Allowed::Only(&["angzarr-ports", "angzarr-proto"]),
    ),
    (
        "angzarr-store-*",
        Allowed::Only(&["angzarr-ports", "angzarr-proto"]),
    ),
    (
        "angzarr-bridge-*",
        Allowed::Only(&["angzarr-ports", "angzarr-proto"]),
    ),
    // The driving adapter (gRPC front door) calls into the core; it never knows a store.
    (
        "angzarr-server",
        Allowed::Only(&["angzarr-core", "angzarr-ports", "angzarr-proto"]),
    ),
    // The test kit: the store suite checks against the memory store, the bridge suite against
    // the native bank through the real pipeline. Only tests depend on it.
    (
        "angzarr-conformance",
        Allowed::Only(&[
            "angzarr-core",
            "angzarr-example-bank",
            "angzarr-ports",
            "angzarr-proto",
            "angzarr-store-memory",
        ]),
    ),
    (
        "angzarr-example-*",
        Allowed::Only(&["angzarr-core", "angzarr-ports", "angzarr-proto"]),
    ),
    // The composition root wires everything together.
    ("angzarr", Allowed::Anything),
];

/// One workspace package as `cargo metadata` describes it.
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) manifest_path: PathBuf,
    /// (dependency package name, kind: "normal" | "build" | "dev").
    pub(crate) dependencies: Vec<(String, String)>,
}

pub(crate) fn run() -> Result<()> {
    let packages = workspace_packages()?;
    let violations = check(&packages);
    if violations.is_empty() {
        let checked = packages.iter().filter(|p| is_angzarr(&p.name)).count();
        eprintln!("check-deps: ok ({checked} angzarr crates follow the dependency rules)");
        return Ok(());
    }
    for violation in &violations {
        eprintln!("check-deps: {violation}");
    }
    bail!(
        "{} dependency rule violation(s); see xtask/src/deps.rs for the rules",
        violations.len()
    )
}

fn is_angzarr(name: &str) -> bool {
    name == "angzarr" || name.starts_with("angzarr-")
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The violations, one message each, in a stable order.
pub(crate) fn check(packages: &[Package]) -> Vec<String> {
    let mut violations = Vec::new();
    for package in packages.iter().filter(|p| is_angzarr(&p.name)) {
        let Some((pattern, allowed)) = RULES.iter().find(|(p, _)| matches(p, &package.name)) else {
            violations.push(format!(
                "{} is not classified: add a rule for it to RULES in xtask/src/deps.rs",
                package.name
            ));
            continue;
        };
        let Allowed::Only(allowed) = allowed else {
            continue;
        };
        let mut seen = BTreeSet::new();
        for (dependency, kind) in &package.dependencies {
            if kind == "dev" || !is_angzarr(dependency) || allowed.contains(&dependency.as_str()) {
                continue;
            }
            if !seen.insert(dependency) {
                continue;
            }
            let allowed = if allowed.is_empty() {
                "no angzarr crate".to_owned()
            } else {
                allowed.join(", ")
            };
            violations.push(format!(
                "{} must not depend on {dependency} ({kind} dependency in {}); \
                 rule `{pattern}` allows only: {allowed}",
                package.name,
                package.manifest_path.display(),
            ));
        }
    }
    violations
}

/// The workspace members, from `cargo metadata --no-deps`.
pub(crate) fn workspace_packages() -> Result<Vec<Package>> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("could not run `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("`cargo metadata` printed invalid JSON")?;
    parse_packages(&metadata)
}

fn parse_packages(metadata: &Value) -> Result<Vec<Package>> {
    let packages = metadata["packages"]
        .as_array()
        .context("`cargo metadata` output has no `packages` array")?;
    packages
        .iter()
        .map(|package| {
            let name = package["name"]
                .as_str()
                .context("package without a name in `cargo metadata` output")?
                .to_owned();
            let manifest_path = package["manifest_path"]
                .as_str()
                .with_context(|| format!("package {name} has no manifest_path"))?
                .into();
            let dependencies = package["dependencies"]
                .as_array()
                .with_context(|| format!("package {name} has no dependencies array"))?
                .iter()
                .map(|dependency| {
                    let dep_name = dependency["name"]
                        .as_str()
                        .with_context(|| format!("a dependency of {name} has no name"))?;
                    let kind = dependency["kind"].as_str().unwrap_or("normal");
                    Ok((dep_name.to_owned(), kind.to_owned()))
                })
                .collect::<Result<_>>()?;
            Ok(Package {
                name,
                manifest_path,
                dependencies,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, dependencies: &[(&str, &str)]) -> Package {
        Package {
            name: name.to_owned(),
            manifest_path: PathBuf::from(format!("{name}/Cargo.toml")),
            dependencies: dependencies
                .iter()
                .map(|(d, k)| ((*d).to_owned(), (*k).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn the_current_shape_is_accepted() {
        let packages = [
            package("angzarr-proto", &[("prost", "normal"), ("protox", "build")]),
            package("angzarr-ports", &[("angzarr-proto", "normal")]),
            package(
                "angzarr-core",
                &[("angzarr-proto", "normal"), ("angzarr-ports", "normal")],
            ),
            package(
                "angzarr-store-memory",
                &[
                    ("angzarr-ports", "normal"),
                    ("angzarr-conformance", "dev"),
                    ("angzarr-core", "dev"),
                ],
            ),
            package(
                "angzarr-conformance",
                &[
                    ("angzarr-ports", "normal"),
                    ("angzarr-store-memory", "normal"),
                    ("angzarr-core", "normal"),
                    ("angzarr-example-bank", "normal"),
                ],
            ),
            package(
                "angzarr-example-bank",
                &[("angzarr-core", "normal"), ("angzarr-store-memory", "dev")],
            ),
            package("angzarr", &[("angzarr-store-sqlite", "normal")]),
            package("xtask", &[("anyhow", "normal")]),
        ];
        assert_eq!(check(&packages), Vec::<String>::new());
    }

    #[test]
    fn inward_violations_and_unclassified_crates_are_reported() {
        let packages = [
            package("angzarr-proto", &[("angzarr-ports", "normal")]),
            package("angzarr-store-sqlite", &[("angzarr-core", "normal")]),
            package("angzarr-bridge-kafka", &[("angzarr-store-memory", "build")]),
            package(
                "angzarr-example-bank",
                &[("angzarr-store-memory", "normal")],
            ),
            package("angzarr-gateway", &[]),
        ];
        let violations = check(&packages);
        assert_eq!(violations.len(), 5, "{violations:#?}");
        assert!(violations[0].starts_with("angzarr-proto must not depend on angzarr-ports"));
        assert!(violations[1].starts_with("angzarr-store-sqlite must not depend on angzarr-core"));
        assert!(violations[2].contains("build dependency"));
        assert!(violations[3].starts_with("angzarr-example-bank must not depend on"));
        assert!(violations[4].starts_with("angzarr-gateway is not classified"));
    }

    #[test]
    fn metadata_is_parsed() {
        let metadata = serde_json::json!({"packages": [{
            "name": "angzarr-core",
            "manifest_path": "/w/crates/core/Cargo.toml",
            "dependencies": [
                {"name": "angzarr-ports", "kind": null},
                {"name": "proptest", "kind": "dev"},
            ],
        }]});
        let packages = parse_packages(&metadata).unwrap();
        assert_eq!(packages[0].name, "angzarr-core");
        assert_eq!(
            packages[0].dependencies,
            [
                ("angzarr-ports".to_owned(), "normal".to_owned()),
                ("proptest".to_owned(), "dev".to_owned())
            ]
        );
    }
}
